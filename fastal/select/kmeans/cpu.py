"""CPU KMeans in low dimension: nearest-centre searches and the seeding's distance passes.

For the 2-D UMAP embedding a scalar numba loop over a point's candidate centres beats tensor
code (gathers of (N, m, 2) blocks). The full search, each centre's neighbour list, the points
the pruned search cannot prove and the seeding's rounds use scipy's k-d tree instead, far faster
than a full scan or matmul and top-k at D = 2 (numbers: benchmarks/bench_kmeans.py and the
docs): with k a share of the pool, anything that compares points with every centre grows as the
pool squared. Deterministic.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from scipy.spatial import cKDTree


# Points per work item of the parallel loops: numba's default splits a loop into one static
# block per thread, so on a busy machine a descheduled thread holds everyone up at the end.
CHUNK = 4096


@numba.njit(inline="always")
def _sq_to(x, i, c, j):  # pragma: no cover - compiled
    s = 0.0
    for d in range(x.shape[1]):
        t = x[i, d] - c[j, d]
        s += t * t
    return s


@numba.njit(parallel=True, cache=True)
def _assign_pruned(x, centers, labels, near, bound, out_labels, out_d2, unsure):  # pragma: no cover - compiled
    for i in numba.prange(x.shape[0]):
        own = labels[i]
        best = np.inf
        arg = -1
        for j in range(near.shape[1]):
            c = near[own, j]
            d = _sq_to(x, i, centers, c)
            if d < best or (d == best and c < arg):
                best, arg = d, c
        out_labels[i] = arg
        out_d2[i] = best
        # exact iff the nearest centre outside the list is >= 2 d(x, own): bound >= 4 d2(x, own)
        unsure[i] = bound[own] < 4.0 * _sq_to(x, i, centers, own)


# Centres a point is first compared with (TorchKMeans' n_candidates on this path): the rest of
# the points ask the k-d tree, cheaper here than a longer list for every point.
CANDIDATES = 8


@numba.njit(parallel=True, cache=True)
def _morton(q, out):  # pragma: no cover - compiled
    dims = q.shape[1]
    for i in numba.prange(q.shape[0]):
        code = np.uint64(0)
        for b in range(64 // dims):
            for d in range(dims):
                code |= ((q[i, d] >> np.uint64(b)) & np.uint64(1)) << np.uint64(b * dims + d)
        out[i] = code


def spatial_order(x: torch.Tensor) -> torch.Tensor:
    """A permutation of the rows of ``x`` (N, D <= 4) along a Morton (Z-order) curve: near points
    end up near in memory, so that each pass reads the centres and their lists in runs instead
    of at random (with tens of thousands of centres, those reads missed the caches)."""
    xn = x.double().numpy()
    lo, span = xn.min(0), np.ptp(xn, axis=0)
    bits = 64 // x.shape[1]
    q = ((xn - lo) / np.where(span > 0, span, 1.0) * (2.0**bits - 1)).astype(np.uint64)
    code = np.empty(len(xn), np.uint64)
    _morton(q, code)
    return torch.from_numpy(np.argsort(code, kind="stable"))


def _tree(centers: torch.Tensor) -> cKDTree:
    return cKDTree(centers.double().numpy())


def assign_full_cpu(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row (exact, by scipy's k-d tree): (labels int64, squared distance)."""
    d, labels = _tree(centers).query(x.double().numpy(), k=1, workers=torch.get_num_threads())
    return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(d * d).to(x.dtype)


