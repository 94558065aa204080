"""Plain-torch versions of the kernels: the tests' second opinion and the benchmark's baseline.

They build what the real kernels avoid (the upsampled full-resolution map) and use torch's own
scatter ops (``index_add_``, ``scatter_reduce_``); same signatures and results as the public API.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def segment_sum(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``out[s] = sum(values[seg == s])`` via ``index_add_``; float32 (float64 for float64 input)."""
    dtype = _acc_dtype(values.dtype)
    out = torch.zeros((num_segments, *values.shape[1:]), dtype=dtype, device=values.device)
    return out.index_add_(0, seg.long(), values.to(dtype))


def segment_mean(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of each segment's rows; empty segments give 0."""
    counts = torch.bincount(seg.long(), minlength=num_segments).clamp_(min=1)
    total = segment_sum(values, seg, num_segments)
    return total / counts.view(-1, *([1] * (total.dim() - 1))).to(total.dtype)


def segment_argmax(scores: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Index of each segment's largest score (lowest index on ties, NaN largest); -1 when empty."""
    seg = seg.long()
    n = scores.shape[0]
    # NaN ranks above everything, as in torch.argmax: map it to +inf and flag it.
    key = scores.double()
    is_nan = torch.isnan(key)
    key = torch.where(is_nan, torch.full_like(key, math.inf), key)
    best = torch.full((num_segments,), -math.inf, dtype=torch.float64, device=scores.device)
    best.scatter_reduce_(0, seg, key, reduce="amax")
    any_nan = torch.zeros(num_segments, dtype=torch.bool, device=scores.device)
    any_nan.index_put_((seg,), is_nan, accumulate=True)
    winner = (key == best[seg]) & (is_nan == any_nan[seg])
    index = torch.arange(n, device=scores.device)
    out = torch.full((num_segments,), n, dtype=torch.int64, device=scores.device)
    out.scatter_reduce_(0, seg[winner], index[winner], reduce="amin")
    return torch.where(out == n, torch.full_like(out, -1), out)


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


def superpixel_mean_features(feat: torch.Tensor, sp: torch.Tensor, num_sp: int) -> torch.Tensor:
    """Upsample ``feat`` (B, D, h, w) to ``sp``'s (H, W), then average per superpixel -> (num_sp, D)."""
    up = _upsample(feat, tuple(sp.shape[-2:]))  # (B, D, H, W)
    rows = up.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])  # (B*H*W, D)
    return segment_mean(rows, sp.reshape(-1), num_sp)


def superpixel_prediction_stats(logits: torch.Tensor, sp: torch.Tensor, num_sp: int) -> tuple[torch.Tensor, ...]:
    """Upsample ``logits`` (B, C, h, w), softmax per pixel; per superpixel the summed base-2 entropy
    (S,), the pixels by predicted class (S, C) int32 and their summed p2/p1 by predicted class (S, C)."""
    classes = logits.shape[1]
    logp = torch.log_softmax(_upsample(logits, tuple(sp.shape[-2:])), dim=1)  # (B, C, H, W)
    entropy = -(logp.exp() * logp).sum(dim=1) / math.log(2.0)  # (B, H, W)
    top = torch.topk(logp, min(2, classes), dim=1).values  # (B, k, H, W)
    ratio = (top[:, 1] - top[:, 0]).exp() if classes > 1 else torch.zeros_like(entropy)
    predicted = logp.argmax(dim=1)  # ties to the lower class
    cell = sp.reshape(-1).long() * classes + predicted.reshape(-1)  # (superpixel, predicted class)
    counts = torch.bincount(cell, minlength=num_sp * classes).view(num_sp, classes).int()
    ratios = segment_sum(ratio.reshape(-1), cell, num_sp * classes).view(num_sp, classes)
    return segment_sum(entropy.reshape(-1), sp.reshape(-1), num_sp), counts, ratios


def superpixel_entropy_sum(logits: torch.Tensor, sp: torch.Tensor, num_sp: int) -> torch.Tensor:
    """Upsample ``logits`` (B, C, h, w), base-2 softmax entropy per pixel, sum per superpixel."""
    return superpixel_prediction_stats(logits, sp, num_sp)[0]
