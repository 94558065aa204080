"""CPU versions of UMAP's SGD (transform and fit): numba loops, points in parallel.

torch's eager version (:mod:`fastal.select.umap.sgd_torch`) makes a dozen tensor passes per
epoch; these loops do one, and the transform advances 8 points side by side per thread (a
point's updates are one dependency chain; see ``_sgd``). The transform keeps umap-learn's exact update
order (per point: edges nearest first, each followed by its negative samples) against the fixed
bank embedding. The fit moves each
point through its own edges in umap-learn's order, reading the other points where they stood
at the start of the epoch (a per-epoch snapshot: threads never read a row another thread
writes); umap-learn's move of the edge's other end is the reverse edge's step (the graph is
symmetric, both directions share one schedule), so each sampled edge steps twice. Each point
draws negatives from its own xorshift stream seeded by (seed, point), so the result does not
depend on how points are spread over threads: deterministic for a seed.

The gradient coefficients (umap-learn's ``d2 ** (b - 1) / (a d2^b + 1)`` and ``1 / ((0.001 + d2)
(a d2^b + 1))``) are read from tables made once per call (:func:`coefficient_tables`): a table
read with linear interpolation costs a fraction of ``powf`` plus a division.
The tables are indexed by the float32 bits of ``d2`` (exponent and the top mantissa bits), so
every bucket spans the same relative width and the interpolation error is relative (< 5e-5,
tested; far below the float32 SGD's own noise); ``d2`` outside the table's range is computed
as before.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


# Points per work item of the parallel loops: numba's default splits a loop into one static
# block per thread, so on a busy machine a descheduled thread holds everyone up at the end.
CHUNK = 256
LANES = 8  # points of a transform advanced side by side by one thread (see _sgd)


@numba.njit(inline="always")
def _clip(v):  # pragma: no cover - compiled
    return min(max(v, np.float32(-4.0)), np.float32(4.0))


@numba.njit(inline="always", fastmath=True)
def _sq_dist(cur, other):  # pragma: no cover - compiled
    d2 = np.float32(0.0)
    for d in range(cur.shape[0]):
        diff = cur[d] - other[d]
        d2 += diff * diff
    return d2


# Coefficient tables: 2^TABLE_BITS buckets per power of two of d2, over [2^-TABLE_OCTAVES, 2^TABLE_OCTAVES).
TABLE_BITS = 7
TABLE_OCTAVES = 40
_SHIFT = 23 - TABLE_BITS  # float32 mantissa bits below a bucket's index
_BASE = (127 - TABLE_OCTAVES) << TABLE_BITS  # bucket index of 2^-TABLE_OCTAVES (biased exponent 127 = 2^0)
_TOP = 2 * TABLE_OCTAVES << TABLE_BITS  # buckets in the table (one more entry closes the last)


@numba.njit(inline="always", fastmath=True)
def _factor(d2, a, b, scale, repel):  # pragma: no cover - compiled
    """``scale`` x umap-learn's gradient factor at ``d2`` > 0: ``d2^(b-1) / (a d2^b + 1)`` for an
    edge, ``1 / ((0.001 + d2)(a d2^b + 1))`` for a negative sample (float32 or float64 in, out)."""
    pb = d2**b
    if repel:
        return scale / ((np.float32(0.001) + d2) * (a * pb + np.float32(1.0)))
    return scale * (pb / d2) / (a * pb + np.float32(1.0))  # d2^(b-1) = d2^b / d2


@numba.njit(cache=True)
def _tabulate(d2, a, b, scale, repel):  # pragma: no cover - compiled
    out = np.empty_like(d2)
    for i in range(d2.shape[0]):
        out[i] = _factor(d2[i], a, b, scale, repel)
    return out


def coefficient_tables(a: float, b: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(attract, repel) float32 tables of :func:`_factor` at each bucket start, computed in float64
    with the scales -2ab (an edge) and 2 gamma b (a negative sample)."""
    i = np.arange(_TOP + 1)
    d2 = np.exp2(i // (1 << TABLE_BITS) - TABLE_OCTAVES) * (1.0 + (i % (1 << TABLE_BITS)) / (1 << TABLE_BITS))
    a, b = float(a), float(b)
    attract = _tabulate(d2, a, b, -2.0 * a * b, False)
    repel = _tabulate(d2, a, b, 2.0 * float(gamma) * b, True)
    return attract.astype(np.float32), repel.astype(np.float32)


@intrinsic
def _f32_bits(typingctx, x):  # pragma: no cover - compiled
    """The bits of a float32 as an int32 (no memory round trip)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@numba.njit(inline="always", fastmath=True)
def _coefficient(table, d2, a, b, scale, repel):  # pragma: no cover - compiled
    """The table's value at ``d2`` > 0, linearly interpolated; outside its range ``scale`` x umap-learn's factor."""
    u = _f32_bits(d2)
    i = (u >> _SHIFT) - _BASE
    if i < 0 or i >= _TOP:
        return _factor(d2, a, b, scale, repel)
    frac = np.float32(u & ((1 << _SHIFT) - 1)) * np.float32(1.0 / (1 << _SHIFT))
    return table[i] + frac * (table[i + 1] - table[i])


@numba.njit(inline="always", fastmath=True)
def _step(cur, other, coeff, alpha):  # pragma: no cover - compiled
    for d in range(cur.shape[0]):
        cur[d] += _clip(coeff * (cur[d] - other[d])) * alpha


@numba.njit(inline="always", fastmath=True)
def _attract(cur, other, table, a, b, attract, alpha):  # pragma: no cover - compiled
    """An edge's attractive step of ``cur`` towards ``other`` (umap-learn's, float32)."""
    d2 = _sq_dist(cur, other)
    if d2 > np.float32(0.0):
        _step(cur, other, _coefficient(table, d2, a, b, attract, False), alpha)


@numba.njit(inline="always", fastmath=True)
def _repel(cur, other, table, a, b, repel, alpha):  # pragma: no cover - compiled
    """A negative sample's repulsive step of ``cur`` away from ``other``; False (no step) where they coincide."""
    d2 = _sq_dist(cur, other)
    if d2 <= np.float32(0.0):
        return False
    _step(cur, other, _coefficient(table, d2, a, b, repel, True), alpha)
    return True


