"""Inputs for tests and benchmarks: a synthetic scored pool with a memory bank
(:func:`synthetic_selection_inputs`) and grid regions standing in for superpixels
(:func:`grid_regions`). Deterministic for a seed; nothing here is used by a run."""

from __future__ import annotations

import math

import numpy as np
import torch

from fastal.select.scoring import PoolScores


def synthetic_selection_inputs(
    superpixels: int, dim: int, bank: int, classes: int, seed: int, device: torch.device | str
) -> tuple[PoolScores, torch.Tensor, torch.Tensor]:
    """(PoolScores, bank features (classes*bank, dim), bank labels) drawn from one class mixture.

    Class means are random unit vectors; bank entries are L2-normalised noisy copies (like the
    model's projection features); pool rows are noisy means (superpixel means are not unit length).
    Entropy and margin are random; every superpixel is unlabelled.
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
    scores = PoolScores(
        features=feats.to(device), entropy=entropy.to(device), margin=margin.to(device),
        gids=np.arange(superpixels, dtype=np.int64),
    )  # fmt: skip
    return scores, bank_feat.to(device), bank_labels.to(device)


def grid_regions(height: int, width: int, regions: int) -> torch.Tensor:
    """A regular grid of about ``regions`` near-square cells: local ids (H, W) int64, row-major."""
    rows = max(1, round(math.sqrt(regions * height / width)))
    cols = max(1, round(regions / rows))
    r = torch.arange(height) * rows // height
    c = torch.arange(width) * cols // width
    return r[:, None] * cols + c[None, :]
