"""experiments/engine_check.py: the new engine's runs paired with the previous table's, by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("engine_check", ROOT / "experiments" / "engine_check.py")
engine_check = sys.modules["engine_check"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_check)


def test_pairs_by_seed_and_budget_against_a_hand_computed_case() -> None:
    previous = engine_check.previous_runs({"runs": [
        {"strategy": "contrastive", "seed": 0, "cycles": [{"budget_pct": 1.0, "miou": 0.30}, {"budget_pct": 2.0, "miou": 0.33}]},
        {"strategy": "contrastive", "seed": 1, "cycles": [{"budget_pct": 1.0, "miou": 0.31}, {"budget_pct": 2.0, "miou": 0.35}]},
        {"strategy": "random", "seed": 0, "cycles": [{"budget_pct": 1.0, "miou": 0.99}]},  # not paired
    ]})  # fmt: skip
    assert len(previous) == 4
    new = pd.DataFrame({"seed": [0, 0, 1, 1, 2], "budget_pct": [1.0, 2.0, 1.0, 2.0, 2.0],
                        "miou": [0.30, 0.36, 0.31, 0.34, 0.50], "strategy": "contrastive"})  # seed 2: no partner
    out = engine_check.engine_pairs(new, previous).set_index("budget_pct")
    assert out.loc[1.0, "diff_mean"] == pytest.approx(0.0) and out.loc[1.0, "n"] == 2
    # 2 %: +0.03 and -0.01: mean +0.01, sample std 0.02828, se 0.02, one seed ahead, one behind
    assert out.loc[2.0, "diff_mean"] == pytest.approx(0.01)
    assert out.loc[2.0, "diff_se"] == pytest.approx(0.02)
    assert (out.loc[2.0, "ahead"], out.loc[2.0, "behind"], out.loc[2.0, "n"]) == (1, 1, 2)
    assert set(out["strategy"]) == {engine_check.NEW}


def test_a_missing_sweep_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert engine_check.main([str(tmp_path / "nothing"), "--json", str(tmp_path / "out.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "out.json").exists()
