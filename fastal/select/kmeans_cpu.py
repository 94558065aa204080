"""CPU KMeans kernels in numba: k-means++ seeding and the pruned nearest-centre search.

k-means++ is k sequential steps; in torch each step is a dozen small tensor operations, which
on 2 shared cores costs milliseconds per step (k = 2,500 seeds: minutes). Here a step is a
cumulative sum, ``n_local_trials`` fused passes for the candidates' potentials and one update
pass, all serial: a parallel region per step waits for a descheduled thread on a loaded
machine (measured 12x slower than serial at load 5 on 2 cores). The assignment is one parallel
region per Lloyd iteration. Both are deterministic.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(inline="always")
def _sq(x, i, j):  # pragma: no cover - compiled
    s = 0.0
    for d in range(x.shape[1]):
        t = x[i, d] - x[j, d]
        s += t * t
    return s


@numba.njit(cache=True)
def _kmeans_plusplus(x, k, first, uniforms):  # pragma: no cover - compiled
    n = x.shape[0]
    trials = uniforms.shape[1]
    seeds = np.empty(k, np.int64)
    seeds[0] = first
    closest = np.empty(n, np.float64)
    labels = np.zeros(n, np.int64)
    cum = np.empty(n, np.float64)
    for i in range(n):
        closest[i] = _sq(x, i, first)
    for c in range(1, k):
        total = 0.0
        for i in range(n):
            total += closest[i]
            cum[i] = total
        best = min(np.searchsorted(cum, uniforms[c, 0] * total), n - 1)
        if trials > 1:  # greedy: the candidate that lowers the potential most (scikit-learn's rule)
            best_pot = np.inf
            for t in range(trials):
                cand = min(np.searchsorted(cum, uniforms[c, t] * total), n - 1)
                pot = 0.0
                for i in range(n):
                    pot += min(closest[i], _sq(x, i, cand))
                if pot < best_pot:
                    best_pot = pot
                    best = cand
        seeds[c] = best
        for i in range(n):
            d = _sq(x, i, best)
            if d < closest[i]:
                closest[i] = d
                labels[i] = c
    return seeds, labels, closest


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


@numba.njit(parallel=True, cache=True)
def _assign_full(x, centers, out_labels, out_d2):  # pragma: no cover - compiled
    for i in numba.prange(x.shape[0]):
        best = np.inf
        arg = -1
        for c in range(centers.shape[0]):
            d = _sq_to(x, i, centers, c)
            if d < best:
                best, arg = d, c
        out_labels[i] = arg
        out_d2[i] = best


def assign_full_cpu(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row by a full scan (lowest index on ties): (labels int64, squared distance)."""
    out_labels = np.empty(x.shape[0], np.int64)
    out_d2 = np.empty(x.shape[0], np.float64)
    _assign_full(x.contiguous().numpy(), centers.contiguous().numpy(), out_labels, out_d2)
    return torch.from_numpy(out_labels), torch.from_numpy(out_d2).to(x.dtype)


def assign_pruned_cpu(
    x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, near: torch.Tensor, bound: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest centre per row, searching ``near[labels[i]]`` first (see TorchKMeans._assign)."""
    out_labels = np.empty(x.shape[0], np.int64)
    out_d2 = np.empty(x.shape[0], np.float64)
    _assign_pruned(x.contiguous().numpy(), centers.contiguous().numpy(), labels.numpy(), near.contiguous().numpy(),
                   bound.double().numpy(), out_labels, out_d2)  # fmt: skip
    return torch.from_numpy(out_labels), torch.from_numpy(out_d2).to(x.dtype)


def kmeans_plusplus_cpu(
    x: torch.Tensor, k: int, generator: torch.Generator, n_local_trials: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`fastal.select.kmeans_torch.kmeans_plusplus` for CPU tensors."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    uniforms = torch.rand(k, n_local_trials, generator=generator, dtype=torch.float64).numpy()
    seeds, labels, closest = _kmeans_plusplus(x.contiguous().numpy(), k, first, uniforms)
    seeds = torch.from_numpy(seeds)
    return x[seeds].clone(), torch.from_numpy(labels), torch.from_numpy(closest).to(x.dtype)
