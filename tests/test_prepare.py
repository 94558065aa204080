"""`fastal prepare`: summary and JSON, reuse, and bad input (exit 2, one line, nothing on disk)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fastal.cli import main

from test_data_datasets import make_folder, write_png


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", *argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


SMALL = ["--num-images", "3", "--size", "48x64", "--superpixels", "40", "--workers", "1"]


def test_prepare_summarises_and_reuses(tmp_path, capsys, monkeypatch):
    cache, out_json = tmp_path / "cache", tmp_path / "res" / "prepare.json"
    monkeypatch.chdir(tmp_path)  # the summary names paths relative to the working directory
    code, out, _ = run([*SMALL, "--cache", str(cache), "--json", str(out_json)], capsys)
    assert code == 0
    for row in ("images", "superpixels", "mean size", "purity", "seconds", "reused"):
        assert row in out
    summary = json.loads(out_json.read_text())
    assert summary["images"] == 3 and summary["reused"] is False
    assert summary["superpixels_requested"] == 40
    built = list(cache.iterdir())
    assert len(built) == 1 and summary["cache"] == f"cache/{built[0].name}"
    counts = np.load(built[0] / "counts.npy")
    assert summary["superpixels"] == counts.sum()
    assert summary["mean_size"] == pytest.approx(3 * 48 * 64 / counts.sum())
    assert 0.5 < summary["purity"] <= 1 and summary["seconds"] > 0
    assert summary["command"].startswith("fastal prepare") and "--superpixels 40" in summary["command"]
    assert "--cache cache " in summary["command"] and "--json res/prepare.json" in summary["command"]
    assert summary["machine"]["cores"] >= 1

    code, out, _ = run([*SMALL, "--cache", str(cache), "--json", str(out_json)], capsys)
    again = json.loads(out_json.read_text())
    assert code == 0 and again["reused"] is True and "yes" in out
    assert again["purity"] == summary["purity"] and again["superpixels"] == summary["superpixels"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--superpixels", "0"], "superpixels 0"),
        (["--scale", "0"], "scale 0"),
        (["--scale", "-0.5"], "scale -0.5"),
        (["--dataset", "kitti"], "unknown dataset 'kitti'"),
        (["--space", "rgb"], "colour space 'rgb'"),
        (["--size", "10x"], "HxW"),
        (["--dataset", "camvid"], "needs a data root"),
        (["--dataset", "camvid", "--data-root", "/no/such/dir"], "/no/such/dir"),
        (["--workers", "0"], "workers 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_cache(tmp_path, capsys, argv, message):
    cache, out_json = tmp_path / "cache", tmp_path / "out.json"
    code, _, err = run([*argv, "--cache", str(cache), "--json", str(out_json)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not cache.exists() and not out_json.exists()


def test_bad_label_midway_leaves_no_partial_cache(tmp_path, capsys):
    root = make_folder(tmp_path / "data", n=3)
    mask = np.zeros((10, 14), np.uint8)
    mask[4, 4] = 3
    write_png(root / "masks" / "img1.png", mask)
    cache = tmp_path / "cache"
    argv = ["--dataset", "folder", "--data-root", str(root), "--superpixels", "10", "--cache", str(cache)]
    code, _, err = run([*argv, "--workers", "2"], capsys)
    assert code == 2
    assert "img1.png: label value(s) 3 not allowed" in err and len(err.strip().splitlines()) == 1
    assert not cache.exists()


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastal", "prepare", "--superpixels", "0", "--cache", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: superpixels 0: must be an integer >= 1"
    assert not (tmp_path / "c").exists()
