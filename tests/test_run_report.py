"""`fastal report` on hand-made run directories: mean ± std over seeds checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fastal.cli import main
from fastal.errors import FastalError
from fastal.machine import machine_info
from fastal.run_report import group_runs, read_results


def fake_run(root: Path, name: str, strategy: str, seed: int, mious: list[float], full: float | None) -> Path:
    d = root / name
    d.mkdir()
    cycles = [
        {
            "cycle": i + 1,
            "labelled_superpixels": 10 * (i + 1),
            "labelled_pixel_fraction": 0.01 * (i + 1) + 0.001 * seed,
            "cost_clicks": 10 * (i + 1),
            "miou": m,
            "per_class_iou": [m, m],
            "train_seconds": 1.0,
            "select_seconds": 0.5,
        }
        for i, m in enumerate(mious)
    ]
    res = {"dataset": "synthetic", "strategy": strategy, "seed": seed, "full_miou": full, "cycles": cycles}
    (d / "results.json").write_text(json.dumps(res))
    return d


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        fake_run(tmp_path, "r0", "random", 0, [0.2, 0.5], 0.8),
        fake_run(tmp_path, "r1", "random", 1, [0.4, 0.6], 0.6),
        # stopped one cycle early: cycle 2 of contrastive averages one run only
        fake_run(tmp_path, "c0", "contrastive", 0, [0.3, 0.7], 0.5),
        fake_run(tmp_path, "c1", "contrastive", 1, [0.5], None),
    ]


def test_mean_and_sample_std_by_hand(runs: list[Path]) -> None:
    g_rand, g_con = group_runs(runs)
    assert (g_rand.strategy, g_con.strategy) == ("random", "contrastive")
    assert g_rand.seeds == [0, 1]
    # random, cycle 1: (0.2 + 0.4) / 2 = 0.3; sample std = sqrt((0.1² + 0.1²) / 1) = 0.14142
    cyc, x, m, s, n = g_rand.points[0]
    assert (cyc, n) == (1, 2)
    assert x == pytest.approx((1.0 + 1.1) / 2)
    assert m == pytest.approx(0.3)
    assert s == pytest.approx(math.sqrt(0.02))
    assert g_rand.points[1][2:] == pytest.approx((0.55, math.sqrt(0.005), 2))
    assert g_rand.full_miou == pytest.approx((0.7, math.sqrt(0.02), 2))
    assert g_con.full_miou == (0.5, 0.0, 1)  # only one of the two runs trained the reference
    assert g_con.points[0][2:4] == pytest.approx((0.4, math.sqrt(0.02)))
    assert g_con.points[1][2:] == pytest.approx((0.7, 0.0, 1))


def test_cli_writes_plot_and_json(runs: list[Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    out, js = tmp_path / "rep.png", tmp_path / "rep.json"
    monkeypatch.chdir(tmp_path.parent)  # the JSON names the runs relative to the working directory
    with pytest.raises(SystemExit) as e:
        main(["report", *map(str, runs), "--out", str(out), "--json", str(js)])
    assert e.value.code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    names = " ".join(f"{tmp_path.name}/{r.name}" for r in runs)
    assert data["command"] == f"fastal report {names} --out {tmp_path.name}/rep.png --json {tmp_path.name}/rep.json"
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"]
    rand = data["groups"][0]
    assert rand["strategy"] == "random" and rand["runs"] == [f"{tmp_path.name}/r0", f"{tmp_path.name}/r1"]
    assert rand["points"][0]["miou_mean"] == pytest.approx(0.3)
    assert rand["points"][0]["miou_std"] == pytest.approx(math.sqrt(0.02))
    assert rand["full_miou"]["mean"] == pytest.approx(0.7)
    err = capsys.readouterr().err
    assert "0.300 ± 0.141 (n=2)" in err
    full_row = next(line for line in err.splitlines() if "full" in line)
    assert "0.700 ± 0.141 (n=2)" in full_row and "0.500" in full_row and "0.500 ±" not in full_row
    assert data["groups"][1]["full_miou"] == {"mean": 0.5, "std": 0.0, "n": 1}


def test_missing_results_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path), "--out", str(tmp_path / "r.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "results.json: not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.png").exists()


def test_bad_results_named(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"dataset": "x"}')
    with pytest.raises(FastalError, match="missing key 'strategy'"):
        group_runs([tmp_path])


def test_a_cycles_machine_is_read_when_whole_and_named_when_not(runs: list[Path]) -> None:
    # runs[0] records none (older runs): read as before.
    res = json.loads((runs[1] / "results.json").read_text())
    res["cycles"][0]["machine"] = machine_info()
    (runs[1] / "results.json").write_text(json.dumps(res))
    assert read_results(runs[1])["cycles"][0]["machine"] == machine_info()
    for damaged in ("laptop", {"cpu": "x"}):
        res["cycles"][1]["machine"] = damaged
        (runs[1] / "results.json").write_text(json.dumps(res))
        with pytest.raises(FastalError, match=r"results.json: cycle 2: machine = .*, expected the record fastal"):
            group_runs(runs)


def test_an_unwritable_json_target_stops_before_the_plot_is_written(runs: list[Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["report", *map(str, runs), "--out", str(tmp_path / "new.png"), "--json", str(tmp_path / "taken")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "taken: it is a directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new.png").exists()
