"""Keep what is finished of a sweep in DEST, small enough to carry to another machine (in the git
repository, say): what `fastal report DEST` reads, and what `fastal sweep --resume` reads of a
copy of DEST to run only what is left.

    python benchmarks/keep_sweep.py sweeps/sweep_camvid_verdict experiments/kept/sweep_camvid_verdict

DEST gets sweep.json, threads.json (the torch threads per run a resume must keep), the JSON of every finished reference (references/<name>.json), the files of
every finished run named in RUN_FILES, and a cycles.parquet written from those runs. Left out:
what a resume recomputes (unfinished runs, shared first cycles in first/) or does without (the
references' training directories), and what neither it nor the report reads of a finished run (its config.toml, which
run.json repeats, checkpoints, pool.npz, selection tables, logs, curves: a resume only reads its
results.json). The copy is built aside and renamed over DEST, so a killed copy leaves the old DEST.
Run again, it adds the runs finished since and keeps those DEST has that SWEEPDIR has not
finished; DEST must keep the same sweep (sweep.json) and hold nothing but what this script writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fastal.atomic import atomic_dir
from fastal.errors import FastalError
from fastal.rundir import QUERIES, RESULTS, RUN
from fastal.sweep.cycles import TABLE, is_finished, write_cycles
from fastal.sweep.driver import THREADS
from fastal.sweep.spec import REFERENCES, RUNS, SPEC, Sweep, first_difference, kept_sweep
from fastal.sweep.tasks import CLASSES

# What the report and a resume read of a finished run. results.json: the numbers, and what tells a
# resume the run is finished; run.json: the run's id (a report refuses a run counted twice), and the
# configuration it was made with (config.toml says no more); classes.json: the class names (of runs
# older than them in results.json); queries.jsonl: the classes each strategy picked.
RUN_FILES = (RESULTS, RUN, CLASSES, QUERIES)


def check_places(sweep_dir: Path, dest: Path) -> Sweep:
    """The sweep kept in ``sweep_dir``; FastalError when DEST is in it, or it in DEST (replacing
    DEST would delete it), or DEST holds something this script did not write."""
    if not (sweep_dir / SPEC).is_file():
        raise FastalError(f"{sweep_dir}: not a sweep directory (no {SPEC})")
    here, there = sweep_dir.resolve(), dest.resolve()
    if there == here or here in there.parents:
        raise FastalError(f"{dest}: inside the sweep directory {sweep_dir}; keep it outside")
    if there in here.parents:
        raise FastalError(f"{dest}: holds the sweep directory {sweep_dir}; keep it elsewhere")
    sweep = kept_sweep(sweep_dir / SPEC)
    if dest.exists() and any(dest.iterdir()):
        check_kept(dest, sweep)
    return sweep


def check_kept(dest: Path, sweep: Sweep) -> None:
    """FastalError unless ``dest`` is a copy this script made of ``sweep``: it is replaced whole."""
    if not (dest / SPEC).is_file():
        raise FastalError(f"{dest}: exists and is not a kept sweep (no {SPEC}); give another DEST")
    key = first_difference(kept_sweep(dest / SPEC).to_json(), sweep.to_json())
    if key is not None:
        raise FastalError(f"{dest}: keeps another sweep ({key} differs); give another DEST")
    foreign = next((p for p in sorted(dest.rglob("*")) if not is_kept(p.relative_to(dest), p.is_dir())), None)
    if foreign is not None:
        raise FastalError(f"{foreign}: not a file this script writes (DEST is replaced whole); move it, or give "
                          f"another DEST")  # fmt: skip


def is_kept(rel: Path, directory: bool) -> bool:
    """Whether ``rel`` (relative to DEST) is one of the paths this script writes."""
    parts = rel.parts
    if directory:
        return parts in ((RUNS,), (REFERENCES,)) or (len(parts) == 2 and parts[0] == RUNS)
    return (parts in ((SPEC,), (TABLE,), (THREADS,)) or (len(parts) == 2 and parts[0] == REFERENCES and rel.suffix == ".json")
            or (len(parts) == 3 and parts[0] == RUNS and parts[2] in RUN_FILES))  # fmt: skip


def finished(root: Path, sweep: Sweep) -> dict[str, Path]:
    """Run name -> its directory, for the runs of ``sweep`` finished under ``root``."""
    dirs = {run.name: root / RUNS / run.name for run in sweep.runs()}
    return {name: d for name, d in dirs.items() if is_finished(d)}


def keep(sweep_dir: Path, dest: Path) -> dict[str, int]:
    """Copy what is finished in ``sweep_dir`` into ``dest`` (see the module's docstring); returns
    the counts and bytes it kept."""
    sweep = check_places(sweep_dir, dest)
    before = finished(dest, sweep) if (dest / SPEC).is_file() else {}
    runs = {**before, **finished(sweep_dir, sweep)}  # the sweep's own copy where both have one
    references = {p.name: p for root in (dest, sweep_dir) for p in sorted((root / REFERENCES).glob("*.json"))}
    with atomic_dir(dest) as tmp:
        shutil.copy2(sweep_dir / SPEC, tmp / SPEC)
        for root in (dest, sweep_dir):  # the sweep's own where both have one
            if (root / THREADS).is_file():
                shutil.copy2(root / THREADS, tmp / THREADS)
        (tmp / REFERENCES).mkdir()
        for name, path in references.items():
            shutil.copy2(path, tmp / REFERENCES / name)
        for name, run_dir in runs.items():
            (tmp / RUNS / name).mkdir(parents=True)
            for file in RUN_FILES:
                if (run_dir / file).is_file():
                    shutil.copy2(run_dir / file, tmp / RUNS / name / file)
        (tmp / RUNS).mkdir(exist_ok=True)
        write_cycles(tmp, sweep.runs())
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {"runs": len(runs), "new": len(runs.keys() - before.keys()), "unfinished": len(sweep.runs()) - len(runs),
            "references": len(references), "bytes": size}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path, metavar="SWEEPDIR", help="the sweep directory (fastal sweep --out)")
    p.add_argument("dest", type=Path, metavar="DEST", help="where to keep it (made, or updated)")
    args = p.parse_args(argv)
    try:
        kept = keep(args.sweep_dir, args.dest)
    except FastalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dest}: {kept['runs']} finished runs ({kept['new']} new), {kept['references']} references, "
          f"{kept['bytes']} bytes; {kept['unfinished']} runs not finished, left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
