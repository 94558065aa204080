"""CUDA implementations: numba.cuda kernels behind the public signatures.

Every reduction walks each segment's elements in sorted order: ``torch.sort`` on the device gives
the order, ``bincount`` + ``cumsum`` the segment bounds, and one thread block per segment reduces
its elements in registers and shared memory and writes the result once. The kernels use no
atomics (only torch's bincount counts segment sizes, exactly, in integers), so results are
deterministic and no global atomic is issued per (pixel, channel).

Tensors go in zero-copy through ``__cuda_array_interface__`` (``cuda.as_cuda_array``) and kernels
launch on torch's current stream. The one copy is of the small low-resolution map of the
superpixel functions, made channel-last so that a warp reads 32 adjacent channels at once. Values accumulate in float32 (float64 for float64 input to the
segment ops); fp16 is read natively and bfloat16, which numba has no type for, is read as int16
bits and decoded in the kernel. Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's
CUDA simulator on CPU tensors (numpy views), which is how CI tests them.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch

# numba-cuda (0.30.4 and older) registers an overload for np.row_stack, unguarded, the first time
# it compiles a kernel; NumPy 2.5 removed that alias of vstack, so every kernel failed to compile
# (seen on the lent H200: numpy 2.5.2). Restoring the alias is harmless and lets it load.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import cuda, float32  # noqa: E402
from numba.core import config  # noqa: E402

from fastal.errors import FastalError  # noqa: E402
from fastal.kernels.bilinear import bilinear_taps  # noqa: E402
from fastal.kernels.scalar import argmax_better, bf16_bits_to_float  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
MAX_THREADS = 256  # threads per block on a GPU; shared buffers are sized for it
# The simulator runs every thread as a Python thread: small blocks keep CI fast.
THREADS = 32 if SIMULATED else MAX_THREADS
# Dynamic shared memory of the prediction kernel's per-thread class slots: under the 48 KiB a
# block may use without opting in, beside the kernels' static 2 KiB.
_DYNAMIC_SHARED = 40 * 1024
_INV_LN2 = np.float32(1 / math.log(2))  # nats to bits, a float32 constant (kernels stay in float32)

_better = cuda.jit(device=True)(argmax_better)
_bf16 = cuda.jit(device=True)(bf16_bits_to_float)


@cuda.jit(device=True)
def _load_f32(x):  # pragma: no cover - compiled
    return np.float32(x)


@cuda.jit(device=True)
def _load_f64(x):  # pragma: no cover - compiled
    return np.float64(x)


@cuda.jit(device=True)
def _tree_sum(buf, tx, ty, bx, by):  # pragma: no cover - compiled
    """Sum ``buf[ty * bx + tx]`` over ty (by a power of two) into ``buf[tx]``; all threads must call."""
    cuda.syncthreads()
    half = by // 2
    while half > 0:
        if ty < half:
            buf[ty * bx + tx] += buf[(ty + half) * bx + tx]
        cuda.syncthreads()
        half //= 2


@cuda.jit(device=True)
def _corners(row, col, row_top, row_bottom, row_weight, x0, x1, lx):  # pragma: no cover - compiled
    """Full-res pixel (row = b*H + y, col = x) -> its 4 source cells (rows of the (B*h*w, C) map)
    and the weights (wy, wx) of the lower source row and the right source column."""
    top, bottom = row_top[row], row_bottom[row]
    return top + x0[col], top + x1[col], bottom + x0[col], bottom + x1[col], row_weight[row], lx[col]


# How values of each storage kind are read and accumulated.
_KINDS = {
    "f32": (_load_f32, np.float32),  # float16 and float32
    "f64": (_load_f64, np.float64),
    "bf16": (_bf16, np.float32),  # int16 bits of bfloat16
}


@functools.cache
def kernels(kind: str) -> SimpleNamespace:
    """The kernels for one storage kind of the input values (see ``_KINDS``); compiled on first launch."""
    load, acc_t = _KINDS[kind]

    @cuda.jit
    def segment_sum(values, perm, indptr, out):  # pragma: no cover - compiled
        # values (N, D), out (S, D); block (bx over D, by over rows), one block per segment.
        s = cuda.blockIdx.x
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        bx, by = cuda.blockDim.x, cuda.blockDim.y
        buf = cuda.shared.array(MAX_THREADS, np.float64)
        start, stop = indptr[s], indptr[s + 1]
        for d0 in range(0, values.shape[1], bx):
            d = d0 + tx
            acc = acc_t(0)
            if d < values.shape[1]:
                for k in range(start + ty, stop, by):
                    acc += load(values[perm[k], d])
            buf[ty * bx + tx] = acc
            _tree_sum(buf, tx, ty, bx, by)
            if ty == 0 and d < values.shape[1]:
                out[s, d] = buf[tx]
            cuda.syncthreads()

    @cuda.jit
    def segment_argmax(scores, perm, indptr, out):  # pragma: no cover - compiled
        s = cuda.blockIdx.x
        tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
        best_value = cuda.shared.array(MAX_THREADS, np.float64)
        best_index = cuda.shared.array(MAX_THREADS, np.int64)
        value, index = np.float64(0), np.int64(-1)
        for k in range(indptr[s] + tid, indptr[s + 1], nthreads):
            i = perm[k]
            v = np.float64(load(scores[i]))
            if _better(v, i, value, index):
                value, index = v, i
        best_value[tid], best_index[tid] = value, index
        cuda.syncthreads()
        half = nthreads // 2
        while half > 0:
            if tid < half and _better(best_value[tid + half], best_index[tid + half], best_value[tid], best_index[tid]):
                best_value[tid], best_index[tid] = best_value[tid + half], best_index[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            out[s] = best_index[0]

    @cuda.jit
    def pool_features(cells, rows, cols, indptr, row_top, row_bottom, row_weight, x0, x1, lx, out):  # pragma: no cover
        # cells (B*h*w, D) channel-last low-res map; rows/cols: full-res pixels (b*H + y, x)
        # grouped by superpixel; out (S, D) sums of the bilinearly upsampled rows.
        s = cuda.blockIdx.x
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        bx, by = cuda.blockDim.x, cuda.blockDim.y
        depth = cells.shape[1]
        buf = cuda.shared.array(MAX_THREADS, np.float64)
        start, stop = indptr[s], indptr[s + 1]
        for d0 in range(0, depth, bx):
            d = d0 + tx
            acc = np.float32(0)
            if d < depth:
                for k in range(start + ty, stop, by):
                    c00, c01, c10, c11, wy, wx = _corners(rows[k], cols[k], row_top, row_bottom, row_weight, x0, x1, lx)
                    a = load(cells[c00, d])
                    upper = a + wx * (load(cells[c01, d]) - a)
                    a = load(cells[c10, d])
                    lower = a + wx * (load(cells[c11, d]) - a)
                    acc += upper + wy * (lower - upper)
            buf[ty * bx + tx] = acc
            _tree_sum(buf, tx, ty, bx, by)
            if ty == 0 and d < depth:
                out[s, d] = buf[tx]
            cuda.syncthreads()

    @cuda.jit
    def prediction_stats(cells, rows, cols, indptr, row_top, row_bottom, row_weight, x0, x1, lx,
                         entropy, counts, ratio):  # pragma: no cover
        # cells (B*h*w, C) channel-last logits; one thread per full-res pixel of the segment, an
        # online softmax over the C interpolated logits (one pass, nothing stored per pixel) that
        # also tracks the predicted class and the runner-up's logit. entropy (S,); counts, ratio
        # (S, C) by predicted class, summed in this thread's own slots of the dynamic shared
        # array (2 x threads x C float32: counts, then ratios), then reduced over threads.
        s = cuda.blockIdx.x
        tid, nthreads = cuda.threadIdx.x, cuda.blockDim.x
        classes = cells.shape[1]
        buf = cuda.shared.array(MAX_THREADS, np.float64)
        per_class = cuda.shared.array(0, float32)  # a numba type: the simulator needs one for dynamic arrays  # a numba type: the simulator needs one for dynamic arrays
        mine = tid * classes
        ratios = nthreads * classes  # where the ratio slots start
        for c in range(classes):
            per_class[mine + c] = 0
            per_class[ratios + mine + c] = 0
        acc = np.float32(0)
        for k in range(indptr[s] + tid, indptr[s + 1], nthreads):
            c00, c01, c10, c11, wy, wx = _corners(rows[k], cols[k], row_top, row_bottom, row_weight, x0, x1, lx)
            # total = sum e_c, weighted = sum e_c (z_c - zmax), e_c = exp(z_c - zmax), zmax running;
            # top: the first class reaching zmax, second: the largest other logit.
            zmax, total, weighted = np.float32(0), np.float32(0), np.float32(0)
            second, top = np.float32(-math.inf), 0
            for c in range(classes):
                a = load(cells[c00, c])
                upper = a + wx * (load(cells[c01, c]) - a)
                a = load(cells[c10, c])
                lower = a + wx * (load(cells[c11, c]) - a)
                z = upper + wy * (lower - upper)
                if c == 0:
                    zmax, total = z, np.float32(1)
                elif z > zmax:
                    shift = zmax - z
                    scale = math.exp(shift)
                    weighted = scale * (weighted + shift * total)
                    total = scale * total + np.float32(1)
                    second, zmax, top = zmax, z, c
                else:
                    e = math.exp(z - zmax)
                    total += e
                    weighted += e * (z - zmax)
                    if z > second:  # not max(): numba-cuda types max(a, b) as max(iterable) here
                        second = z
            if classes > 0:
                acc += (math.log(total) - weighted / total) * _INV_LN2
                per_class[mine + top] += np.float32(1)
                per_class[ratios + mine + top] += math.exp(second - zmax)
        buf[tid] = acc
        _tree_sum(buf, 0, tid, 1, nthreads)
        if tid == 0:
            entropy[s] = buf[0]
        half = nthreads // 2
        while half > 0:
            if tid < half:
                for c in range(classes):
                    per_class[mine + c] += per_class[mine + half * classes + c]
                    per_class[ratios + mine + c] += per_class[ratios + mine + half * classes + c]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            for c in range(classes):
                counts[s, c] = np.int32(per_class[c])
                ratio[s, c] = per_class[ratios + c]

    return SimpleNamespace(
        segment_sum=segment_sum, segment_argmax=segment_argmax, pool_features=pool_features,
        prediction_stats=prediction_stats,
    )


def _require_gpu() -> None:
    if not SIMULATED and not cuda.is_available():
        raise FastalError(
            "CUDA tensors given, but numba.cuda finds no usable GPU (driver or NVVM missing?); "
            "move the tensors to the CPU or fix the numba CUDA install"
        )


def _kind(t: torch.Tensor) -> str:
    return {torch.bfloat16: "bf16", torch.float64: "f64"}.get(t.dtype, "f32")


def _device_array(t):
    """Zero-copy numba view of a tensor (bf16 as its int16 bits); scalars pass through."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if SIMULATED:  # the simulator copies arguments in and out and insists on contiguous buffers
        return np.ascontiguousarray(t.numpy())
    return cuda.as_cuda_array(t)  # strided views are fine: kernels index through the strides


