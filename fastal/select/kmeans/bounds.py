"""Exact Lloyd assignment that skips most distances in high dimension: Yinyang group bounds.

Ding et al., "Yinyang K-Means", ICML 2015. The centres are split into groups once; each point
keeps, per group, a lower bound on its distance to the group's centres other than its own. When
the centres move, a group's bounds drop by the largest move in the group (triangle inequality).
A point is rescanned only in the groups whose bound fell below its distance to its own centre
(computed exactly every iteration: D flops a point, against k D for a full scan), and only those
groups' centres are measured.

Why here: ``kmeans-entropy`` clusters the 128-D region features, where distances concentrate:
a single bound (Hamerly's) fails for most points at every iteration and the CPU path would scan
every centre, while group bounds leave a few per cent of the distances (numbers:
benchmarks/bench_kmeans.py and the docs).

Exact up to float rounding: the first scan's bounds come from the matmul form, whose rounding
is taken off them; later bounds are float32 distances and moves, so ties at that level may
resolve otherwise than a full scan would. CPU only (numba kernels); the CUDA path keeps its sync-free full scan, cheap there.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from fastal.select.distances import sq_dists_less_row_norm
from fastal.select.kmeans.cpu import CHUNK

GROUP_SIZE = 10  # centres per group (the paper's k / 10 groups)
BOUND_ENTRIES = 64 * 2**20  # most (points x groups) bounds kept: 256 MB of float32


def n_groups(n: int, k: int) -> int:
    """Groups for ``n`` points and ``k`` centres: k / GROUP_SIZE, fewer where the bounds would not fit."""
    return max(1, min(k // GROUP_SIZE, BOUND_ENTRIES // max(n, 1)))


class GroupBounds:
    """Nearest centres of ``x`` (N, D) float32 CPU, kept across Lloyd iterations.

    ``group`` (k,) int64 puts each centre in a group (ids 0..t-1, each used). The constructor
    scans every centre once; then ``assign(centers)`` after each centre update returns
    (labels (N,) int64, squared distances (N,)), exact as a full scan is (up to float rounding,
    whose ties may resolve differently), measuring only what the bounds cannot rule out.

    Example::

        gb = GroupBounds(x, centres, group)       # group: e.g. KMeans labels of the centres
        labels, d2 = gb.labels, gb.d2
        labels, d2 = gb.assign(moved_centres)     # after each centre update
    """

    def __init__(self, x: torch.Tensor, centers: torch.Tensor, group: torch.Tensor) -> None:
        self.x = x.contiguous()
        # Centres are held sorted by group, so that a group is one slice.
        self.order = torch.argsort(group, stable=True)  # (k,) centre id of each sorted slot
        self.group_of = group[self.order]  # (k,) group of each slot
        sizes = torch.bincount(self.group_of)
        self.starts = np.concatenate([[0], np.cumsum(sizes.numpy())])  # group g: slots starts[g]:starts[g + 1]
        self.c = centers[self.order].contiguous()
        n, k, t = x.shape[0], centers.shape[0], sizes.shape[0]
        self.a = torch.empty(n, dtype=torch.int64)  # slot of each point's centre
        self.u = torch.empty(n, dtype=x.dtype)  # distance to it
        self.low = torch.empty(n, t, dtype=x.dtype)  # (N, t) lower bounds on the distance to each group's others
        x_sq, c_sq, c_t = (x * x).sum(1), (self.c * self.c).sum(1), self.c.T.contiguous()
        # The matmul form's rounding (at most ~(2 D + 3) eps/2 (|x|^2 + |c|^2), large off the
        # origin) comes off the first bounds; the own distance is measured directly below.
        slack = (2 * x.shape[1] + 3) * torch.finfo(x.dtype).eps / 2 * (x_sq + c_sq.max())
        rows = max(1, 2**24 // k)  # (rows, k) distances at a time
        for s in range(0, n, rows):
            dots = sq_dists_less_row_norm(x[s : s + rows], c_t, c_sq)  # |c|^2 - 2 x.c
            row_sq = x_sq[s : s + rows] - slack[s : s + rows]
            _first_scan(dots.numpy(), row_sq.numpy(), self.starts, self.a[s : s + rows].numpy(),
                        self.low[s : s + rows].numpy())  # fmt: skip
            self.u[s : s + rows] = (self.x[s : s + rows] - self.c[self.a[s : s + rows]]).norm(dim=1)

    @property
    def labels(self) -> torch.Tensor:
        return self.order[self.a]

    @property
    def d2(self) -> torch.Tensor:
        return self.u * self.u

    def assign(self, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest of the moved ``centers`` (k, D) for every point: (labels, squared distances)."""
        c = centers[self.order].contiguous()
        move = (c - self.c).norm(dim=1)
        group_move = torch.zeros(self.low.shape[1], dtype=move.dtype).scatter_reduce_(0, self.group_of, move, "amax")
        self.c = c
        _iterate(self.x.numpy(), c.numpy(), self.starts, self.group_of.numpy(), group_move.numpy(),
                 self.a.numpy(), self.u.numpy(), self.low.numpy())  # fmt: skip
        return self.labels, self.d2


