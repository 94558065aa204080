"""`fastal run --log tensorboard`: the event files read back with TensorBoard's own
reader hold what results.json and epochs.json say, once per step, also after SIGKILLs and resumes."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from test_loop import fastal_cli
from test_run_guard import cli, one_line

from fastal.config import dumps_toml

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(log_dir: Path):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def steps_and_values(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_events_equal_the_run_records_after_kills_and_resumes(tiny: dict, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml({**tiny, "log": "tensorboard"}))
    run_dir = tmp_path / "run"
    # Killed after cycle 1's results, before its log replaced the old one; then after cycle 2's
    # training recorded its epochs, before the checkpoint (cycle 2 trains again).
    p = fastal_cli("run", str(config), "--out", str(run_dir), crash_at="tensorboard:1")
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert (run_dir / "tensorboard.tmp").is_dir() and not (run_dir / "tensorboard").exists()
    p = fastal_cli("run", "--resume", str(run_dir), crash_at="trained:2")
    assert p.returncode == -signal.SIGKILL, p.stderr
    p = fastal_cli("run", "--resume", str(run_dir))
    assert p.returncode == 0, p.stderr

    log_dir = run_dir / "tensorboard"
    assert len(list(log_dir.iterdir())) == 1  # one event file, rewritten whole: no step twice on disk either
    assert not (run_dir / "tensorboard.tmp").exists() and not (run_dir / "tensorboard.old").exists()
    acc = read_events(log_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cycles = results["cycles"]
    assert [c["cycle"] for c in cycles] == [1, 2]
    approx = lambda v: pytest.approx(v, rel=1e-6)  # noqa: E731  (event files hold float32)
    assert steps_and_values(acc, "cycle/miou") == [(c["cycle"], approx(c["miou"])) for c in cycles]
    assert steps_and_values(acc, "cycle/clicks") == [(c["cycle"], c["cost_clicks"]) for c in cycles]
    assert steps_and_values(acc, "cycle/labelled_pixels_pct") == [
        (c["cycle"], approx(100 * c["labelled_pixel_fraction"])) for c in cycles]
    assert steps_and_values(acc, "cycle/clusters_kept") == [(2, approx(cycles[1]["clusters_kept"]))]
    for k, name in enumerate(results["classes"]):
        want = [(c["cycle"], approx(c["per_class_iou"][k])) for c in cycles if c["per_class_iou"][k] is not None]
        got = steps_and_values(acc, f"iou/{name}") if want else []
        assert got == want, name
    timings = json.loads((run_dir / "timings.json").read_text())
    assert steps_and_values(acc, "select_stage/umap_fit") == [(2, approx(timings["2"]["stage_umap_fit"]))]
    epochs = json.loads((run_dir / "epochs.json").read_text())
    flat = [e for c in ("1", "2") for e in epochs[c]]
    assert len(flat) == 2 * tiny["epochs"]
    for tag, key in (("epoch/ce", "ce"), ("epoch/infonce", "nce"), ("epoch/lr", "lr")):
        assert steps_and_values(acc, tag) == [(n, approx(e[key])) for n, e in enumerate(flat, start=1)], tag
    assert [e.step for e in acc.Images("selection/embedding")] == [2]
    hp = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hp and b"strategy" in hp["_hparams_/session_start_info"]


def test_tensorboard_asked_without_the_package(tiny: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(tiny))
    code, err = cli(["run", config, "--log", "tensorboard", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "pip install 'fastal[log]'" in one_line(err)
    assert not (tmp_path / "run").exists()
    code, err = cli(["run", config, "--log", "mlflow", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "log" in one_line(err) and not (tmp_path / "run").exists()
