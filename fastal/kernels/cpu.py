"""CPU implementations: numba ``njit(parallel=True)`` kernels behind the public signatures.

Inputs arrive validated (``fastal.kernels.ops``). Work is split without races: segment sums give
each thread a private (S, D) accumulator over its chunk of rows (or, when S is close to N, own
whole segments through a counting sort); the argmax and the feature pooling walk each segment's
elements in counting-sort order, one thread per segment; the softmax kernel (entropy, predicted classes) gives every thread
private rows of per-superpixel sums. Results are deterministic for a fixed thread count.
numba has no fp16/bf16 arithmetic on the CPU, so half inputs are converted to float32 first (one
pass over the input; for the superpixel functions that input is the small low-resolution map).
"""

from __future__ import annotations

import math
import os

import numba as nb
import numpy as np
import torch

from fastal.kernels.bilinear import bilinear_taps
from fastal.kernels.scalar import argmax_better

# numba's default pick here, GNU OpenMP, is much slower than the workqueue layer on a loaded
# machine (every parallel region waits on threads spinning in torch's and numba's two OpenMP
# runtimes), and GNU OpenMP is not fork-safe while fastal forks workers. "forksafe" takes
# TBB when installed, else workqueue. It must be set before numba's first parallel launch in the
# process; a NUMBA_THREADING_LAYER set by the user wins. Caveat of workqueue: do not call these
# kernels from several Python threads at once.
if "NUMBA_THREADING_LAYER" not in os.environ:
    nb.config.THREADING_LAYER = "forksafe"

_better = nb.njit(inline="always", cache=True)(argmax_better)
# Below this many input elements one thread beats waking the thread pool (on a loaded machine
# the wake-up takes longer than the work).
_PARALLEL_MIN_WORK = 1 << 20


@nb.njit(parallel=True, cache=True)
def _csr(seg, num_segments, nt):  # pragma: no cover - compiled
    """Stable counting sort: ``perm[indptr[s]:indptr[s+1]]`` are the indices i with seg[i] == s, ascending.

    ``nt`` chunks of ``seg`` are counted and placed in parallel.
    """
    n = seg.shape[0]
    chunk = (n + nt - 1) // nt
    hist = np.zeros((nt, num_segments), np.int64)
    for t in nb.prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            hist[t, seg[i]] += 1
    # Thread t writes its elements of segment s after those of threads < t: stable and race-free.
    indptr = np.empty(num_segments + 1, np.int64)
    total = 0
    for s in range(num_segments):
        indptr[s] = total
        for t in range(nt):
            count = hist[t, s]
            hist[t, s] = total
            total += count
    indptr[num_segments] = total
    perm = np.empty(n, np.int64)
    for t in nb.prange(nt):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            s = seg[i]
            perm[hist[t, s]] = i
            hist[t, s] += 1
    return perm, indptr


@nb.njit(cache=True)
def _add_rows(values, seg, acc, lo, hi):  # pragma: no cover - compiled
    """acc[seg[i]] += values[i] for rows lo..hi-1; values (N, D), acc (S, D)."""
    if values.shape[1] == 1:  # [N] input: sum runs of equal ids in a register
        # Pixel ids come in runs (a superpixel's stretch of a row); adding each value straight into
        # acc would chain every add through a store and a load of the same slot.
        flat = acc[:, 0]
        src = values[:, 0]
        current = seg[lo] if lo < hi else 0
        run = 0.0
        for i in range(lo, hi):
            if seg[i] != current:
                flat[current] += run
                current = seg[i]
                run = 0.0
            run += src[i]
        if lo < hi:
            flat[current] += run
    else:
        for i in range(lo, hi):
            row = acc[seg[i]]
            src = values[i]
            for j in range(values.shape[1]):
                row[j] += src[j]


@nb.njit(parallel=True, cache=True)
def _add_rows_parallel(values, seg, partial):  # pragma: no cover - compiled
    # Thread t adds its contiguous chunk of rows into its own partial[t] (S, D): no races.
    n = values.shape[0]
    nt = partial.shape[0]
    chunk = (n + nt - 1) // nt
    for t in nb.prange(nt):
        _add_rows(values, seg, partial[t], t * chunk, min(n, (t + 1) * chunk))


