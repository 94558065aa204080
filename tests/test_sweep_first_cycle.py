"""`share_first_cycle`: the runs of a sweep that differ only in their strategy train cycle 1 once
(DIR/first/<name>/) and start from a copy of it, with the results of the same runs done alone; a
kill in the first cycle's task or in the copy loses and repeats nothing; a run directory that
exists is never overwritten; runs wait for their first cycle; the option is kept in sweep.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep import ROOT, SWEEP, assert_same_runs, cli, results, write_sweep

from fastal.cli import main
from fastal.config import FIRST_CYCLE_KEYS, LATER_CYCLE_KEYS, RunConfig, load_config
from fastal.errors import FastalError
from fastal.rundir import create_run_dir
from fastal.sweep import load_sweep, open_sweep_dir
from fastal.sweep.driver import submit
from fastal.sweep.spec import first_name

STRATEGIES = ["random", "entropy"]
NAMES = [f"strategy={st},seed=0" for st in STRATEGIES]


def sharing_sweep(tmp: Path, share: bool = True, fixed: dict | None = None) -> Path:
    path = write_sweep(tmp, {"strategy": STRATEGIES, "seed": [0]}, fixed)
    path.write_text(f"share_first_cycle = {str(share).lower()}\n" + path.read_text())
    return path


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2 strategies x 1 seed sweep without sharing."""
    tmp = tmp_path_factory.mktemp("alone")
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(sharing_sweep(tmp, share=False)), "--out", str(tmp / "out"), *SWEEP])
    assert e.value.code == 0
    return tmp / "out"


def the_first(out: Path) -> Path:
    (first,) = [p for p in (out / "first").iterdir() if p.is_dir()]  # beside it: its task's <name>.lock
    return first


def test_every_key_acts_from_cycle_1_or_only_later() -> None:
    # A new RunConfig key must say whether runs that differ in it may share their cycle 1.
    assert sorted(FIRST_CYCLE_KEYS + LATER_CYCLE_KEYS) == sorted(RunConfig.__dataclass_fields__)
    assert not set(FIRST_CYCLE_KEYS) & set(LATER_CYCLE_KEYS)
    cfg = load_config(None, {"device": "cpu"})
    assert first_name(cfg) == first_name(load_config(None, {"device": "cpu", "strategy": "random", "clusters": 2.0}))
    assert first_name(cfg) != first_name(load_config(None, {"device": "cpu", "epochs": 2}))


