"""`fastal run` across processes (issue 31): a 2-process run killed in a cycle resumes with 2
processes and with 1, losing and repeating no query; the launch errors are one line, exit 2,
nothing written. The tiny synthetic run of the loop tests, with one epoch per cycle and the
weighted-ratio strategy: it reads the prediction columns and the pool's class probability, which
rank 0 gathers from every process (no clustering: the selection engine is not what is shared)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_run_guard import cli, one_line

from fastal import distributed
from fastal.config import dumps_toml, make_config
from fastal.errors import FastalError
from fastal.loop import run_experiment
from fastal.pool import RegionPool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tiny: dict) -> dict:
    return {**tiny, "strategy": "weighted-ratio", "epochs": 1, "selection_plot": False}


def fastal_command(*args: str, crash_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTAL_CRASH_AT": crash_at, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastal", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def queries(run_dir: Path) -> list[int]:
    return [json.loads(line)["superpixel"] for line in (run_dir / "queries.jsonl").read_text().splitlines()]


def test_a_two_process_run_killed_in_a_cycle_resumes_with_two_or_one(settings: dict, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml({**settings, "nproc": 2}))  # the config's key, not --nproc, starts them
    run_dir = tmp_path / "run"
    # SIGKILL of rank 0 once cycle 2's selection is committed, before its model is trained: torchrun
    # takes the other rank down with it.
    killed = fastal_command("run", str(config), "--out", str(run_dir), crash_at="pool:2")
    assert killed.returncode != 0, killed.stderr
    picked = RegionPool.load(run_dir / "pool.npz")
    assert picked.current_cycle == 2 and not (run_dir / "checkpoints" / "cycle-2.pt").exists()
    alone = tmp_path / "alone"
    shutil.copytree(run_dir, alone)

    resumed = fastal_command("run", "--resume", str(run_dir), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    run_experiment(None, alone, resume=True)  # one process goes on from the same commit

    for d, sizes in ((run_dir, [2, 2]), (alone, [2, 1])):
        res = json.loads((d / "results.json").read_text())
        assert res["stopped"] == "budget" and [c["world_size"] for c in res["cycles"]] == sizes
        pool = RegionPool.load(d / "pool.npz")
        # Nothing lost, nothing repeated: the pool is the one committed before the kill, the log says it once.
        np.testing.assert_array_equal(pool.state, picked.state)
        np.testing.assert_array_equal(pool.order, picked.order)
        assert queries(d) == pool.order.tolist() and len(set(queries(d))) == pool.num_labelled
        assert [c["labelled_superpixels"] for c in res["cycles"]] == [int((pool.state == 1).sum()), pool.num_labelled]


def test_too_many_processes_or_an_uneven_batch_is_one_line_exit_2_nothing_written(
    settings: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # How many images the first cycle labels: a one-process run of that cycle alone.
    run_experiment(make_config({**settings, "cycles": 0}), tmp_path / "first")
    images = np.unique(RegionPool.load(tmp_path / "first" / "pool.npz").labelled_images()).size
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(settings))
    monkeypatch.setattr(distributed, "broadcast", lambda obj, src=0: obj)  # no job: nobody to tell
    for world, message in ((images + 1, f"{images + 1} processes but the first cycle labels only {images} images"),
                           (3, "batch_size = 8 is not a multiple of the 3 processes")):  # fmt: skip
        monkeypatch.setattr(distributed, "world_size", lambda world=world: world)
        code, err = cli(["run", config, "--out", tmp_path / "run"], capsys)
        assert code == 2 and message in one_line(err)
        assert not (tmp_path / "run").exists()


def test_device_errors_name_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = distributed.LaunchEnv(rank=3, world_size=4, local_rank=3, master_addr="node0", master_port=29500)
    with pytest.raises(FastalError, match="each process uses cuda:LOCAL_RANK"):
        distributed.rank_device("cuda:1", env)
    with pytest.raises(FastalError, match="LOCAL_RANK 3: this node has 2 visible GPU"):
        distributed.rank_device("cuda", env)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(FastalError, match="needs NCCL"):
        distributed.start("auto")
    assert not distributed.is_initialised()


@pytest.mark.gpu
def test_the_nccl_path_runs_with_one_process(settings: dict, tmp_path: Path) -> None:
    """On a machine with a GPU: `fastal run --nproc 1` on CUDA (NCCL) finishes the tiny run."""
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml({**settings, "device": "cuda"}))
    done = fastal_command("run", str(config), "--nproc", "1", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [c["world_size"] for c in res["cycles"]] == [1, 1]


def test_a_sweep_run_of_n_processes_asks_for_n_gpus_and_starts_them(
    settings: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's side only (the processes' run is the test above): the task asks its worker for
    ``nproc`` GPUs, makes the run directory after its checks, and starts `fastal run --resume` in
    ``nproc`` processes; a failed process is the task's one-line error."""
    from fastal.run_setup import prepare
    from fastal.sweep.driver import submit
    from fastal.sweep.spec import RunSpec
    from fastal.sweep.tasks import run_processes

    cfg = make_config({**settings, "nproc": 2, "device": "cuda"})
    asked = []

    class Client:
        def submit(self, fn, *args, **kwargs):
            asked.append(kwargs["resources"])
            return object()

    submit(Client(), [RunSpec("seed=3", {"seed": 3}, cfg, None)], tmp_path / "sweep", 1, gpu=True)
    assert asked == [{"GPU": 2}]

    started = []
    monkeypatch.setattr(distributed, "launch", lambda n, argv: started.append((n, argv)) or 2)
    cpu = make_config({**settings, "nproc": 2})
    with pytest.raises(FastalError, match="the run's 2 processes failed"):
        run_processes(prepare(cpu), tmp_path / "run", resume=False)  # what run_task does with nproc > 1
    assert started == [(2, ["run", "--resume", str(tmp_path / "run")])]
    assert (tmp_path / "run" / "config.toml").is_file() and not (tmp_path / "run" / "pool.npz").exists()