@nb.njit(parallel=True, cache=True)
def _segment_sum_sorted(values, perm, indptr, out):  # pragma: no cover - compiled
    # values (N, D), out (S, D) zeroed: one segment per task, rows summed in index order.
    d = values.shape[1]
    for s in nb.prange(out.shape[0]):
        row = out[s]
        for k in range(indptr[s], indptr[s + 1]):
            src = values[perm[k]]
            for j in range(d):
                row[j] += src[j]


@nb.njit(parallel=True, cache=True)
def _segment_argmax(scores, perm, indptr, out):  # pragma: no cover - compiled
    for s in nb.prange(out.shape[0]):
        best = 0.0
        best_index = -1
        for k in range(indptr[s], indptr[s + 1]):
            i = perm[k]
            if _better(scores[i], i, best, best_index):
                best = scores[i]
                best_index = i
        out[s] = best_index


@nb.njit(inline="always", cache=True)
def _touch(cell, w, s, weight, seen, touched, n_touched):  # pragma: no cover - compiled
    """Add weight ``w`` to ``cell`` for superpixel ``s``, listing the cell the first time s touches it."""
    if seen[cell] != s:
        seen[cell] = s
        touched[n_touched] = cell
        n_touched += 1
    weight[cell] += w
    return n_touched


@nb.njit(parallel=True, cache=True)
def _pool_features(feat, perm, indptr, width, y0, y1, ly, x0, x1, lx, out, nt):  # pragma: no cover
    """Mean of bilinearly upsampled ``feat`` per superpixel, without the upsampled map.

    feat (B, h, w, D) channel-last; perm/indptr group flat full-res pixel indices (b*H + y)*W + x by
    superpixel; out (S, D) zeroed. Each pixel adds its 4 bilinear weights to a per-thread
    (B*h*w) scratch of low-res cell weights; then the superpixel's row is sum(weight * feat[cell])
    over the few cells it touched: D multiply-adds per touched cell instead of 4*D per pixel.
    """
    nb_, h, w, d = feat.shape
    height = y0.shape[0]
    cells = feat.reshape(nb_ * h * w, d)
    num_sp = out.shape[0]
    for t in nb.prange(nt):
        weight = np.zeros(nb_ * h * w, np.float64)
        seen = np.full(nb_ * h * w, -1, np.int64)
        touched = np.empty(nb_ * h * w, np.int64)
        for s in range(t, num_sp, nt):
            n_touched = 0
            p = -2
            x = b = y = 0
            for k in range(indptr[s], indptr[s + 1]):
                # Pixels come row-major: the next one is usually the right neighbour, which spares
                # the two integer divisions of decoding (b, y, x).
                if perm[k] == p + 1 and x + 1 < width:
                    x += 1
                else:
                    r = perm[k] // width
                    x = perm[k] - r * width
                    b = r // height
                    y = r - b * height
                p = perm[k]
                base = b * h * w
                wy = np.float64(ly[y])
                wx = np.float64(lx[x])
                top = base + y0[y] * w
                bottom = base + y1[y] * w
                n_touched = _touch(top + x0[x], (1.0 - wy) * (1.0 - wx), s, weight, seen, touched, n_touched)
                n_touched = _touch(top + x1[x], (1.0 - wy) * wx, s, weight, seen, touched, n_touched)
                n_touched = _touch(bottom + x0[x], wy * (1.0 - wx), s, weight, seen, touched, n_touched)
                n_touched = _touch(bottom + x1[x], wy * wx, s, weight, seen, touched, n_touched)
            count = indptr[s + 1] - indptr[s]
            row = out[s]
            for m in range(n_touched):
                c = touched[m]
                wc = weight[c] / count
                weight[c] = 0.0
                src = cells[c]
                for j in range(d):
                    row[j] += wc * src[j]


_LN2 = math.log(2.0)
# Taylor coefficients of 2**f = exp(f ln2) for |f| <= 1/2; degree 6 leaves ~1e-7 relative error.
# float32 constants keep the arithmetic in float32 (float64 literals would promote it and halve the vector width).
_EXP2_COEF = tuple(np.float32(_LN2**k / math.factorial(k)) for k in range(7))


@nb.njit(inline="always", cache=True, fastmath=True)
def _exp2_parts(t):  # pragma: no cover - compiled
    """2**t for t <= 0 as (mantissa polynomial, biased exponent bits); 2**-126 stands for smaller values.

    Plain arithmetic that LLVM vectorises (numba's math.exp is a scalar libm call per element);
    the caller turns the bits into a float32 with an array ``view``.
    """
    t = max(t, np.float32(-126.0))
    n = math.floor(t + np.float32(0.5))
    f = t - n
    c0, c1, c2, c3, c4, c5, c6 = _EXP2_COEF
    p = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
    return p, (np.int32(n) + np.int32(127)) << np.int32(23)


