"""`fastal bench selection`: the JSON it writes and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastal.cli import main


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("strategy", ["contrastive", "entropy"])
def test_json_keys(tmp_path: Path, strategy: str) -> None:
    out = tmp_path / "r.json"
    argv = ["bench", "selection", "--superpixels", "1500", "--dim", "16", "--bank", "40", "--classes", "3",
            "--budget-fraction", "0.02", "--strategy", strategy, "--engine", "torch", "--no-warm", "--json", str(out)]
    assert _run(argv) == 0
    r = json.loads(out.read_text())
    assert {"superpixels", "seconds", "stages", "machine", "command", "warm"} <= set(r)
    assert r["superpixels"] == 1500 and r["budget"] == 30 and r["warm"] is False
    assert r["seconds"] >= sum(r["stages"].values()) * 0.99
    assert r["machine"]["cores"] >= 1 and "bench selection" in r["command"]
    if strategy == "contrastive":
        assert set(r["stages"]) == {"umap_fit", "umap_transform", "kmeans", "pick"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget-fraction", "1.5"], "--budget-fraction"),
        (["--strategy", "bald"], "--strategy 'bald'"),
        (["--engine", "faiss"], "--engine 'faiss'"),
        (["--engine", "cuml"], "needs a CUDA device"),
        (["--superpixels", "0"], "must be positive"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    out = tmp_path / "r.json"
    argv = ["bench", "selection", "--superpixels", "100", "--no-warm", "--json", str(out), *extra]
    if "--superpixels" in extra:
        argv[2:4] = []
    assert _run(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_profile_trace_holds_every_stage(tmp_path: Path) -> None:
    out, prof = tmp_path / "r.json", tmp_path / "prof"
    argv = ["bench", "selection", "--superpixels", "1500", "--dim", "16", "--bank", "40", "--classes", "3",
            "--budget-fraction", "0.02", "--engine", "torch", "--no-warm", "--json", str(out), "--profile", str(prof)]
    assert _run(argv) == 0
    r = json.loads(out.read_text())
    trace = json.loads((prof / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert set(r["stages"]) <= names  # one named range per stage, named as in the JSON
    assert set(r["peak_memory_mib"]) == set(r["stages"]) and min(r["peak_memory_mib"].values()) > 0
    assert r["profiled"] is True and "--profile" in r["command"]


def test_scoring_json_and_stages(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    argv = ["bench", "scoring", "--images", "3", "--size", "64x128", "--backbone", "resnet18", "--batch-size", "2",
            "--regions", "32", "--superpixels", "grid", "--distinct", "2", "--json", str(out)]
    assert _run(argv) == 0
    r = json.loads(out.read_text())
    assert {"images", "seconds", "images_per_second", "superpixels_per_second", "stages", "machine", "command"} <= set(r)
    assert set(r["stages"]) == {"load", "forward", "pool"} and r["seconds"] >= sum(r["stages"].values()) * 0.99
    assert r["images"] == 3 and r["distinct_images"] == 2
    assert r["superpixels_scored"] == 3 * 32  # a 4 x 8 grid on every image
    assert r["superpixels_per_second"] == pytest.approx(96 / r["seconds"])


def test_grid_regions_are_near_square_and_cover_the_image() -> None:
    from fastal.testing import grid_regions

    g = grid_regions(1024, 2048, 2000)
    assert int(g.max()) + 1 == 32 * 62 and g.shape == (1024, 2048)  # 32 x 33-34 pixel cells
    sizes = g.flatten().bincount()
    assert sizes.min() >= 32 * 33 and sizes.max() <= 32 * 34


def test_scoring_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.json"
    assert _run(["bench", "scoring", "--images", "0", "--json", str(out)]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert _run(["bench", "scoring", "--superpixels", "slic", "--json", str(out)]) == 2
    assert "--superpixels 'slic'" in capsys.readouterr().err
    assert not out.exists()
