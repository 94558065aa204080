"""The sweep's edges: a sweep.json read back from disk is
checked as strictly as the sweep file, every option before the sweep directory is made, a run
no worker can take is refused at once, run names fit a file name, and a stopped sweep says how
to resume. No Dask cluster is started: each case is refused before one would be."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from test_run_guard import one_line, snapshot

from fastal.cli import main
from fastal.config import dumps_toml
from fastal.errors import FastalError
from fastal.sweep import load_sweep, open_sweep_dir
from fastal.sweep.driver import THREADS, kept_threads
from fastal.sweep.spec import RUNS

# T of the issue (no run is trained here: only its configuration is read).
T = {"dataset": "synthetic", "image_size": [32, 48], "train_images": 8, "val_images": 4, "superpixels": 12,
     "initial": 25.0, "budget_per_cycle": 5.0, "cycles": 2, "epochs": 3, "full_reference": False, "seed": 3,
     "labels": "dominant", "device": "cpu"}  # fmt: skip


def cli(args: list, capsys) -> tuple[int, str]:
    """Exit code and stderr of an in-process `fastal` command; an interrupt that escapes fails the test."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the command: no line said how to resume")
    return 0, capsys.readouterr().err


def sweep_file(tmp_path: Path, axes: dict, base: dict | None = None) -> Path:
    (tmp_path / "t.toml").write_text(dumps_toml({**T, **(base or {})}))
    path = tmp_path / "k.toml"
    path.write_text('base = "t.toml"\n' + dumps_toml({"axes": axes}))
    return path


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """S of the issue, as far as a resume reads it: sweep.json, and a cycles.parquet to keep."""
    out = tmp_path / "S"
    open_sweep_dir(out, load_sweep(sweep_file(tmp_path, {"strategy": ["random", "entropy"]})))
    (out / "cycles.parquet").write_bytes(b"the finished runs' rows")
    return out


# ---- item 1: a kept sweep.json is checked as strictly as the sweep file -----------------------
@pytest.mark.parametrize("damage, message", [
    (lambda s: s["axes"].update(strategy="random"), "axes.strategy = 'random': expected a list of values"),
    (lambda s: s.clear(), "expected the resolved sweep fastal wrote (keys sweep_file, config, axes), found []"),
    (lambda s: s["config"].update(epochs=0), "epochs = 0: must be >= 1"),
    (lambda s: s["axes"].update(strategy=["random", "clever"]), "strategy 'clever': choose one of"),
])  # fmt: skip
def test_a_damaged_sweep_json_is_refused_and_nothing_is_rewritten(sweep_dir: Path, capsys, damage,
                                                                  message: str) -> None:  # fmt: skip
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    damage(spec)
    (sweep_dir / "sweep.json").write_text(json.dumps(spec))
    before = snapshot(sweep_dir)
    code, err = cli(["sweep", "--resume", sweep_dir], capsys)
    assert code == 2 and f"{sweep_dir / 'sweep.json'}: " in one_line(err) and message in one_line(err), err
    assert snapshot(sweep_dir) == before and not list((sweep_dir / RUNS).iterdir())
    code, err = cli(["report", sweep_dir, "--out", sweep_dir / "r.png"], capsys)  # the report reads it too
    assert code == 2 and message in one_line(err), err


@pytest.mark.parametrize("kept, options, message", [
    ('{"torch_threads_per_run": 1}', ["--threads-per-worker", "2"],
     "--threads-per-worker 2: this sweep's runs were started with 1 torch threads each"),
    ('{"torch_threads_per_run": 0}', [], 'expected {"torch_threads_per_run": N} with N >= 1, found'),
    ("[1]", [], 'expected {"torch_threads_per_run": N} with N >= 1, found [1]'),
])  # fmt: skip
def test_a_resumed_sweep_keeps_its_thread_count(sweep_dir: Path, capsys, kept: str, options: list,
                                                 message: str) -> None:  # fmt: skip
    """Results on a CPU depend on torch's thread count: a resume may not change it, and without
    the option takes the kept one whatever --workers would give."""
    (sweep_dir / THREADS).write_text(kept)
    before = snapshot(sweep_dir)
    code, err = cli(["sweep", "--resume", sweep_dir, *options], capsys)
    assert code == 2 and message in one_line(err), err
    assert snapshot(sweep_dir) == before and not list((sweep_dir / RUNS).iterdir())


