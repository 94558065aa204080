"""`fastal sweep` on a Dask LocalCluster of 2 worker processes, tiny synthetic runs: the grid, its
shared references and cycles.parquet against the run directories and a plain run; a worker
SIGKILLed in the middle of a run, and the sweep process SIGKILLed then resumed, both ending with
the results of the uninterrupted sweep; docs/sweeps.md's Slurm recipe (dask-jobqueue) with stand-ins for
sbatch / scancel and one job killed; a run failing for its own reason; bad sweep files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pytest
import torch

from fastal.cli import main
from fastal.config import dumps_toml, load_config
from fastal.data.camvid import CLASSES
from fastal.loop import run_experiment
from fastal.sweep import load_sweep, open_sweep_dir, run_sweep
from fastal.sweep.tasks import use_threads
from fastal.testing import run_differences

ROOT = Path(__file__).resolve().parents[1]
# 8 images 32x48, ~12 superpixels each; a random 4 %, then one cycle to 8 %; one epoch per cycle.
TINY = {
    "dataset": "synthetic", "image_size": [32, 48], "train_images": 8, "val_images": 4, "superpixels": 12,
    "labels": "dominant", "budgets": [4.0, 8.0], "epochs": 1, "full_epochs": 2, "batch_size": 8, "device": "cpu",
}  # fmt: skip
STRATEGIES, SEEDS = ["random", "entropy"], [0, 1]
NAMES = [f"strategy={st},seed={s}" for st in STRATEGIES for s in SEEDS]
TIMES = ("train_seconds", "select_seconds", "strategy_seconds", "seconds")
SWEEP = ["--workers", "2", "--threads-per-worker", "1"]


def write_sweep(tmp: Path, axes: dict, fixed: dict | None = None, base: dict | None = None) -> Path:
    (tmp / "base.toml").write_text(dumps_toml({**TINY, "cache_dir": str(tmp.parent / "spcache"), **(base or {})}))
    path = tmp / "sweep.toml"
    path.write_text('base = "base.toml"\n' + dumps_toml({"axes": axes, "set": fixed or {}}))
    return path


def cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fastal", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def results(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def assert_same_runs(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert run_differences(a / "runs" / name, b / "runs" / name) == [], name


def mid_run_worker(out: Path) -> tuple[str, int] | None:
    """An entropy run (its cycle 2 scores the pool: time to act) that has trained cycle 1 and not
    finished, and the pid of the worker running it: the moment to kill that worker."""
    for name in [n for n in NAMES if "entropy" in n]:
        run = out / "runs" / name
        r = results(run)
        if (run / "checkpoints" / "cycle-1.pt").exists() and not (r and r["stopped"]):
            return name, int(re.findall(r"\(pid (\d+)\)", (run / "sweep.log").read_text())[-1])
    return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2 strategies x 2 seeds sweep, run to the end without trouble."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(tmp, {"strategy": STRATEGIES, "seed": SEEDS})
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(sweep), "--out", str(tmp / "out"), *SWEEP])
    assert e.value.code == 0
    return tmp / "out"


def test_sweep_runs_the_grid(uninterrupted: Path, tmp_path: Path) -> None:
    out = uninterrupted
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == sorted(NAMES)
    res = {n: results(out / "runs" / n) for n in NAMES}
    for n, r in res.items():
        assert r["stopped"] == "budget" and [c["cycle"] for c in r["cycles"]] == [1, 2], n
        assert re.search(r"started on tcp://127\.0\.0\.1:\d+ \(pid \d+\)", (out / "runs" / n / "sweep.log").read_text())
    assert json.loads((out / "threads.json").read_text()) == {"torch_threads_per_run": 1}  # kept for resumes
    # One reference per seed, trained once in its own task, read by both strategies of the seed.
    refs = sorted(p for p in (out / "references").glob("*.json"))
    assert [p.name.split("-")[0] for p in refs] == ["seed0", "seed1"]
    for seed, ref in zip(SEEDS, refs):
        shared = json.loads(ref.read_text())
        assert shared["run"] == str(ref.with_suffix(""))  # trained in DIR/references/<name>/
        assert "fully supervised mIoU" in (ref.with_suffix("") / "sweep.log").read_text()
        for st in STRATEGIES:
            run = out / "runs" / f"strategy={st},seed={seed}"
            assert json.loads((run / "full.json").read_text()) == {**shared, "shared": str(ref)}
            assert "(shared reference" in (run / "sweep.log").read_text()
            assert res[run.name]["full_miou"] == shared["miou"]
    # cycles.parquet, row by row against results.json.
    df = pd.read_parquet(out / "cycles.parquet")
    assert list(df.columns[:4]) == ["run", "strategy", "seed", "cycle"]
    assert list(df.columns[-4:]) == list(TIMES)
    assert [c for c in df.columns if c.startswith("iou_")] == [f"iou_{c}" for c in CLASSES]
    assert len(df) == 8 and sorted(set(df["run"])) == sorted(NAMES)
    for row in df.itertuples():
        r = res[row.run]
        c = r["cycles"][row.cycle - 1]
        assert row.run == f"strategy={row.strategy},seed={row.seed}"
        assert (row.strategy, row.seed) == (r["strategy"], r["seed"])
        assert row.miou == c["miou"] and row.full_miou == r["full_miou"] and row.budget_pct == c["budget_pct"]
        assert row.pixel_pct == pytest.approx(100 * c["labelled_pixel_fraction"])
        assert (row.superpixels, row.clicks) == (c["labelled_superpixels"], c["cost_clicks"])
        assert row.seconds == pytest.approx(c["train_seconds"] + c["select_seconds"])
        assert row.strategy_seconds == c["stages"]["select"]["seconds"]
        got = df.loc[row.Index, [f"iou_{k}" for k in CLASSES]].to_numpy(dtype=float)
        np.testing.assert_array_equal(got, [np.nan if v is None else v for v in c["per_class_iou"]])
    # fastal report on the sweep: entropy minus random at 8 %, seed by seed, by hand.
    with pytest.raises(SystemExit) as e:
        main(["report", str(out), "--json", str(tmp_path / "report.json"), "--out", str(tmp_path / "report.png")])
    assert e.value.code == 0
    paired = json.loads((tmp_path / "report.json").read_text())["paired"]
    with pytest.raises(SystemExit) as e:  # without --out the plot goes into the sweep directory
        main(["report", str(out)])
    assert e.value.code == 0 and (out / "report.png").stat().st_size > 0
    row = next(r for r in paired if r["strategy"] == "entropy" and r["budget_pct"] == 8.0)
    at8 = {name: r["cycles"][1]["miou"] for name, r in res.items()}
    diffs = [at8[f"strategy=entropy,seed={s}"] - at8[f"strategy=random,seed={s}"] for s in SEEDS]
    assert row["n"] == 2 and row["diff_mean"] == pytest.approx(sum(diffs) / 2)
    assert (row["ahead"], row["behind"]) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))
    # A sweep's run is the plain run of its configuration (same threads: CPU results depend on them).
    cfg = load_config(out.parent / "base.toml", {"strategy": "entropy", "seed": 1,
                                                 "full_shared": str(refs[1])})  # fmt: skip
    threads = torch.get_num_threads(), numba.get_num_threads()
    use_threads(1)
    try:
        run_experiment(cfg, tmp_path / "runs" / "strategy=entropy,seed=1")
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
    assert_same_runs(out, tmp_path, ["strategy=entropy,seed=1"])


def test_worker_killed_mid_run(uninterrupted: Path, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, {"strategy": STRATEGIES, "seed": SEEDS})
    out = tmp_path / "out"
    proc = spawn(["sweep", str(sweep), "--out", str(out), *SWEEP])
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        if found := mid_run_worker(out):
            killed, pid = found
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert killed is not None and proc.returncode == 0, err
    assert "4/4 runs finished" in err
    # The run was started again (on the restarted or the other worker) and resumed.
    assert len(re.findall("started on", (out / "runs" / killed / "sweep.log").read_text())) == 2
    assert_same_runs(uninterrupted, out, NAMES)
    a, b = (pd.read_parquet(d / "cycles.parquet").drop(columns=list(TIMES)) for d in (uninterrupted, out))
    pd.testing.assert_frame_equal(a, b)


FAKE_SBATCH = """#!/bin/bash
# sbatch on one machine: run the job script now, in a process group of its own (the job).
set -eu
job=$(mktemp --suffix=.sh "$FAKE_SLURM_DIR/job-XXXXXX")
cp "$1" "$job"     # dask-jobqueue deletes its file once sbatch returns
setsid bash "$job" > "$job.out" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/bash
for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null || true; done
"""


def test_slurm_recipe_with_a_job_killed(uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/sweeps.md's Slurm recipe (dask-jobqueue's SLURMCluster, then run_sweep at its scheduler) with
    # stand-ins for sbatch / scancel that run each job script here. One job is killed the way Slurm
    # ends a job (its process group) in the middle of a run: the run goes on in the other job and
    # the sweep ends with the results of the uninterrupted local sweep.
    jobqueue = pytest.importorskip("dask_jobqueue")
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    sweep = load_sweep(write_sweep(tmp_path, {"strategy": STRATEGIES, "seed": SEEDS}))
    out = tmp_path / "out"
    killed: list[str] = []

    def kill_a_job() -> None:  # as in test_worker_killed_mid_run, but the worker's whole job
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if found := mid_run_worker(out):
                os.killpg(os.getpgid(found[1]), signal.SIGKILL)
                killed.append(found[0])
            time.sleep(0.05)

    with jobqueue.SLURMCluster(cores=1, processes=1, memory="4GB", walltime="00:30:00",
                               job_extra_directives=["--gres=gpu:1"], worker_extra_args=["--resources", "GPU=1"],
                               job_script_prologue=["export DASK_DISTRIBUTED__WORKER__DAEMON=False"],
                               scheduler_options={"dashboard_address": ":0"}) as cluster:  # fmt: skip
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:1" in script and "export DASK_DISTRIBUTED__WORKER__DAEMON=False" in script
        assert "--nthreads 1" in script and "--resources GPU=1" in script
        cluster.scale(jobs=2)
        cluster.wait_for_workers(2, timeout=120)  # else the killed job's run would wait for a worker forever
        killer = threading.Thread(target=kill_a_job)
        killer.start()
        outcome = run_sweep(open_sweep_dir(out, sweep), out, scheduler=cluster.scheduler_address, threads=1)
        killer.join()
    assert killed and sorted(outcome.finished) == sorted(NAMES) and not outcome.failed
    assert len(re.findall("started on", (out / "runs" / killed[0] / "sweep.log").read_text())) == 2
    assert_same_runs(uninterrupted, out, NAMES)
    assert len(list(jobs.glob("job-*.sh"))) == 2  # the killed job was not replaced (docs/sweeps.md)


def test_resume_after_the_sweep_is_killed(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    sweep = write_sweep(tmp_path, {"strategy": ["entropy"], "seed": SEEDS})
    out = tmp_path / "out"
    names = [f"strategy=entropy,seed={s}" for s in SEEDS]
    # One worker: the runs go one after the other, so the second is under way when the first ends.
    proc = spawn(["sweep", str(sweep), "--out", str(out), "--workers", "1", "--threads-per-worker", "1"])
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if any((r := results(out / "runs" / n)) and r["stopped"] for n in names):
            proc.send_signal(signal.SIGKILL)  # the driver, its local cluster with it
            break
        time.sleep(0.05)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = [n for n in names if (r := results(out / "runs" / n)) and r["stopped"]]
    assert len(done) == 1
    stamp = (out / "runs" / done[0] / "results.json").stat().st_mtime_ns
    code, err = cli(["sweep", "--resume", str(out), *SWEEP], capsys)
    assert code == 0 and "2 runs, 1 finished before, 1 to run" in err
    assert (out / "runs" / done[0] / "results.json").stat().st_mtime_ns == stamp  # not run again
    assert_same_runs(uninterrupted, out, names)
    # Once finished, the same sweep file again runs nothing.
    code, err = cli(["sweep", str(sweep), "--out", str(out)], capsys)
    assert code == 0 and "2 runs, 2 finished before, 0 to run" in err


def test_a_failing_run_does_not_stop_the_others(tmp_path: Path, capsys) -> None:
    # The folder dataset needs a data root: that run fails in its own task, the other finishes.
    sweep = write_sweep(tmp_path, {"dataset": ["folder", "synthetic"]},
                        base={"full_reference": False, "strategy": "random"})  # fmt: skip
    code, err = cli(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--workers", "1"], capsys)
    assert code == 1
    assert "dataset=folder: failed: dataset folder needs a data root" in err
    assert results(tmp_path / "out" / "runs" / "dataset=synthetic")["stopped"] == "budget"
    log = tmp_path / "out" / "runs" / "dataset=folder.log"  # it failed before its directory existed
    assert "FastalError: dataset folder needs a data root" in log.read_text()
    assert "1/2 runs finished" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('base = "base.toml"\nrepeat = 2\n[axes]\nseed = [0]\n', "unknown key 'repeat' (a sweep file has base"),
        ('base = "base.toml"\n[axes]\nseeds = [0, 1]\n', "axes.seeds: unknown key (known: "),
        ('base = "base.toml"\n[axes]\nseed = []\n', "axes.seed = []: an empty axis gives no runs"),
        ('base = "base.toml"\n[axes]\nseed = [0, 0]\n', "axes.seed = [0, 0]: 0 is there twice"),
        ('base = "base.toml"\n[axes]\nseed = [0]\n[set]\nepochz = 1\n', "unknown key 'epochz'"),
        ('base = "base.toml"\n[axes]\nseed = [0]\n[set]\nseed = 1\n', "seed is both in [axes] and [set]"),
        ('base = "base.toml"\n[axes]\nstrategy = ["clever"]\n', "strategy 'clever': choose one of"),
        ('base = "base.toml"\n[axes]\nepochs = ["two"]\n', "epochs = 'two': expected int, got str"),
        ('base = "nothere.toml"\n[axes]\nseed = [0]\n', "nothere.toml: config file not found"),
        ("[axes\n", "not valid TOML"),
    ],
)
def test_bad_sweep_file_exit_2_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    (tmp_path / "base.toml").write_text(dumps_toml(TINY))
    (tmp_path / "sweep.toml").write_text(text)
    code, err = cli(["sweep", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_changed_sweep_file_refused_naming_the_key(tmp_path: Path, capsys) -> None:
    sweep = write_sweep(tmp_path, {"seed": [0, 1]}, {"epochs": 1})
    out = tmp_path / "out"
    open_sweep_dir(out, load_sweep(sweep))
    kept = (out / "sweep.json").read_text()
    for axes, fixed, key in [({"seed": [0, 1]}, {"epochs": 2}, "epochs = 1"),
                             ({"seed": [0, 1, 2]}, {"epochs": 1}, "axes.seed = [0, 1]"),
                             ({"seed": [0, 1], "labels": ["full"]}, {"epochs": 1}, "axes.labels = None")]:  # fmt: skip
        write_sweep(tmp_path, axes, fixed)
        code, err = cli(["sweep", str(sweep), "--out", str(out)], capsys)
        assert code == 2 and f"made by a sweep with {key}" in err and len(err.strip().splitlines()) == 1, err
    assert (out / "sweep.json").read_text() == kept
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    code, err = cli(["sweep", str(sweep), "--out", str(tmp_path / "other")], capsys)
    assert code == 2 and "exists and is not a sweep directory" in err
    code, err = cli(["sweep", "--resume", str(tmp_path / "other")], capsys)
    assert code == 2 and "not a sweep directory (no sweep.json)" in err
    shutil.rmtree(tmp_path / "other")
