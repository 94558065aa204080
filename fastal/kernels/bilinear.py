"""Separable bilinear taps of ``F.interpolate(mode="bilinear", align_corners=False)``.

Upsampling is linear and separable: output row ``y`` reads source rows ``i0[y]`` and ``i1[y]`` with
weights ``1 - l1[y]`` and ``l1[y]``, and the same holds for columns. Computing the taps once per
(source size, output size) lets the kernels pool over full-resolution pixels without ever writing
the upsampled map.
"""

from __future__ import annotations

import numpy as np


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and upper weight for each of ``n_out`` output coordinates.

    Follows torch's CPU/CUDA rule in float32: ``src = (dst + 0.5) * n_in / n_out - 0.5``, negative
    ``src`` clamped to 0, ``i0 = min(floor(src), n_in - 1)``, ``i1 = i0 + 1`` except at the last
    source index, ``l1 = clamp(src - i0, 0, 1)``; equal sizes copy. Returns ``(i0 int32 [n_out],
    i1 int32 [n_out], l1 float32 [n_out])``.

    >>> i0, i1, l1 = bilinear_taps(2, 4)
    >>> i0.tolist(), i1.tolist(), l1.tolist()
    ([0, 0, 0, 1], [1, 1, 1, 1], [0.0, 0.25, 0.75, 0.25])
    """
    dst = np.arange(n_out, dtype=np.float32)
    if n_in == n_out or n_out == 0:
        idx = dst.astype(np.int32)
        return idx, idx.copy(), np.zeros(n_out, np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1).astype(np.int32)
    l1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, l1