def test_shared_first_cycle_gives_the_runs_done_alone(alone: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = cli(["sweep", str(sharing_sweep(tmp_path)), "--out", str(out), *SWEEP], capsys)
    assert code == 0, err
    assert json.loads((out / "sweep.json").read_text())["share_first_cycle"] is True
    first = the_first(out)
    assert [c["cycle"] for c in results(first)["cycles"]] == [1] and results(first)["stopped"] is None
    assert_same_runs(alone, out, NAMES)  # queries.jsonl, pool.npz, every cycle's mIoU
    for name in NAMES:
        run = out / "runs" / name
        assert json.loads((run / "run.json").read_text())["first_cycle"] == f"../../first/{first.name}"
        assert results(run)["strategy"] == name.split(",")[0].removeprefix("strategy=")
        # Cycle 1 was trained once: its measured seconds are the first cycle's, copied.
        timings = json.loads((run / "timings.json").read_text())
        assert timings["1"] == json.loads((first / "timings.json").read_text())["1"]
        assert "started on" in (run / "sweep.log").read_text() and "first " not in (run / "sweep.log").read_text()


def test_kill_in_the_first_cycle_task_then_in_the_copy(alone: Path, tmp_path: Path, capsys) -> None:
    # The first cycle's worker is SIGKILLed after committing cycle 1's random set: its task runs
    # again and goes on from the pool (not drawn again); the sweep ends as the one done alone.
    sweep, out = sharing_sweep(tmp_path), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTAL_CRASH_AT": "pool:1"}
    done = subprocess.run([sys.executable, "-m", "fastal", "sweep", str(sweep), "--out", str(out), *SWEEP], env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    first = the_first(out)
    assert (first / "sweep.log").read_text().count("started on") == 2  # killed once, resumed once
    assert_same_runs(alone, out, NAMES)
    # A kill in the copy (before its rename) leaves the run absent; --resume makes it whole.
    shutil.rmtree(out / "runs" / NAMES[1])
    (out / "cycles.parquet").unlink()
    code = (f"from pathlib import Path\nfrom fastal.sweep import load_sweep\nfrom fastal.sweep.tasks import run_task\n"
            f"run = load_sweep({str(sweep)!r}).runs(Path({str(out)!r}))[1]\n"
            f"run_task(run.name, run.cfg, {str(out / 'runs' / NAMES[1])!r}, 1, first={str(first)!r})\n")  # fmt: skip
    env["FASTAL_CRASH_AT"] = "first-copy"
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "runs" / NAMES[1]).exists()
    stamp = (out / "runs" / NAMES[0] / "results.json").stat().st_mtime_ns
    code, err = cli(["sweep", "--resume", str(out), *SWEEP], capsys)
    assert code == 0 and "2 runs, 1 finished before, 1 to run" in err, err
    assert (out / "runs" / NAMES[0] / "results.json").stat().st_mtime_ns == stamp
    assert_same_runs(alone, out, NAMES)


def test_a_run_directory_that_exists_is_never_overwritten(tmp_path: Path) -> None:
    first, run = tmp_path / "first", tmp_path / "run"
    first.mkdir()
    (first / "results.json").write_text("{}")
    run.mkdir()
    (run / "mine").write_text("kept")
    with pytest.raises(FastalError, match="already exists"):
        create_run_dir(RunConfig(), run, first)
    assert [p.name for p in run.iterdir()] == ["mine"] and (run / "mine").read_text() == "kept"


class FakeClient:
    """Records what the driver submits; each task's future is its key."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple] = {}

    def submit(self, fn, *args, key: str, priority: int = 0, resources=None) -> str:
        self.tasks[key] = (fn.__name__, args, priority)
        return key


def test_runs_wait_for_their_first_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = load_sweep(write_sweep(tmp_path, {"strategy": STRATEGIES, "seed": [0, 1]}))
    sweep = type(sweep)(sweep.config, sweep.axes, sweep.source, share_first_cycle=True)
    out = tmp_path / "out"
    runs = sweep.runs(out)
    assert len({r.first for r in runs}) == 2 and len({r.first for r in runs if r.cfg.seed == 0}) == 1
    client = FakeClient()
    refs, firsts, submitted = submit(client, runs, out, 1, False)
    assert sorted(firsts) == sorted({r.first for r in runs})
    for fut, run in submitted.items():
        name, args, _ = client.tasks[fut]
        # run_task(name, cfg, run_dir, threads, reference, first): after the reference and the first cycle
        assert name == "run_task" and args[4] == refs[run.reference] and args[5] == firsts[run.first]
        fname, fargs, priority = client.tasks[firsts[run.first]]
        assert fname == "first_cycle_task" and fargs[2] == str(out / "first" / run.first)
        assert fargs[4] == refs[run.reference]
    # A first cycle already evaluated is read, not run; a run that has a directory goes on from its own.
    monkeypatch.setattr("fastal.sweep.driver.is_started", lambda path: path.name == runs[0].first)
    (out / "runs" / runs[1].name).mkdir(parents=True)
    client = FakeClient()
    _, firsts, submitted = submit(client, runs, out, 1, False)
    assert runs[0].first not in firsts
    starts = {run.name: client.tasks[fut][1][5] for fut, run in submitted.items()}
    assert starts[runs[0].name] == str(out / "first" / runs[0].first) and starts[runs[1].name] is None


def test_workers_take_the_runs_in_the_grids_order(tmp_path: Path) -> None:
    """Seed listed first: seed 0's reference, first cycle and every run of it come before anything
    of seed 1, so a sweep stopped half-way leaves whole seeds."""
    sweep = load_sweep(write_sweep(tmp_path, {"seed": [0, 1], "strategy": STRATEGIES}))
    sweep = type(sweep)(sweep.config, sweep.axes, sweep.source, share_first_cycle=True)
    runs = sweep.runs(tmp_path / "out")
    client = FakeClient()
    refs, firsts, submitted = submit(client, runs, tmp_path / "out", 1, False)
    priority = {key: task[2] for key, task in client.tasks.items()}
    by_seed = {seed: [r for r in runs if r.cfg.seed == seed] for seed in (0, 1)}
    runs_of = {seed: [priority[fut] for fut, r in submitted.items() if r.cfg.seed == seed] for seed in (0, 1)}
    assert len(runs_of[0]) == len(STRATEGIES) > 1
    for seed in (0, 1):
        before = [priority[refs[by_seed[seed][0].reference]], priority[firsts[by_seed[seed][0].first]]]
        assert min(before) > max(runs_of[seed])  # a seed's reference and first cycle before its runs
    assert min(runs_of[0]) > priority[refs[by_seed[1][0].reference]]  # seed 0's runs before seed 1's reference
    assert [priority[fut] for fut in submitted] == sorted(priority[fut] for fut in submitted)[::-1]  # grid order


def test_share_first_cycle_is_checked_and_kept(tmp_path: Path, capsys) -> None:
    path = sharing_sweep(tmp_path)
    path.write_text(path.read_text().replace("share_first_cycle = true", 'share_first_cycle = "yes"'))
    code, err = cli(["sweep", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and 'share_first_cycle = \'yes\': expected true or false' in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    # A sweep kept without the option (made before it existed) stays without it.
    out = tmp_path / "kept"
    open_sweep_dir(out, load_sweep(sharing_sweep(tmp_path, share=False)))
    spec = json.loads((out / "sweep.json").read_text())
    del spec["share_first_cycle"]
    (out / "sweep.json").write_text(json.dumps(spec))
    assert not open_sweep_dir(out, None).share_first_cycle
    code, err = cli(["sweep", str(sharing_sweep(tmp_path)), "--out", str(out)], capsys)
    assert code == 2 and "made by a sweep with share_first_cycle = False" in err, err
    path = sharing_sweep(tmp_path, fixed={"nproc": 2})
    code, err = cli(["sweep", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "cannot share their first cycle" in err, err