# Reassociation lets LLVM vectorise the sum over D (8.5 ns a 128-D distance on one core, 20x
# the plain loop); not the flags that assume no infinities: the bounds use them.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(fastmath=FASTMATH, cache=True)
def _dist(x, i, c, j):  # pragma: no cover - compiled
    s = np.float32(0.0)
    for d in range(x.shape[1]):
        t = x[i, d] - c[j, d]
        s += t * t
    return np.sqrt(s)


@numba.njit(parallel=True, cache=True)
def _first_scan(dots, row_sq, starts, own, low):  # pragma: no cover - compiled
    """Each row's nearest centre and, per group, the distance to its nearest other centre, from
    ``dots`` (rows, k) = |c|^2 - 2 x.c and ``row_sq`` = |x|^2: one pass over the block, where
    torch's argmin and scatter_reduce would take several."""
    t = low.shape[1]
    for b in numba.prange((dots.shape[0] + CHUNK - 1) // CHUNK):
        for i in range(b * CHUNK, min(dots.shape[0], (b + 1) * CHUNK)):
            best, best_g = np.inf, 0
            for g in range(t):  # each group's minimum, and the nearest group
                m = np.inf
                for j in range(starts[g], starts[g + 1]):
                    m = min(m, dots[i, j])
                low[i, g] = m
                if m < best:
                    best, best_g = m, g
            arg, m = -1, np.inf  # the nearest centre, and its group's minimum without it
            for j in range(starts[best_g], starts[best_g + 1]):
                if arg < 0 and dots[i, j] == best:
                    arg = j
                else:
                    m = min(m, dots[i, j])
            own[i] = arg
            low[i, best_g] = m
            for g in range(t):
                low[i, g] = np.sqrt(max(low[i, g] + row_sq[i], 0.0))


@numba.njit(parallel=True, cache=True)
def _iterate(x, c, starts, group_of, group_move, a, u, low):  # pragma: no cover - compiled
    """One Lloyd assignment: bounds moved, own distances made exact, points rescanned in the
    groups their bounds leave open (the nearer the centre found so far, the fewer), bounds set."""
    n, t = low.shape
    for b in numba.prange((n + CHUNK - 1) // CHUNK):
        for i in range(b * CHUNK, min(n, (b + 1) * CHUNK)):
            own = a[i]
            d_own = _dist(x, i, c, own)
            nearest = np.inf
            for g in range(t):
                low[i, g] -= group_move[g]
                nearest = min(nearest, low[i, g])
            u[i] = d_own
            if d_own <= nearest:
                continue
            best, best_at, best_second = d_own, own, np.inf  # best_second: in best_at's group
            for g in range(t):
                if low[i, g] >= best:
                    continue
                first, first_at, second = np.inf, -1, np.inf  # over the group's centres but own
                for j in range(starts[g], starts[g + 1]):
                    if j == own:
                        continue
                    d = _dist(x, i, c, j)
                    if d < first:
                        first, first_at, second = d, j, first
                    elif d < second:
                        second = d
                low[i, g] = first
                if first < best:
                    best, best_at, best_second = first, first_at, second
            if best_at != own:
                # the new centre leaves its group's bound; the old one joins its group's
                low[i, group_of[best_at]] = best_second
                g_own = group_of[own]
                low[i, g_own] = min(low[i, g_own], d_own)
                a[i], u[i] = best_at, best
