"""The public kernel API: one function per operation, one signature for every device.

Each function validates its inputs, then dispatches once on the tensors' device to ``cpu.py``
(numba) or ``cuda.py`` (numba.cuda, imported on first CUDA call). Inputs are never modified.
Validation reads ``seg.min()``/``seg.max()``: on a GPU that is one device-to-host sync per call.
No kernel uses atomics: results are deterministic (on the CPU, for a given numba thread count,
which fixes how rows are split into per-thread partial sums).
"""

from __future__ import annotations

import operator
from types import ModuleType
from typing import NamedTuple

import torch

from fastal.errors import FastalError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.uint8, torch.int16, torch.uint16, torch.int32, torch.int64)


def _backend(*tensors: torch.Tensor) -> ModuleType:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise FastalError(f"kernels: inputs must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu":
        from fastal.kernels import cpu

        return cpu
    if device.type == "cuda":
        from fastal.kernels import cuda

        return cuda
    raise FastalError(f"kernels: no implementation for device {device} (use cpu or cuda)")


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise FastalError(f"{name}: dtype {t.dtype} is not a float type (float16/bfloat16/float32/float64)")


def _check_ids(name: str, ids: torch.Tensor, num: int, what: str) -> None:
    if ids.dtype not in INDEX_DTYPES:
        raise FastalError(f"{name}: dtype {ids.dtype} is not an integer id type")
    try:
        num = operator.index(num)
    except TypeError:
        raise FastalError(f"{what} = {num!r} is not an integer") from None
    if num < 0:
        raise FastalError(f"{what} = {num} is negative")
    if ids.numel():
        if ids.device.type == "cpu":  # numpy, not a parallel torch op: see fastal.kernels.cpu._numpy
            flat = ids.detach().numpy()
            low, high = int(flat.min()), int(flat.max())
        else:
            low, high = (int(v) for v in torch.aminmax(ids.reshape(-1).long()))  # device-to-host sync
        if low < 0 or high >= num:
            raise FastalError(f"{name}: ids span [{low}, {high}], outside [0, {what} = {num})")


def _check_segments(values: torch.Tensor, seg: torch.Tensor, num_segments: int, name: str) -> None:
    _check_float(name, values)
    if values.dim() not in (1, 2):
        raise FastalError(f"{name}: expected shape [N] or [N, D], got {list(values.shape)}")
    if seg.dim() != 1 or seg.shape[0] != values.shape[0]:
        raise FastalError(f"seg: expected shape [{values.shape[0]}] to match {name}, got {list(seg.shape)}")
    _check_ids("seg", seg, num_segments, "num_segments")


def segment_sum(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of the rows of each segment: ``out[s] = values[seg == s].sum(0)``.

    Shapes: ``values`` [N, D] or [N] (any float dtype), ``seg`` [N] integer ids in
    ``[0, num_segments)`` -> [num_segments, D] or [num_segments]; empty segments give 0.
    Accumulates and returns float32 (float64 for float64 input). Deterministic.

    >>> values, seg = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([0, 2, 0])
    >>> segment_sum(values, seg, 3).tolist()
    [[6.0, 8.0], [0.0, 0.0], [3.0, 4.0]]
    """
    impl = _backend(values, seg)
    _check_segments(values, seg, num_segments, "values")
    return impl.segment_sum(values, seg, num_segments)


def segment_mean(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of each segment; same shapes and dtypes as :func:`segment_sum`.

    Empty segments give 0. Deterministic. Composed here, for every device, from
    :func:`segment_sum` and the segment sizes (:func:`divide_by_counts`).

    >>> values, seg = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([1, 1, 1])
    >>> segment_mean(values, seg, 2)
    tensor([0., 3.])
    """
    return divide_by_counts(segment_sum(values, seg, num_segments), seg, num_segments)


def divide_by_counts(sums: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``sums`` [num_segments, ...] of a segment reduction, each row divided by its segment's
    size (``bincount`` of ``seg``; an empty segment's row is left as it is, 0 for a sum)."""
    counts = torch.bincount(seg.reshape(-1).long(), minlength=num_segments).clamp_(min=1)  # exact, integers
    return sums / counts.to(sums.dtype).view(-1, *([1] * (sums.dim() - 1)))


def segment_argmax(scores: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Index into ``scores`` of each segment's largest score -> int64 [num_segments].

    ``scores`` [N] any float dtype, ``seg`` [N]. Ties go to the lowest index, NaN counts as the
    largest value (as in ``torch.argmax``), an empty segment gives -1. Deterministic.

    >>> scores, seg = torch.tensor([0.5, 0.9, 0.9, 0.1]), torch.tensor([0, 0, 0, 2])
    >>> segment_argmax(scores, seg, 3)
    tensor([ 1, -1,  3])
    """
    impl = _backend(scores, seg)
    if scores.dim() != 1:
        raise FastalError(f"scores: expected shape [N], got {list(scores.shape)}")
    _check_segments(scores, seg, num_segments, "scores")
    return impl.segment_argmax(scores, seg, num_segments)


def _check_maps(name: str, maps: torch.Tensor, sp: torch.Tensor, num_sp: int) -> None:
    _check_float(name, maps)
    if maps.dim() != 4:
        raise FastalError(f"{name}: expected shape [B, D, h, w], got {list(maps.shape)}")
    if sp.dim() != 3 or sp.shape[0] != maps.shape[0]:
        raise FastalError(f"sp: expected shape [{maps.shape[0]}, H, W] to match {name}, got {list(sp.shape)}")
    if min(maps.shape[2:]) < 1 and sp.numel():
        raise FastalError(f"{name}: empty spatial size {list(maps.shape[2:])} cannot be upsampled")
    _check_ids("sp", sp, num_sp, "num_sp")


def superpixel_mean_features(feat: torch.Tensor, sp: torch.Tensor, num_sp: int) -> torch.Tensor:
    """Per-superpixel mean of ``feat`` bilinearly upsampled to ``sp``'s size -> float32 [num_sp, D].

    ``feat`` [B, D, h, w] (any float dtype), ``sp`` [B, H, W] integer superpixel ids in
    ``[0, num_sp)``. Equals ``F.interpolate(feat, (H, W), mode="bilinear", align_corners=False)``
    followed by a per-superpixel mean, but never builds the upsampled map: every full-resolution
    pixel spreads its four bilinear weights over low-resolution cells. Empty superpixels give 0.
    Accumulates in float32 (cell weights in float64 on the CPU). Deterministic.

    >>> feat, sp = torch.randn(1, 128, 45, 60), torch.randint(0, 700, (1, 360, 480))
    >>> superpixel_mean_features(feat, sp, 700).shape
    torch.Size([700, 128])
    """
    impl = _backend(feat, sp)
    _check_maps("feat", feat, sp, num_sp)
    return impl.superpixel_mean_features(feat, sp, num_sp)


class PredictionStats(NamedTuple):
    """Per-superpixel sums over the softmax of upsampled logits (:func:`superpixel_prediction_stats`)."""

    entropy: torch.Tensor  # (S,) float32: summed base-2 pixel entropy
    counts: torch.Tensor  # (S, C) int32: pixels by predicted class (the histogram of the argmax)
    ratio: torch.Tensor  # (S, C) float32: summed p2/p1 (second-best over best) of the pixels predicted as each class


def superpixel_prediction_stats(logits: torch.Tensor, sp: torch.Tensor, num_sp: int) -> PredictionStats:
    """What each superpixel's pixels predict, in one fused pass over upsampled ``logits``.

    ``logits`` [B, C, h, w] (any float dtype), ``sp`` [B, H, W] ids in ``[0, num_sp)``. For each
    full-resolution pixel the C logits are interpolated (``align_corners=False``) and softmaxed;
    its superpixel gains the pixel's base-2 entropy (``entropy`` [S]), one count for its predicted
    class (``counts`` [S, C], the argmax, ties to the lower class) and its ratio p2/p1 of
    second-best to best probability, in the column of its predicted class (``ratio`` [S, C]).
    No full-resolution map is written. ``counts.sum(1)`` is the superpixel's size,
    ``ratio.sum(1) / size`` its mean ratio, ``ratio @ w / size`` its mean ratio with each pixel
    weighted by ``w`` of its predicted class. Accumulates in float32 (float64 per-thread totals on
    the CPU); the CUDA kernel holds 2 x C floats per thread in shared memory (C <= 5120).
    Deterministic.

    >>> logits = torch.tensor([1.0, 3.0]).log().view(1, 2, 1, 1).expand(1, 2, 2, 2)  # p = [1/4, 3/4]
    >>> superpixel_prediction_stats(logits, torch.zeros(1, 4, 4, dtype=torch.int64), 1).ratio
    tensor([[0.0000, 5.3333]])
    """
    impl = _backend(logits, sp)
    _check_maps("logits", logits, sp, num_sp)
    return PredictionStats(*impl.superpixel_prediction_stats(logits, sp, num_sp))


def superpixel_entropy_sum(logits: torch.Tensor, sp: torch.Tensor, num_sp: int) -> torch.Tensor:
    """Per-superpixel sum of the base-2 softmax entropy of upsampled ``logits`` -> float32 [num_sp].

    ``logits`` [B, C, h, w] (any float dtype), ``sp`` [B, H, W] ids in ``[0, num_sp)``: the
    ``entropy`` of :func:`superpixel_prediction_stats` (composed here, for every device).
    Deterministic.

    >>> logits, sp = torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 8, dtype=torch.int64)
    >>> superpixel_entropy_sum(logits, sp, 1)  # 64 pixels of uniform 4-way softmax: 2 bits each
    tensor([128.])
    """
    return superpixel_prediction_stats(logits, sp, num_sp).entropy
