"""Region scores of the field's strategies, as functions of per-superpixel tensors.

The inputs come from one scoring pass (:class:`fastal.select.scoring.PoolScores`: a region's
predicted-class histogram, mean pixel p2/p1 and its sums by predicted class); the strategies that
rank by these scores, and the papers they follow, are in :mod:`fastal.select.strategies`. Every
function is elementwise or a (C,) reduction over the pool: no host sync, any device.
"""

from __future__ import annotations

import math

import torch


def predicted_classes(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dominant class (S,) int64, impurity (S,) float32) of per-superpixel predicted-class
    histograms ``counts`` (S, C): the mode (ties: the lower class, as ``np.unique`` + ``argmax``)
    and the histogram's entropy over log C (RIPU's region impurity; 0 log 0 = 0)."""
    counts = counts.float()
    dist = counts / counts.sum(1, keepdim=True).clamp_(min=1)
    impurity = -(dist * torch.log(torch.where(dist > 0, dist, torch.ones_like(dist)))).sum(1)
    return counts.argmax(1), impurity / math.log(max(counts.shape[1], 2))


def class_frequency(predicted: torch.Tensor, pixels: torch.Tensor, classes: int, by: str = "regions") -> torch.Tensor:
    """(C,) float64 share of the regions whose dominant predicted class (``predicted`` (N,)) is each
    class, counted in ``"regions"`` (Cai et al.) or in ``"pixels"`` (``pixels`` (N,); Kim et al.);
    sums to 1 (0s for no regions)."""
    weight = pixels.double() if by == "pixels" else torch.ones_like(pixels, dtype=torch.float64)
    total = torch.zeros(classes, dtype=torch.float64, device=weight.device).index_add_(0, predicted, weight)
    return total / total.sum().clamp_(min=1e-300)


def class_balanced_ratio(ratio: torch.Tensor, low: torch.Tensor, high: torch.Tensor, predicted: torch.Tensor,
                         frequency: torch.Tensor) -> torch.Tensor:
    """Cai et al.'s score: the mean pixel p2/p1 ``ratio`` min-max normalised to [``low``, ``high``],
    times exp(-p) of the region's dominant class ``predicted``, p its ``frequency`` (C,)."""
    norm = (ratio - low) / (high - low).clamp(min=1e-12)
    return norm * torch.exp(-frequency).to(norm.dtype)[predicted]


def pixel_weighted_ratio(ratio_by_class: torch.Tensor, pixels: torch.Tensor, class_prob: torch.Tensor,
                         coeff: float) -> torch.Tensor:
    """MulActSeg's score: the region's mean of p2/p1 x w[argmax] over its pixels, from the pixels'
    summed p2/p1 by predicted class ``ratio_by_class`` (N, C) and the region sizes ``pixels`` (N,);
    w = (``coeff`` x ``class_prob`` + 1)^-2, ``class_prob`` (C,) the pool's mean class probability."""
    weight = (coeff * class_prob.float() + 1.0) ** -2  # (C,)
    return (ratio_by_class @ weight) / pixels.clamp(min=1)
