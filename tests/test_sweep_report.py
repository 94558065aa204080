"""`fastal report SWEEP_DIR`: mean ± std per strategy and budget, paired differences to a baseline
with standard errors and seeds ahead/behind, ratio to full, checked by hand on a made-up
cycles.parquet (3 strategies x 3 seeds x 2 budgets, and a second setting axis)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from fastal.sweep.report import load_cycles, load_sweeps, paired, summary
from fastal.cli import main

STRATEGIES, SEEDS, BUDGETS, LABELS = ["contrastive", "random", "entropy"], [0, 1, 2], [1.0, 2.0], ["full", "dominant"]


def miou(strategy: str, seed: int, budget: float, labels: str) -> float:
    return 0.1 * budget + 0.01 * STRATEGIES.index(strategy) - 0.003 * seed**2 + 0.02 * (labels == "full")


def full(seed: int, labels: str) -> float:
    return 0.5 + 0.01 * seed


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    rows = [
        {"run": f"strategy={st},seed={s},labels={lab}", "strategy": st, "seed": s, "labels": lab, "cycle": k + 1,
         "budget_pct": b, "pixel_pct": b + 0.01 * s, "superpixels": 1, "clicks": 1, "miou": miou(st, s, b, lab),
         "full_miou": full(s, lab), "train_seconds": 1.0, "select_seconds": 0.0, "seconds": 1.0}
        for st in STRATEGIES for s in SEEDS for lab in LABELS for k, b in enumerate(BUDGETS)
    ]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "cycles.parquet", index=False)
    axes = {"strategy": STRATEGIES, "seed": SEEDS, "labels": LABELS}
    (tmp_path / "sweep.json").write_text(json.dumps({"sweep_file": "s.toml", "config": {}, "axes": axes}))
    return tmp_path


def test_summary_and_paired_by_hand(sweep_dir: Path) -> None:
    df, settings = load_cycles(sweep_dir)
    assert settings == ["labels"]
    summ = summary(df, settings)
    assert len(summ) == len(STRATEGIES) * len(LABELS) * len(BUDGETS)
    for r in summ.itertuples():
        values = [miou(r.strategy, s, r.budget_pct, r.labels) for s in SEEDS]
        ratios = [miou(r.strategy, s, r.budget_pct, r.labels) / full(s, r.labels) for s in SEEDS]
        assert r.n == 3
        assert r.miou_mean == pytest.approx(statistics.mean(values))
        assert r.miou_std == pytest.approx(statistics.stdev(values))
        assert r.ratio_mean == pytest.approx(statistics.mean(ratios))
        assert r.ratio_std == pytest.approx(statistics.stdev(ratios))
        assert r.pixel_pct == pytest.approx(r.budget_pct + 0.01)
    pair = paired(df, settings, "entropy")
    assert sorted(set(pair["strategy"])) == ["contrastive", "random"]
    for r in pair.itertuples():
        diffs = [miou(r.strategy, s, r.budget_pct, r.labels) - miou("entropy", s, r.budget_pct, r.labels)
                 for s in SEEDS]  # fmt: skip
        assert r.n == 3 and r.diff_mean == pytest.approx(statistics.mean(diffs))
        assert r.diff_std == pytest.approx(statistics.stdev(diffs), abs=1e-12)
        assert r.diff_se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3), abs=1e-12)
        assert (r.ahead, r.behind) == (sum(d > 1e-12 for d in diffs), sum(d < -1e-12 for d in diffs))


def test_paired_counts_seeds_ahead_and_behind(sweep_dir: Path) -> None:
    df, settings = load_cycles(sweep_dir)
    # random beats contrastive by 0.01 on seeds 0 and 1; on seed 2 contrastive leads by 0.05.
    df.loc[(df["strategy"] == "random") & (df["seed"] == 2), "miou"] -= 0.06
    r = paired(df, settings, "contrastive").query("strategy == 'random' and labels == 'full' and budget_pct == 2.0")
    assert (int(r["ahead"].iloc[0]), int(r["behind"].iloc[0]), int(r["n"].iloc[0])) == (2, 1, 3)
    assert float(r["diff_mean"].iloc[0]) == pytest.approx((0.01 + 0.01 - 0.05) / 3)


def test_report_cli_on_a_sweep_dir(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    png, js = tmp_path / "r.png", tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), "--out", str(png), "--json", str(js), "--markdown"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert data["baseline"] == "random" and len(data["paired"]) == 2 * len(LABELS) * len(BUDGETS)
    # The markdown row of contrastive with full labels: mean ± std (ratio) per budget.
    row = next(line for line in out.splitlines() if line.startswith("| labels=full, contrastive |"))
    for b in BUDGETS:
        values = [miou("contrastive", s, b, "full") for s in SEEDS]
        ratio = statistics.mean(v / full(s, "full") for s, v in zip(SEEDS, values))
        assert f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({100 * ratio:.0f} %)" in row
    fulls = [full(s, "full") for s in SEEDS]
    assert f"| labels=full, fully supervised | {statistics.mean(fulls):.3f} ± {statistics.stdev(fulls):.3f} |" in out
    diffs = [miou("contrastive", s, 2.0, "dominant") - miou("random", s, 2.0, "dominant") for s in SEEDS]
    section = out.split("minus random, seed by seed")[1]
    line = next(line for line in section.splitlines() if line.startswith("| labels=dominant, contrastive |"))
    assert line.endswith(f"{statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs) / math.sqrt(3):.3f}, 0/3 |")


def test_report_bad_baseline_and_options(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), "--baseline", "clever", "--out", str(tmp_path / "r.png")])
    assert e.value.code == 2 and "--baseline clever: no such strategy (contrastive, random, entropy)" in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nothing"), "--baseline", "random"])
    assert e.value.code == 2 and "--baseline: only for sweep directories" in capsys.readouterr().err


def _ablation(where: Path, sweep_dir: Path, axes: dict, shift: float = -0.02, full_miou: float | None = None) -> Path:
    """A second sweep of contrastive alone, ``shift`` from the first on every seed; references of
    ``full_miou`` (None: none)."""
    df = pd.read_parquet(sweep_dir / "cycles.parquet").query("strategy == 'contrastive'").copy()
    df["miou"] += shift
    df["full_miou"] = float("nan") if full_miou is None else full_miou
    where.mkdir(parents=True)
    df.to_parquet(where / "cycles.parquet", index=False)
    (where / "sweep.json").write_text(json.dumps({"sweep_file": "l.toml", "config": {}, "axes": axes}))
    return where


AXES = {"strategy": ["contrastive"], "seed": SEEDS, "labels": LABELS}


def test_two_sweeps_pair_an_ablation_with_the_main_sweep(sweep_dir: Path, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ablation = _ablation(tmp_path / "lambda0", sweep_dir, AXES)
    df, settings = load_sweeps([sweep_dir, ablation])
    assert settings == ["labels"]
    assert set(df["strategy"]) == {*STRATEGIES, "contrastive @ lambda0"}
    pair = paired(df, settings, "contrastive").query("strategy == 'contrastive @ lambda0'")
    assert len(pair) == len(LABELS) * len(BUDGETS)
    assert (pair["n"] == 3).all() and (pair["behind"] == 3).all()
    assert pair["diff_mean"].to_numpy() == pytest.approx(-0.02) and pair["diff_se"].abs().max() < 1e-12
    js = tmp_path / "r.json"
    monkeypatch.chdir(tmp_path)  # the JSON names the sweeps relative to the working directory
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), str(ablation), "--baseline", "contrastive", "--json", str(js),
              "--out", str(tmp_path / "r.png"), "--markdown"])  # fmt: skip
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "| labels=full, contrastive @ lambda0 | -0.020 ± 0.000, 0/3 | -0.020 ± 0.000, 0/3 |" in out
    assert json.loads(js.read_text())["sweeps"] == [".", "lambda0"]


def test_sweeps_that_cross_other_axes_or_runs_are_refused(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    other = _ablation(tmp_path / "lambda0", sweep_dir, {"strategy": ["contrastive"], "seed": SEEDS})
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), str(other), "--out", str(tmp_path / "r.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{other} crosses no axis besides strategy and seed, {sweep_dir} crosses labels" in err
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), str(run)])
    assert e.value.code == 2 and f"{run}: not a sweep directory (no sweep.json), unlike {sweep_dir}" in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()


def test_three_sweeps_each_with_its_own_references(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    a = _ablation(tmp_path / "a" / "lambda0", sweep_dir, AXES, -0.02)
    b = _ablation(tmp_path / "b" / "lambda1", sweep_dir, AXES, -0.05, full_miou=0.9)
    df, settings = load_sweeps([sweep_dir, a, b])
    assert set(df["strategy"]) == {*STRATEGIES, "contrastive @ lambda0", "contrastive @ lambda1"}
    pair = paired(df, settings, "contrastive")
    for name, shift in (("contrastive @ lambda0", -0.02), ("contrastive @ lambda1", -0.05)):
        rows = pair[pair["strategy"] == name]
        assert (rows["n"] == 3).all() and rows["diff_mean"].to_numpy() == pytest.approx(shift)
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), str(a), str(b), "--out", str(tmp_path / "r.png"), "--markdown"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    fulls = [full(s, "full") for s in SEEDS]
    assert f"| labels=full, fully supervised | {statistics.mean(fulls):.3f} ± {statistics.stdev(fulls):.3f} |" in out
    assert "| labels=full, fully supervised @ lambda1 | 0.900 ± 0.000 |" in out
    assert "fully supervised @ lambda0" not in out  # it has none
    ratio = statistics.mean((miou("contrastive", s, 2.0, "full") - 0.05) / 0.9 for s in SEEDS)
    assert f"({100 * ratio:.0f} %) |" in next(line for line in out.splitlines() if "full, contrastive @ lambda1" in line)


def test_sweeps_that_cannot_be_paired_are_named(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    a = _ablation(tmp_path / "a" / "lambda0", sweep_dir, AXES)
    b = _ablation(tmp_path / "b" / "lambda0", sweep_dir, AXES)
    numbered = _ablation(tmp_path / "numbered", sweep_dir, AXES)
    df = pd.read_parquet(numbered / "cycles.parquet")
    df["budget_pct"] = float("nan")  # cycles without a planned budget: keyed by cycle number
    df.to_parquet(numbered / "cycles.parquet", index=False)
    for dirs, message in (
        ([sweep_dir, a, b], f"{a} and {b}: two sweeps named lambda0; rename one"),
        ([sweep_dir, a, a], f"{a}: given twice"),
        ([sweep_dir, numbered], f"{numbered} keys its cycles by cycle numbers, {sweep_dir} by % of pixels"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["report", *map(str, dirs), "--out", str(tmp_path / "r.png")])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()
