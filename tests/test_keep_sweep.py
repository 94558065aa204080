"""benchmarks/keep_sweep.py: what is finished of a sweep, kept apart to carry it to another machine.
On a sweep of 3 strategies x 1 seed with one run part-way: `fastal report` of the copy gives the
finished runs' numbers; a copy of it resumed elsewhere runs only the unfinished run, to the results
of the sweep run in one go; kept again, the copy gains what finished since and loses nothing; a
DEST inside the sweep, or one holding files of its own, is refused with nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from test_run_guard import one_line, snapshot
from test_sweep import ROOT, SWEEP, assert_same_runs, cli, results, write_sweep

from fastal.cli import main
from fastal.rundir import create_run_dir
from fastal.sweep.cycles import write_cycles
from fastal.sweep.driver import THREAD_VARS
from fastal.sweep.spec import kept_sweep

_spec = importlib.util.spec_from_file_location("keep_sweep", ROOT / "benchmarks" / "keep_sweep.py")
keep_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(keep_sweep)

STRATEGIES = ["random", "entropy", "margin"]
NAMES = [f"strategy={st},seed=0" for st in STRATEGIES]
FINISHED, UNFINISHED = NAMES[:2], NAMES[2]


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep run to the end; its runs share their first cycle (the part-way run is made from it)."""
    tmp = tmp_path_factory.mktemp("done")
    path = write_sweep(tmp, {"strategy": STRATEGIES, "seed": [0]})
    path.write_text("share_first_cycle = true\n" + path.read_text())
    threads = {v: os.environ.get(v) for v in THREAD_VARS}
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(path), "--out", str(tmp / "out"), *SWEEP])
    assert e.value.code == 0
    # Dask set its workers' thread variables in this process too: put back, or later subprocesses
    # (the resume tests' `fastal run`) would run at 1 thread against an in-process run's 2.
    assert {v: os.environ.get(v) for v in THREAD_VARS} == threads
    return tmp / "out"


