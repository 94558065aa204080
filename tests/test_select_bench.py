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
