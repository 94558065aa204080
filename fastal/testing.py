"""Inputs and checks for tests and benchmarks: a synthetic scored pool with a memory bank
(:func:`synthetic_selection_inputs`), grid regions standing in for superpixels
(:func:`grid_regions`), and whether two run directories hold the same run
(:func:`run_differences`). Deterministic for a seed; nothing here is used by a run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fastal.atomic import read_json
from fastal.select.scoring import PoolScores, with_pool_statistics


def synthetic_selection_inputs(
    superpixels: int, dim: int, bank: int, classes: int, seed: int, device: torch.device | str
) -> tuple[PoolScores, torch.Tensor, torch.Tensor]:
    """(PoolScores, bank features (classes*bank, dim), bank labels) drawn from one class mixture.

    Class means are random unit vectors; bank entries are L2-normalised noisy copies (like the
    model's projection features); pool rows are noisy means (superpixel means are not unit length).
    Entropy, margin and the predicted-class scores are random (each region's dominant class its
    mixture class); every superpixel is unlabelled.
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1)
    bank_labels = torch.arange(classes).repeat_interleave(bank)
    noise = 0.5 / dim**0.5  # per-coordinate noise: a noise vector of norm ~0.5 around unit means
    bank_feat = torch.nn.functional.normalize(means[bank_labels] + noise * torch.randn(len(bank_labels), dim, generator=g), dim=1)
    pool_labels = torch.randint(classes, (superpixels,), generator=g)
    feats = 0.8 * torch.nn.functional.normalize(means[pool_labels] + noise * torch.randn(superpixels, dim, generator=g), dim=1)
    entropy = torch.rand(superpixels, generator=g) * 100
    margin = torch.rand(superpixels, generator=g)
    pixels = torch.randint(50, 150, (superpixels,), generator=g).float()
    ratio = torch.rand(superpixels, generator=g)
    rows = {"pixels": pixels, "predicted": pool_labels, "impurity": torch.rand(superpixels, generator=g),
            "mean_entropy": entropy / 100, "ratio": ratio,
            "ratio_by_class": torch.nn.functional.one_hot(pool_labels, classes) * (ratio * pixels)[:, None],
            "class_prob": torch.full((classes,), 1 / classes)}  # fmt: skip
    scores = with_pool_statistics(PoolScores(
        features=feats.to(device), entropy=entropy.to(device), margin=margin.to(device),
        gids=np.arange(superpixels, dtype=np.int64), **{k: v.to(device) for k, v in rows.items()},
    ))  # fmt: skip
    return scores, bank_feat.to(device), bank_labels.to(device)


def grid_regions(height: int, width: int, regions: int) -> torch.Tensor:
    """A regular grid of about ``regions`` near-square cells: local ids (H, W) int64, row-major."""
    rows = max(1, round(math.sqrt(regions * height / width)))
    cols = max(1, round(regions / rows))
    r = torch.arange(height) * rows // height
    c = torch.arange(width) * cols // width
    return r[:, None] * cols + c[None, :]


# What a rerun of a cycle does not reproduce: its measurements and the machine it ran on.
MEASURED = ("train_seconds", "select_seconds", "strategy_seconds", "seconds", "stages", "peak_rss_gb", "machine")


def reproducible(results: dict) -> dict:
    """``results`` (a results.json) without its ``setup`` record and each cycle's MEASURED keys."""
    return {**{k: v for k, v in results.items() if k != "setup"},
            "cycles": [{k: v for k, v in c.items() if k not in MEASURED} for c in results["cycles"]]}  # fmt: skip


def run_differences(a: Path, b: Path) -> list[str]:
    """What differs between the run directories ``a`` and ``b`` (empty: the same run): pool.npz's
    arrays, queries.jsonl, results.json's reproducible part, the selection tables, and the last
    cycle's teacher where either run kept its checkpoints."""
    import pandas as pd

    from fastal.select.selection_table import read_table

    found = []
    with np.load(a / "pool.npz") as pa, np.load(b / "pool.npz") as pb:
        found += [f"pool.npz {k}" for k in sorted(set(pa.files) | set(pb.files))
                  if k not in pa.files or k not in pb.files or not np.array_equal(pa[k], pb[k])]  # fmt: skip
    if (a / "queries.jsonl").read_bytes() != (b / "queries.jsonl").read_bytes():
        found.append("queries.jsonl")
    ra, rb = (read_json(d / "results.json") for d in (a, b))
    if reproducible(ra) != reproducible(rb):
        found.append("results.json")
    for table in sorted({p.name for d in (a, b) for p in (d / "selection").glob("*.parquet")}):
        try:
            pd.testing.assert_frame_equal(read_table(a / "selection" / table), read_table(b / "selection" / table))
        except (AssertionError, FileNotFoundError):
            found.append(f"selection/{table}")
    last = f"checkpoints/cycle-{len(ra['cycles'])}.pt"
    if (a / last).exists() or (b / last).exists():
        if not ((a / last).exists() and (b / last).exists()):
            found.append(last)
        else:
            ta, tb = (torch.load(d / last, map_location="cpu", weights_only=True)["teacher"] for d in (a, b))
            found += [f"teacher {k}" for k in sorted(set(ta) | set(tb)) if k not in ta or k not in tb or not torch.equal(ta[k], tb[k])]
    return found