@numba.njit(parallel=True, fastmath=True, cache=True)
def _sgd(head, tail, idx, eps, n_epochs, a, b, gamma, initial_alpha, negative_sample_rate, seed, t_att, t_rep):  # pragma: no cover
    # float32 arithmetic like umap-learn's kernel. One point's updates form a chain (each reads
    # the position the last one wrote), so a lone point waits on its own latency; LANES points
    # advance side by side instead (edge j of every lane, then their negatives round by round),
    # each still in umap-learn's order, so the CPU overlaps independent chains.
    n, k = idx.shape
    m = tail.shape[0]
    attract = np.float32(-2.0) * a * b
    repel = np.float32(2.0) * gamma * b
    for g in numba.prange((n + LANES - 1) // LANES):
        lo = g * LANES
        lanes = min(n, lo + LANES) - lo
        next_sample = eps[lo : lo + lanes].copy()
        eps_neg = eps[lo : lo + lanes] / negative_sample_rate
        next_neg = eps_neg.copy()
        states = np.empty(lanes, np.uint64)
        for p in range(lanes):
            states[p] = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(lo + p + 1) * np.uint64(0xBF58476D1CE4E5B9)
        n_neg = np.zeros(lanes, np.int64)
        for ep in range(n_epochs):
            # umap-learn lowers alpha after each epoch: epochs 0 and 1 both run at the initial rate.
            alpha = np.float32(initial_alpha if ep == 0 else initial_alpha * (1.0 - (ep - 1) / n_epochs))
            for j in range(k):
                rounds = 0
                for p in range(lanes):
                    i = lo + p
                    n_neg[p] = 0
                    if eps[i, j] <= 0.0 or next_sample[p, j] > ep:
                        continue
                    _attract(head[i], tail[idx[i, j]], t_att, a, b, attract, alpha)
                    next_sample[p, j] += eps[i, j]
                    c = int((ep - next_neg[p, j]) / eps_neg[p, j])
                    n_neg[p] = c
                    rounds = max(rounds, c)
                    next_neg[p, j] += c * eps_neg[p, j]  # also when negative, as umap-learn does
                for r in range(rounds):
                    for p in range(lanes):
                        if r >= n_neg[p]:
                            continue
                        states[p] = _xorshift(states[p])
                        _repel(head[lo + p], tail[_below(states[p], m)], t_rep, a, b, repel, alpha)


@numba.njit(inline="always")
def _below(state, m):  # pragma: no cover - compiled
    # An index in [0, m) from the state's high 32 bits by a multiply and a shift: a 64-bit
    # modulo costs about as much as the rest of a negative sample's update.
    return np.int64(((state >> np.uint64(32)) * np.uint64(m)) >> np.uint64(32))


@numba.njit(inline="always")
def _xorshift(state):  # pragma: no cover - compiled
    state ^= state << np.uint64(13)
    state ^= state >> np.uint64(7)
    state ^= state << np.uint64(17)
    return state


@numba.njit(parallel=True, fastmath=True, cache=True)
def _sgd_fit(emb, indptr, dst, eps, n_epochs, a, b, gamma, initial_alpha, negative_sample_rate, seed, t_att, t_rep):  # pragma: no cover
    n, dim = emb.shape
    attract = np.float32(-2.0) * a * b
    repel = np.float32(2.0) * gamma * b
    four = np.float32(4.0)
    next_sample = eps.copy()
    eps_neg = eps / negative_sample_rate
    next_neg = eps_neg.copy()
    states = np.empty(n, np.uint64)
    for i in range(n):
        states[i] = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(i + 1) * np.uint64(0xBF58476D1CE4E5B9)
    snap = emb.copy()
    for ep in range(n_epochs):
        alpha = np.float32(initial_alpha if ep == 0 else initial_alpha * (1.0 - (ep - 1) / n_epochs))
        snap[:] = emb
        for i in numba.prange(n):
            cur = emb[i]
            state = states[i]
            for e in range(indptr[i], indptr[i + 1]):
                if eps[e] <= 0.0 or next_sample[e] > ep:
                    continue
                other = snap[dst[e]]
                for _ in range(2):  # this edge's step and the reverse edge's move of its other end
                    _attract(cur, other, t_att, a, b, attract, alpha)
                next_sample[e] += eps[e]
                n_neg = int((ep - next_neg[e]) / eps_neg[e])
                for _ in range(n_neg):
                    state = _xorshift(state)
                    j = _below(state, n)
                    if j == i:
                        continue
                    if not _repel(cur, snap[j], t_rep, a, b, repel, alpha):  # on top of each other
                        for d in range(dim):
                            cur[d] += four * alpha
                next_neg[e] += n_neg * eps_neg[e]
            states[i] = state


def optimize_fit_cpu(
    emb: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    eps: torch.Tensor,
    n_epochs: int,
    a: float,
    b: float,
    *,
    gamma: float = 1.0,
    initial_alpha: float = 1.0,
    negative_sample_rate: float = 5.0,
    seed: int = 0,
) -> torch.Tensor:
    """Same contract as :func:`fastal.select.umap.sgd_torch.sgd_epochs` with ``tail=None``, for
    CPU tensors whose edges are sorted by ``src``. Returns ``emb`` (updated in place)."""
    indptr = torch.zeros(emb.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(src, minlength=emb.shape[0]), 0)
    f32 = np.float32
    with numba.parallel_chunksize(CHUNK):
        _sgd_fit(emb.numpy(), indptr.numpy(), dst.contiguous().numpy(), eps.contiguous().numpy(), int(n_epochs), f32(a),
                 f32(b), f32(gamma), float(initial_alpha), float(negative_sample_rate), int(seed),
                 *coefficient_tables(a, b, gamma))  # fmt: skip
    return emb


def optimize_transform_cpu(
    head: torch.Tensor,
    tail: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    n_epochs: int,
    a: float,
    b: float,
    *,
    gamma: float = 1.0,
    initial_alpha: float = 0.25,
    negative_sample_rate: float = 5.0,
    seed: int = 42,
) -> torch.Tensor:
    """Same contract as :func:`fastal.select.umap.sgd_torch.optimize_transform` for CPU tensors."""
    h = head.numpy()  # shares memory: updated in place
    from fastal.select.umap.sgd_torch import epochs_per_sample

    eps = epochs_per_sample(w, n_epochs)
    f32 = np.float32
    with numba.parallel_chunksize(CHUNK // LANES):  # CHUNK points per work item
        _sgd(h, tail.float().contiguous().numpy(), idx.contiguous().numpy(), eps.numpy(), int(n_epochs), f32(a), f32(b),
             f32(gamma), float(initial_alpha), float(negative_sample_rate), int(seed),
             *coefficient_tables(a, b, gamma))  # fmt: skip
    return head