def test_the_kept_thread_count_is_the_default(sweep_dir: Path) -> None:
    assert kept_threads(sweep_dir, None) is None and kept_threads(sweep_dir, 3) == 3  # nothing kept yet
    (sweep_dir / THREADS).write_text('{"torch_threads_per_run": 1}')
    assert kept_threads(sweep_dir, None) == 1 and kept_threads(sweep_dir, 1) == 1


# ---- item 4: a run no worker can take -----------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the run could be placed")
def test_a_cuda_run_without_a_gpu_is_refused_at_once(tmp_path: Path, capsys) -> None:
    code, err = cli(["sweep", sweep_file(tmp_path, {"device": ["cuda"]}), "--out", tmp_path / "S"], capsys)
    assert code == 2 and "device=cuda: device = 'cuda' needs a worker with a GPU (Dask resource GPU)" in one_line(err)
    assert not (tmp_path / "S").exists()


def test_a_cluster_without_the_resource_is_refused(tmp_path: Path) -> None:
    from fastal.sweep.driver import check_placeable

    # A running cluster: its workers' resources, as the scheduler reports them.
    runs = load_sweep(sweep_file(tmp_path, {"device": ["cpu", "cuda:0"]})).runs()
    with pytest.raises(FastalError, match="device=cuda_0: device = 'cuda:0' needs a worker with a GPU .* the "
                                          "cluster at tcp://h:8786 has none"):  # fmt: skip
        check_placeable(runs, [{}, {"MEM": 4}], "the cluster at tcp://h:8786", False)
    check_placeable(runs, [{}, {"GPU": 1}], "the cluster at tcp://h:8786", False)
    check_placeable(runs[:1], [{}], "the cluster at tcp://h:8786", False)  # the CPU run alone goes anywhere


# ---- items 10, 11: options and --out checked before the sweep directory is made -----------------
@pytest.mark.parametrize("options, message", [
    (["--workers", "0"], "--workers 0: must be >= 1"),
    (["--threads-per-worker", "0"], "--threads-per-worker 0: must be >= 1"),
    (["--scheduler", "bogus"], "--scheduler bogus: expected local, or a running scheduler's address"),
])  # fmt: skip
def test_cluster_options_are_checked_before_the_sweep_directory_exists(tmp_path: Path, capsys, options,
                                                                       message: str) -> None:  # fmt: skip
    code, err = cli(["sweep", sweep_file(tmp_path, {"seed": [0, 1]}), "--out", tmp_path / "S", *options], capsys)
    assert code == 2 and message in one_line(err), err
    assert not (tmp_path / "S").exists()


def test_out_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "FILE").write_text("x")
    code, err = cli(["sweep", sweep_file(tmp_path, {"seed": [0, 1]}), "--out", tmp_path / "FILE"], capsys)
    assert code == 2 and f"cannot write {tmp_path / 'FILE'}: a file is there, not a directory" in one_line(err)
    assert (tmp_path / "FILE").read_text() == "x"


def test_run_names_of_long_axis_values_fit_a_file_name(tmp_path: Path) -> None:
    # Two schedules of 120 entries that differ only at the end: their names are cut, and stay apart.
    a = [0.5 * k for k in range(1, 121)]
    b = [*a[:-1], 60.5]
    sweep = load_sweep(sweep_file(tmp_path, {"budgets": [a, b]}, {"initial": None}))
    names = [r.name for r in sweep.runs()]
    assert len(set(names)) == 2 and names[0].startswith("budgets=0.5+1+1.5+2+")
    out = tmp_path / "S"
    open_sweep_dir(out, sweep)
    for name in names:  # a run's directory and what is written beside it: its temp sibling, lock and log
        assert len(name.encode()) <= 255 - 14  # a file name's bytes, less a temp sibling's additions
        for path in (out / RUNS / name, out / RUNS / f".{name}.abcdefgh.tmp", out / RUNS / f"{name}.lock"):
            path.mkdir()


# ---- item 12: a stopped sweep says how to resume ----------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_says_how_to_resume(tmp_path: Path, capsys, monkeypatch, sig: signal.Signals) -> None:
    import fastal.sweep

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), sig)  # SIGINT: Python's KeyboardInterrupt; SIGTERM: fastal's handler
        raise AssertionError("the signal did not stop the sweep")

    monkeypatch.setattr(fastal.sweep, "run_sweep", stopped)
    out = tmp_path / "S"
    # A suite started as a shell's background job inherits SIGINT ignored: handle it as a terminal's
    # foreground job does (as tests/test_run_guard.py does for its child processes).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, err = cli(["sweep", sweep_file(tmp_path, {"seed": [0, 1]}), "--out", out], capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"stopped by {sig.name}: continue with `fastal sweep --resume {out}`"