@pytest.fixture(scope="module")
def partial(done: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sweep part-way: margin's run has only its cycle 1, as its task leaves it once it
    copied the shared first cycle; cycles.parquet written from the runs as they stand."""
    out = tmp_path_factory.mktemp("partial") / "out"
    shutil.copytree(done, out)
    runs = kept_sweep(out / "sweep.json").runs(out)
    margin = next(r for r in runs if r.name == UNFINISHED)
    shutil.rmtree(out / "runs" / UNFINISHED)
    create_run_dir(margin.cfg, out / "runs" / UNFINISHED, out / "first" / margin.first)
    assert [c["cycle"] for c in results(out / "runs" / UNFINISHED)["cycles"]] == [1]
    write_cycles(out, runs)
    return out


def keep(sweep_dir: Path, dest: Path, capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the script."""
    capsys.readouterr()
    code = keep_sweep.main([str(sweep_dir), str(dest)])
    out = capsys.readouterr()
    return code, out.out, out.err


def report(sweep_dir: Path, tmp_path: Path, name: str, capsys) -> tuple[dict, list[str]]:
    """`fastal report --baseline entropy --markdown`: its JSON and its printed lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), "--baseline", "entropy", "--markdown", "--json", str(tmp_path / f"{name}.json"),
              "--out", str(tmp_path / f"{name}.png")])  # fmt: skip
    assert e.value.code == 0
    return json.loads((tmp_path / f"{name}.json").read_text()), capsys.readouterr().out.splitlines()


def test_the_report_of_the_kept_copy_gives_the_finished_runs_numbers(partial: Path, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "kept"
    code, out, _ = keep(partial, dest, capsys)
    assert code == 0
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert out == f"{dest}: 2 finished runs (2 new), 1 references, {size} bytes; 1 runs not finished, left out\n"
    # The finished runs' small files, the reference's JSON, no first cycle, no model, no pool.
    top = ["cycles.parquet", "references", "runs", "sweep.json", "threads.json"]
    assert sorted(p.name for p in dest.iterdir()) == top
    assert sorted(p.name for p in (dest / "runs").iterdir()) == sorted(FINISHED)
    for name in FINISHED:
        files = sorted(p.name for p in (dest / "runs" / name).iterdir())
        assert files == ["classes.json", "queries.jsonl", "results.json", "run.json"]
        for f in files:
            assert (dest / "runs" / name / f).read_bytes() == (partial / "runs" / name / f).read_bytes()
    (ref,) = (partial / "references").glob("*.json")
    assert [p.name for p in (dest / "references").iterdir()] == [ref.name]
    # The report: the finished strategies' numbers as the original's, the unfinished one left out.
    (whole, whole_lines), (kept, kept_lines) = (report(d, tmp_path, d.name, capsys) for d in (partial, dest))
    assert {r["strategy"] for r in whole["summary"]} == set(STRATEGIES)
    assert {r["strategy"] for r in kept["summary"]} == {"random", "entropy"}
    for key in ("summary", "paired", "selection_seconds", "picks"):
        assert kept[key] == [r for r in whole[key] if r["strategy"] != "margin"], key
    assert kept["fully_supervised"] == whole["fully_supervised"]
    rows = ("| random |", "| entropy |", "| fully supervised |")
    assert [ln for ln in kept_lines if ln.startswith(rows)] == [ln for ln in whole_lines if ln.startswith(rows)]
    # The machine that made them: 2 cycles of 2 finished runs (the original counts margin's cycle 1 too).
    assert [m["cycles"] for m in whole["run_machines"]] == [5]
    assert kept["run_machines"] == [{**whole["run_machines"][0], "cycles": 4}]
    assert any(ln.startswith("Runs made on: ") and ln.endswith("(4 run-cycles).") for ln in kept_lines)


def test_a_copy_of_the_kept_sweep_resumes_only_the_unfinished_run(done: Path, partial: Path, tmp_path: Path,
                                                                  capsys) -> None:  # fmt: skip
    dest = tmp_path / "kept"
    assert keep(partial, dest, capsys)[0] == 0
    assert json.loads((dest / "threads.json").read_text()) == {"torch_threads_per_run": 1}  # a resume keeps it
    elsewhere = tmp_path / "elsewhere"  # a fresh machine: the kept copy is all it has of the sweep
    shutil.copytree(dest, elsewhere)
    stamps = {n: (elsewhere / "runs" / n / "results.json").stat().st_mtime_ns for n in FINISHED}
    code, err = cli(["sweep", "--resume", str(elsewhere), *SWEEP], capsys)
    assert code == 0 and "3 runs, 2 finished before, 1 to run" in err, err
    assert "reference seed0" not in err  # read from its kept JSON, not trained again
    assert {n: (elsewhere / "runs" / n / "results.json").stat().st_mtime_ns for n in FINISHED} == stamps
    assert_same_runs(done, elsewhere, [UNFINISHED])  # queries, pool, every cycle's numbers
    # Kept again from there: the run finished since joins the copy.
    code, out, _ = keep(elsewhere, dest, capsys)
    assert code == 0 and out.startswith(f"{dest}: 3 finished runs (1 new), 1 references, ")
    assert results(dest / "runs" / UNFINISHED) == results(elsewhere / "runs" / UNFINISHED)


def test_kept_again_the_copy_gains_and_loses_nothing(done: Path, partial: Path, tmp_path: Path, capsys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    dest = tmp_path / "kept"
    assert keep(done, dest, capsys)[0] == 0
    # From the sweep part-way (margin unfinished there): margin's finished copy stays.
    code, out, _ = keep(partial, dest, capsys)
    assert code == 0 and out.startswith(f"{dest}: 3 finished runs (0 new), 1 references, ")
    assert results(dest / "runs" / UNFINISHED) == results(done / "runs" / UNFINISHED)
    # A copy that fails half-way (here: writing its table) leaves the old DEST as it was.
    before = snapshot(dest)

    def full_disk(*args) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keep_sweep, "write_cycles", full_disk)
    code, _, err = keep(done, dest, capsys)
    assert code == 2 and "No space left on device" in err
    assert snapshot(dest) == before and [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_a_dest_in_the_sweep_or_holding_its_own_files_is_refused(partial: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(partial)
    for dest, message in ((partial / "kept", "inside the sweep directory"),
                          (partial / "runs" / NAMES[0], "inside the sweep directory"),
                          (partial, "inside the sweep directory"),
                          (partial.parent, "holds the sweep directory")):  # fmt: skip
        code, out, err = keep(partial, dest, capsys)
        assert code == 2 and not out and message in one_line(err), err
    assert snapshot(partial) == before
    # A directory this script did not write is never replaced: a live sweep's, or another one.
    live = tmp_path / "live"
    (live / "runs" / NAMES[0]).mkdir(parents=True)
    shutil.copy(partial / "sweep.json", live / "sweep.json")
    (live / "runs" / NAMES[0] / "pool.npz").write_bytes(b"labels")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for dest, message in ((live, f"{live / 'runs' / NAMES[0] / 'pool.npz'}: not a file this script writes"),
                          (other, f"{other}: exists and is not a kept sweep (no sweep.json)")):  # fmt: skip
        kept = snapshot(dest)
        code, out, err = keep(partial, dest, capsys)
        assert code == 2 and message in one_line(err), err
        assert snapshot(dest) == kept
