"""SIGKILL during the selection of a Cityscapes-sized run, resumed: the same run as without the kill.

Runs the configuration that ``benchmarks/cityscapes_scale.py`` ran for ``--images N`` into a new
directory, kills it in cycle 2's selection (``FASTAL_CRASH_AT``: after the selection table and
plot are written, then, resumed, half-way through the query log, before the pool commit), resumes
it to the end and compares it with that script's uninterrupted run: queries.jsonl, pool.npz, the
selection table, every mIoU, the last teacher's weights. Both runs must have the same torch thread
count (results on a CPU depend on it).

    OMP_NUM_THREADS=1 python benchmarks/cityscapes_scale_kill.py --images 372 --runs /work/data-scale/runs
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastal.atomic import atomic_write_json, read_json
from fastal.config import read_toml
from fastal.machine import command_line, machine_info, portable_path
from fastal.testing import run_differences

ROOT = Path(__file__).resolve().parents[1]
KILLS = ("table:2", "queries:2")  # fastal.loop / fastal.rundir crash points inside cycle 2's selection


def run(argv: list[str], crash_at: str | None) -> tuple[int, float]:
    """(exit code, seconds) of ``fastal`` with ``argv``, killed at ``crash_at`` when given."""
    env = {**os.environ, "FASTAL_CRASH_AT": crash_at or ""}
    start = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "fastal", *argv], env=env, check=False).returncode
    return code, round(time.perf_counter() - start, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, required=True, help="the train_images of the uninterrupted run")
    p.add_argument("--runs", type=Path, required=True, help="the folder of benchmarks/cityscapes_scale.py's runs")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args()
    name = next(a.runs.glob(f"cityscapes_scale*_{a.images}.toml")).stem
    reference, killed = a.runs / name, a.runs / f"{name}_sigkill"
    if not (reference / "results.json").is_file() or read_json(reference / "results.json").get("stopped") is None:
        sys.exit(f"{reference}: run benchmarks/cityscapes_scale.py --images {a.images} to its end first")
    data_root = read_toml(reference / "config.toml")["data_root"]
    if killed.exists():
        sys.exit(f"{killed} exists: remove it to measure again")
    command = ["run", str(a.runs / f"{name}.toml"), "--data-root", data_root, "--out", str(killed)]
    steps = []
    for argv, crash_at in [(command, KILLS[0]), (["run", "--resume", str(killed)], KILLS[1]),
                           (["run", "--resume", str(killed)], None)]:  # fmt: skip
        code, seconds = run(argv, crash_at)
        steps.append({"command": command_line(["fastal", *argv]), "crash_at": crash_at, "exit": code, "seconds": seconds})
        print(steps[-1], flush=True)
        if code != (-signal.SIGKILL if crash_at else 0):
            sys.exit(f"{steps[-1]}: expected {'SIGKILL' if crash_at else 'exit 0'}")
    found = run_differences(reference, killed)
    res = read_json(killed / "results.json")
    atomic_write_json(a.results / f"{name}_sigkill.json", {
        "images": a.images,
        "superpixels": res["num_superpixels"],
        "same_as_uninterrupted": not found,
        "differences": found,
        "compared": ["queries.jsonl", "pool.npz", "selection tables", "mIoU", "last teacher"],
        "steps": steps,
        "uninterrupted_seconds": read_json(a.results / f"{name}.json")["seconds"],
        "runs": [portable_path(reference), portable_path(killed)],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "command": command_line([sys.executable, *sys.argv]),
        "machine": machine_info(),
    })
    print("the same run as without the kills" if not found else f"differs: {found}")


if __name__ == "__main__":
    main()