def near_centres_cpu(centers: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` centres nearest each centre (itself included) and the squared distance to the
    next one, the pruned search's bound: (near (k, m) int64, bound (k,)), by a k-d tree."""
    d, idx = _tree(centers).query(centers.double().numpy(), k=m + 1, workers=torch.get_num_threads())
    return torch.from_numpy(idx[:, :m].astype(np.int64)), torch.from_numpy(d[:, m] ** 2).to(centers.dtype)


def assign_pruned_cpu(
    x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, near: torch.Tensor, bound: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest centre per row, searching ``near[labels[i]]`` first (see TorchKMeans._assign);
    the rows whose list the bound cannot prove ask the k-d tree (log k each: a scan of every centre
    made the assignment grow as rows x k, with k a share of the rows)."""
    out_labels = np.empty(x.shape[0], np.int64)
    out_d2 = np.empty(x.shape[0], np.float64)
    unsure = np.empty(x.shape[0], np.bool_)
    xn = x.contiguous().numpy()
    with numba.parallel_chunksize(CHUNK):
        _assign_pruned(xn, centers.contiguous().numpy(), labels.numpy(), near.contiguous().numpy(),
                       bound.double().numpy(), out_labels, out_d2, unsure)  # fmt: skip
    rows = np.flatnonzero(unsure)
    if rows.size:
        open_rows = xn[rows].astype(np.float64)
        _, out_labels[rows] = _tree(centers).query(open_rows, k=1, workers=torch.get_num_threads())
        diff = open_rows - centers.double().numpy()[out_labels[rows]]
        out_d2[rows] = (diff * diff).sum(1)
    return torch.from_numpy(out_labels), torch.from_numpy(out_d2).to(x.dtype)


# Candidates a point is compared with through the k-d tree in the seeding; a point with all of
# them nearer than its nearest seed so far is compared with every candidate. Up to TREE_FROM
# rows, a round's rows are all compared with every point: there a tree's query costs more.
SEED_NEIGHBOURS = 8
TREE_FROM = 128
_SLACK = 1e-5  # relative: the tree's float64 distances against the kernels' float32 differences


@numba.njit(cache=True)
def _seed_gains(x, d2, cand, near, everyone, out):  # pragma: no cover - compiled
    # Sequential: each candidate's gain is summed in the points' order, as a scan of every pair
    # would, and there is no race on ``out``.
    for i in range(x.shape[0]):
        for j in range(cand.shape[0] if everyone[i] else near.shape[1]):
            c = j if everyone[i] else near[i, j]
            d = _sq_to(x, i, cand, c)
            if d < d2[i]:
                out[c] += d2[i] - d


@numba.njit(parallel=True, cache=True)
def _seed_update(x, d2, new, near):  # pragma: no cover - compiled
    for i in numba.prange(x.shape[0]):
        best = d2[i]
        for j in range(near.shape[1]):
            d = _sq_to(x, i, new, near[i, j])
            if d < best:
                best = d
        d2[i] = best


def _nearest_rows(rows: torch.Tensor, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` rows of ``rows`` nearest each point of ``x`` by a k-d tree: (dist, idx) (N, m);
    every row (dist 0, a placeholder) where there are at most TREE_FROM rows."""
    if rows.shape[0] <= TREE_FROM:
        everything = np.broadcast_to(np.arange(rows.shape[0]), (len(x), rows.shape[0]))
        return np.zeros(everything.shape), everything
    d, idx = _tree(rows).query(x.astype(np.float64), k=m, workers=torch.get_num_threads())
    return d.reshape(len(x), m), idx.reshape(len(x), m)


def seed_gains_cpu(x: torch.Tensor, d2: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """How much each candidate alone lowers the potential: sum_i max(0, d2_i - |x_i - c|^2), float64.

    Only a point's nearest candidates can be nearer than its seed: each point is compared with
    its ``SEED_NEIGHBOURS`` nearest (a k-d tree), with all of them where even the last is nearer
    than its seed. A scan of every pair grew as the seeding's sample x k, both a share of the pool.
    """
    xn = x.contiguous().numpy()
    dist, near = _nearest_rows(cand, xn, min(cand.shape[0], SEED_NEIGHBOURS))
    dn = d2.numpy()
    if near.shape[1] < cand.shape[0]:
        everyone = dist[:, -1] ** 2 < dn * (1 + _SLACK)
    else:
        everyone = np.zeros(len(xn), np.bool_)
    out = np.zeros(cand.shape[0], np.float64)
    _seed_gains(xn, dn, cand.contiguous().numpy(), near, everyone, out)
    return torch.from_numpy(out)


def seed_update_cpu(x: torch.Tensor, d2: torch.Tensor, new: torch.Tensor) -> None:
    """``d2`` (float64, in place) = min(d2, squared distance to the nearest row of ``new``): the
    exact distances to each point's four nearest rows by the k-d tree (more would matter only in
    a tie of five at float rounding)."""
    xn = x.contiguous().numpy()
    _, near = _nearest_rows(new, xn, min(new.shape[0], 4))
    with numba.parallel_chunksize(CHUNK):
        _seed_update(xn, d2.numpy(), new.contiguous().numpy(), near)
