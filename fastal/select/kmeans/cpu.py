"""CPU KMeans in low dimension: nearest-centre searches and the seeding's distance passes.

For the 2-D UMAP embedding a scalar numba loop over a point's candidate centres beats tensor
code (gathers of (N, m, 2) blocks). The full search and each centre's neighbour list use
scipy's k-d tree instead, far faster than a full scan or matmul and top-k at D = 2 (numbers:
benchmarks/bench_kmeans.py and the docs). Deterministic.
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
def _assign_pruned(x, centers, labels, near, bound, out_labels, out_d2):  # pragma: no cover - compiled
    n = x.shape[0]
    k = centers.shape[0]
    for i in numba.prange(n):
        own = labels[i]
        best = np.inf
        arg = -1
        for j in range(near.shape[1]):
            c = near[own, j]
            d = _sq_to(x, i, centers, c)
            if d < best or (d == best and c < arg):
                best, arg = d, c
        # exact iff the nearest centre outside the list is >= 2 d(x, own): bound >= 4 d2(x, own)
        if bound[own] < 4.0 * _sq_to(x, i, centers, own):
            for c in range(k):
                d = _sq_to(x, i, centers, c)
                if d < best or (d == best and c < arg):
                    best, arg = d, c
        out_labels[i] = arg
        out_d2[i] = best


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
    """Exact nearest centre per row, searching ``near[labels[i]]`` first (see TorchKMeans._assign)."""
    out_labels = np.empty(x.shape[0], np.int64)
    out_d2 = np.empty(x.shape[0], np.float64)
    with numba.parallel_chunksize(CHUNK):
        _assign_pruned(x.contiguous().numpy(), centers.contiguous().numpy(), labels.numpy(),
                       near.contiguous().numpy(), bound.double().numpy(), out_labels, out_d2)  # fmt: skip
    return torch.from_numpy(out_labels), torch.from_numpy(out_d2).to(x.dtype)


@numba.njit(parallel=True, cache=True)
def _seed_gains(x, d2, cand, out):  # pragma: no cover - compiled
    for c in numba.prange(cand.shape[0]):
        g = 0.0
        for i in range(x.shape[0]):
            d = _sq_to(x, i, cand, c)
            if d < d2[i]:
                g += d2[i] - d
        out[c] = g


@numba.njit(parallel=True, cache=True)
def _seed_update(x, d2, new):  # pragma: no cover - compiled
    for i in numba.prange(x.shape[0]):
        best = d2[i]
        for c in range(new.shape[0]):
            d = _sq_to(x, i, new, c)
            if d < best:
                best = d
        d2[i] = best


def seed_gains_cpu(x: torch.Tensor, d2: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """How much each candidate alone lowers the potential: sum_i max(0, d2_i - |x_i - c|^2), float64."""
    out = np.empty(cand.shape[0], np.float64)
    _seed_gains(x.contiguous().numpy(), d2.numpy(), cand.contiguous().numpy(), out)
    return torch.from_numpy(out)


def seed_update_cpu(x: torch.Tensor, d2: torch.Tensor, new: torch.Tensor) -> None:
    """``d2`` (float64, in place) = min(d2, squared distance to the nearest row of ``new``)."""
    with numba.parallel_chunksize(CHUNK):
        _seed_update(x.contiguous().numpy(), d2.numpy(), new.contiguous().numpy())