def _launch(kernel, grid: int, block: tuple[int, ...], device: torch.device, *args, shared: int = 0) -> None:
    """Run ``kernel`` on torch's current stream with ``shared`` bytes of dynamic shared memory;
    outputs must come pre-filled (0, or -1 for argmax).

    With no blocks or an empty input there is nothing to reduce, and nothing is launched (empty
    tensors may carry a null pointer that numba refuses).
    """
    if grid == 0 or any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in args):
        return
    if SIMULATED:
        kernel[grid, block, 0, shared](*map(_device_array, args))
        return
    with cuda.gpus[device.index if device.index is not None else torch.cuda.current_device()]:
        stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
        kernel[grid, block, stream, shared](*map(_device_array, args))


def _csr(seg: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, indptr): element indices grouped by segment (ascending within one), segment bounds."""
    seg = seg.reshape(-1)
    key = seg.to(torch.int32) if num_segments < 2**31 else seg.to(torch.int64)  # 32-bit keys sort faster
    perm = torch.sort(key, stable=True).indices
    indptr = torch.zeros(num_segments + 1, dtype=torch.int64, device=seg.device)
    torch.cumsum(torch.bincount(key, minlength=num_segments), 0, out=indptr[1:])
    return perm, indptr


def _rows_block(depth: int) -> tuple[int, int]:
    """(bx, by): bx threads across channels (a power of two up to a warp), by across rows."""
    bx = min(32, 1 << max(0, depth - 1).bit_length())
    return bx, THREADS // bx


def segment_sum(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    _require_gpu()
    rows = values.reshape(values.shape[0], math.prod(values.shape[1:]))  # (N, D); D = 1 for [N]
    acc_dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    out = torch.zeros((num_segments, rows.shape[1]), dtype=acc_dtype, device=values.device)
    perm, indptr = _csr(seg, num_segments)
    k = kernels(_kind(values))
    _launch(k.segment_sum, num_segments, _rows_block(rows.shape[1]), values.device, rows, perm, indptr, out)
    return out.reshape(num_segments, *values.shape[1:])


def segment_argmax(scores: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    _require_gpu()
    out = torch.full((num_segments,), -1, dtype=torch.int64, device=scores.device)
    perm, indptr = _csr(seg, num_segments)
    _launch(kernels(_kind(scores)).segment_argmax, num_segments, (THREADS,), scores.device, scores, perm, indptr, out)
    return out


def _upsampling_args(maps: torch.Tensor, sp: torch.Tensor, num_sp: int) -> tuple[torch.Tensor, ...]:
    """Kernel inputs of the superpixel functions, all on the device.

    Returns the channel-last low-res cells (B*h*w, C), the full-res pixels grouped by superpixel
    as (row = b*H + y, col = x) with their ``indptr``, and per-row / per-column bilinear tables:
    the first cell of each full-res row's upper and lower source rows, the lower row's weight,
    and the column taps. Decoding pixels here, in two elementwise ops, spares the kernels three
    64-bit integer divisions per pixel (per channel chunk).
    """
    # One small copy of the low-res map (float64 narrowed to float32; the result is float32).
    cells = maps.permute(0, 2, 3, 1).to(torch.float32 if maps.dtype == torch.float64 else maps.dtype)
    cells = cells.contiguous().reshape(-1, maps.shape[1])
    batch, (h, w), (height, width) = maps.shape[0], maps.shape[-2:], sp.shape[-2:]
    perm, indptr = _csr(sp, num_sp)
    rows = torch.div(perm, width, rounding_mode="floor")
    cols = (perm - rows * width).to(torch.int32)
    y0, y1, ly = bilinear_taps(h, height)
    image_cell = np.repeat(np.arange(batch, dtype=np.int64) * h, height)  # b*h for each full-res row
    row_top = (image_cell + np.tile(y0, batch)) * w
    row_bottom = (image_cell + np.tile(y1, batch)) * w
    tables = (row_top, row_bottom, np.tile(ly, batch), *bilinear_taps(w, width))
    return cells, rows.to(torch.int32), cols, indptr, *(torch.from_numpy(t).to(maps.device) for t in tables)


def superpixel_mean_features(feat: torch.Tensor, sp: torch.Tensor, num_sp: int) -> torch.Tensor:
    _require_gpu()
    args = _upsampling_args(feat, sp, num_sp)
    out = torch.zeros((num_sp, feat.shape[1]), dtype=torch.float32, device=feat.device)
    _launch(kernels(_kind(args[0])).pool_features, num_sp, _rows_block(feat.shape[1]), feat.device, *args, out)
    counts = torch.diff(args[3]).clamp_(min=1).to(torch.float32)
    return out.div_(counts[:, None])


def _class_threads(classes: int) -> int:
    """Threads per block of the prediction kernel: a power of two whose per-thread class slots
    (2 x C float32 each) fit ``_DYNAMIC_SHARED`` bytes."""
    fit = _DYNAMIC_SHARED // (8 * max(classes, 1))
    if fit < 1:
        raise FastalError(f"{classes} classes: the prediction kernel's shared memory holds at most "
                          f"{_DYNAMIC_SHARED // 8}")
    return min(THREADS, 1 << (fit.bit_length() - 1))


def superpixel_prediction_stats(logits: torch.Tensor, sp: torch.Tensor, num_sp: int) -> tuple[torch.Tensor, ...]:
    _require_gpu()
    args = _upsampling_args(logits, sp, num_sp)
    classes = logits.shape[1]
    entropy = torch.zeros(num_sp, dtype=torch.float32, device=logits.device)
    counts = torch.zeros((num_sp, classes), dtype=torch.int32, device=logits.device)
    ratio = torch.zeros((num_sp, classes), dtype=torch.float32, device=logits.device)
    threads = _class_threads(classes)
    _launch(kernels(_kind(args[0])).prediction_stats, num_sp, (threads,), logits.device, *args, entropy, counts, ratio,
            shared=8 * threads * classes)  # fmt: skip
    return entropy, counts, ratio