@nb.njit(parallel=True, cache=True, fastmath=True)
def _softmax_rows(logits, sp, y0, y1, ly, x0, x1, lx, entropy, counts, ratio):  # pragma: no cover - compiled
    """Per-thread sums over the softmax of upsampled ``logits`` (B, C, h, w), per superpixel.

    Works one full-res row at a time in small buffers: blend the two source rows (C x w), blend
    columns (C x W), softmax per pixel, then add into this thread's rows: ``entropy`` (T, S) base-2
    entropy; ``counts`` (T, S, C) pixels by predicted class (argmax, ties to the lower class) and
    ``ratio`` (T, S, C) the pixels' p2/p1 (second-best over best probability) by predicted class.
    """
    nb_, nc, h, w = logits.shape
    height, width = sp.shape[1], sp.shape[2]
    rows = nb_ * height
    nt = entropy.shape[0]
    chunk = (rows + nt - 1) // nt
    log2e = np.float32(1.0 / _LN2)
    lowest = np.float32(-3.0e38)  # finite: fastmath assumes no infinities
    for t in nb.prange(nt):
        blend = np.empty((nc, w), np.float32)
        z = np.empty((nc, width), np.float32)
        zmax = np.empty(width, np.float32)
        second = np.empty(width, np.float32)
        top = np.empty(width, np.int64)
        mantissa = np.empty(width, np.float32)
        bits = np.empty(width, np.int32)
        scale = bits.view(np.float32)
        total = np.empty(width, np.float32)
        weighted = np.empty(width, np.float32)
        acc, count_acc, ratio_acc = entropy[t], counts[t], ratio[t]
        for r in range(t * chunk, min(rows, (t + 1) * chunk)):
            b = r // height
            y = r - b * height
            wy = ly[y]
            for c in range(nc):
                src_top = logits[b, c, y0[y]]
                src_bottom = logits[b, c, y1[y]]
                for i in range(w):
                    blend[c, i] = src_top[i] + wy * (src_bottom[i] - src_top[i])
            for c in range(nc):
                src = blend[c]
                dst = z[c]
                for x in range(width):
                    left = src[x0[x]]
                    dst[x] = (left + lx[x] * (src[x1[x]] - left)) * log2e
            zmax[:] = z[0]
            for c in range(1, nc):
                for x in range(width):
                    zmax[x] = max(zmax[x], z[c, x])
            total[:] = 0.0
            weighted[:] = 0.0
            # In base 2 with e = 2**(z - max): H = log2(sum e) - sum(e * (z - max)) / sum(e);
            # both terms are >= 0, so there is no cancellation.
            for c in range(nc):
                for x in range(width):
                    mantissa[x], bits[x] = _exp2_parts(z[c, x] - zmax[x])
                for x in range(width):
                    e = mantissa[x] * scale[x]
                    total[x] += e
                    weighted[x] += e * (z[c, x] - zmax[x])
            labels = sp[b, y]
            for x in range(width):
                acc[labels[x]] += math.log2(total[x]) - weighted[x] / total[x]
            # The predicted class is the first reaching the maximum; the runner-up the largest other
            # logit (equal to the maximum on a tie: ratio 1). p2/p1 = 2**(z2 - z1) in base 2.
            top[:] = -1
            second[:] = lowest
            for c in range(nc):
                for x in range(width):
                    if top[x] < 0 and z[c, x] == zmax[x]:
                        top[x] = c
                    elif z[c, x] > second[x]:
                        second[x] = z[c, x]
            for x in range(width):
                k = top[x]
                count_acc[labels[x], k] += 1
                if nc > 1:
                    ratio_acc[labels[x], k] += 2.0 ** np.float64(second[x] - zmax[x])


def _numpy(t: torch.Tensor, dtype: type | None = None) -> np.ndarray:
    """Contiguous numpy array of a CPU tensor (a view when nothing needs converting).

    Conversions run in numpy, single-threaded, on purpose: a parallel torch op right before a numba
    kernel leaves torch's OpenMP threads spinning on the cores the kernel needs. bfloat16, which numpy lacks, goes through torch's ``.float()``.
    """
    if t.dtype == torch.bfloat16:
        t = t.float()
    return np.ascontiguousarray(t.detach().numpy(), dtype=dtype)


