"""experiments/probe_selection.py end to end on a tiny synthetic run (every kept checkpoint), and
its metrics against hand-computed cases."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from fastal.config import make_config
from fastal.machine import portable_path
from fastal.loop import run_experiment
from fastal.select import CLUSTER_STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("probe_selection", ROOT / "experiments" / "probe_selection.py")
probe = sys.modules["probe_selection"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

# 8 images 32x48, ~12 superpixels each: a random 25 %, then one cycle of 8 %; every checkpoint kept.
TINY = {
    "dataset": "synthetic", "train_images": 8, "val_images": 4, "image_size": [32, 48], "superpixels": 12,
    "initial": 25.0, "budget_per_cycle": 8.0, "cycles": 1, "epochs": 1, "batch_size": 8,
    "full_reference": False, "device": "cpu", "strategy": "contrastive", "seed": 3, "labels": "dominant",
    "keep_checkpoints": True,
}  # fmt: skip


def test_metrics_on_hand_computed_cases() -> None:
    assert probe.jaccard(np.array([1, 2, 3]), np.array([3, 2, 1])) == 1.0
    assert probe.jaccard(np.array([1, 2, 3]), np.array([3, 4])) == 0.25
    # Clusters {0,1,2} and {3,4}: majorities 2 of 3 and 2 of 2.
    assert probe.purity(np.array([0, 0, 1, 2, 2]), np.array([5, 5, 5, 7, 7])) == 0.8


def test_probe_of_a_tiny_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_experiment(make_config({**TINY, "cache_dir": str(tmp_path / "cache")}), run)
    out = tmp_path / "probe.json"
    assert probe.main([str(run), "--cycles", "all", "--anchor-batches", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["machine"]["cores"] >= 1 and doc["command"].endswith(f"--json {portable_path(out)}")
    probes = doc["probes"]
    assert [p["cycle"] for p in probes] == [1, 2]
    num_classes = len(probes[0]["classes"])
    for p in probes:
        ov = p["overlap"]
        assert all(0.0 <= j <= 1.0 for j in ov["jaccard"].values())
        # The loop's own path: entropy keeps picking until the budget's pixels are reached; the
        # clustering strategies (cluster_budget = "fit", the default) stop at or below them.
        for s, px in ov["pixels"].items():
            assert px <= p["budget"]["pixels"] if s in CLUSTER_STRATEGIES else px >= p["budget"]["pixels"], s
        for name, r in p["representations"].items():
            for key in ("purity", "nmi", "purity_shuffled", "nmi_shuffled", "knn_labelled"):
                assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
            assert (r["knn_bank"] is None) == (name in ("fresh_head", "softmax"))
        dims = {name: r["dims"] for name, r in p["representations"].items()}
        assert dims == {"umap": 2, "raw": 128, "fresh_head": 128, "softmax": num_classes}
        assert 0.0 < p["majority"] <= 1.0
        classes = p["classes"]
        assert sum(c["labelled_regions"] for c in classes) <= p["labelled_regions"]
        assert sum(c["unlabelled_regions"] for c in classes) == p["scored_regions"]
        for s in probe.STRATEGIES:  # picks of all-ignore regions have no class
            assert sum(c[f"picked_{s}"] for c in classes) <= ov["regions"][s]
        for c in classes:
            assert c["bank_entries"] >= 0
            if c["bank_entries"]:
                assert 0 <= c["age_mean"] <= c["age_max"] < p["bank_pushes"]
            assert 0 <= c["anchors_per_batch"] <= 50
    # Re-selecting with the run's strategy from checkpoint 1 gives what the run queried in cycle 2.
    assert [p["overlap"]["matches_run"] for p in probes] == [True, None]