def _as_float(t: torch.Tensor) -> np.ndarray:
    """float32 or float64 (numba cannot compute in fp16/bf16 on the CPU: halves are widened)."""
    return _numpy(t, np.float64 if t.dtype == torch.float64 else np.float32)


def _ids(t: torch.Tensor) -> np.ndarray:
    return _numpy(t, np.int64).reshape(-1)


def _csr_of(seg: torch.Tensor, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    return csr_order(_ids(seg), num_segments)


def csr_order(seg: np.ndarray, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm int64, indptr int64 [num_segments + 1]) of the ids ``seg`` (any integer dtype, 1-D or
    not): ``perm[indptr[s]:indptr[s+1]]`` are the flat indices with id s, ascending (a stable sort)."""
    # Thread count is read here: inside a cached kernel numba.get_num_threads() blocks caching.
    return _csr(np.ascontiguousarray(seg).reshape(-1), num_segments, nb.get_num_threads())


def segment_sum(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sums per segment, (S, ...) float32 (float64 for float64 input)."""
    src = _as_float(values)
    rows = src.reshape(src.shape[0], math.prod(src.shape[1:]))  # (N, D); D = 1 for [N]
    ids = _ids(seg)
    threads = nb.get_num_threads()
    # Private per-thread sums stream the rows in order (fastest) while they are no larger than the
    # input; with many segments (S ~ N) a counting sort lets each thread own whole segments instead.
    if threads * num_segments <= max(rows.shape[0], 1):
        if rows.size < _PARALLEL_MIN_WORK:
            out = np.zeros((num_segments, rows.shape[1]), src.dtype)
            _add_rows(rows, ids, out, 0, rows.shape[0])
        else:
            partial = np.zeros((threads, num_segments, rows.shape[1]), src.dtype)
            _add_rows_parallel(rows, ids, partial)
            out = partial.sum(axis=0)
    else:
        out = np.zeros((num_segments, rows.shape[1]), src.dtype)
        perm, indptr = _csr(ids, num_segments, threads)
        _segment_sum_sorted(rows, perm, indptr, out)
    return torch.from_numpy(out.reshape(num_segments, *src.shape[1:]))


def segment_argmax(scores: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    out = np.empty(num_segments, np.int64)
    perm, indptr = _csr_of(seg, num_segments)
    _segment_argmax(_as_float(scores), perm, indptr, out)
    return torch.from_numpy(out)


def _taps(feat: torch.Tensor, sp: torch.Tensor) -> tuple[np.ndarray, ...]:
    (h, w), (height, width) = feat.shape[-2:], sp.shape[-2:]
    return (*bilinear_taps(h, height), *bilinear_taps(w, width))


def superpixel_mean_features(feat: torch.Tensor, sp: torch.Tensor, num_sp: int) -> torch.Tensor:
    cells = np.ascontiguousarray(_numpy(feat).transpose(0, 2, 3, 1), dtype=np.float32)  # (B, h, w, D)
    out = np.zeros((num_sp, feat.shape[1]), np.float32)
    perm, indptr = _csr_of(sp, num_sp)
    _pool_features(cells, perm, indptr, sp.shape[-1], *_taps(feat, sp), out, nb.get_num_threads())
    return torch.from_numpy(out)


def superpixel_prediction_stats(logits: torch.Tensor, sp: torch.Tensor, num_sp: int) -> tuple[torch.Tensor, ...]:
    src = _numpy(logits, np.float32)  # (B, C, h, w)
    labels = _numpy(sp, np.int64)  # (B, H, W)
    threads = max(1, min(nb.get_num_threads(), labels.shape[0] * labels.shape[1]))
    nc = src.shape[1]
    entropy = np.zeros((threads, num_sp), np.float64)
    counts = np.zeros((threads, num_sp, nc), np.int64)
    ratio = np.zeros((threads, num_sp, nc), np.float64)
    _softmax_rows(src, labels, *_taps(logits, sp), entropy, counts, ratio)
    return (torch.from_numpy(entropy.sum(axis=0).astype(np.float32)), torch.from_numpy(counts.sum(axis=0).astype(np.int32)),
            torch.from_numpy(ratio.sum(axis=0).astype(np.float32)))

