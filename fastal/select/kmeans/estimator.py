"""KMeans in torch for k in the tens of thousands: D^2 seeding in rounds, pruned Lloyd iterations.

Seeding: k-means++ picks k seeds one after the other, each a pass over the data, which at k in
the tens of thousands dominates the selection. Here seeds are drawn by D^2 weighting in a few dozen rounds (as in
k-means||, Bahmani et al. 2012, which cuML's scalable k-means++ implements), on a random sample
of the points: the first rounds draw 1, 2, 4, ... seeds, later ones ``k / rounds`` each, without
replacement (Gumbel top-k), the best half of twice as many candidates (greedy, as scikit-learn's
k-means++ keeps the best of 2 + ln k per seed; rounds of one seed do exactly that), and the
distances are updated once per round. Lloyd's
iterations then run on every point. tests/test_select_kmeans.py holds the inertia within 3 %
of scikit-learn's greedy k-means++.

Lloyd's assignment never holds the N x k distances. Centres move little between iterations, so
each point is first compared with the ``n_candidates`` centres nearest to its current centre c;
that answer is exact whenever the nearest centre outside the list is at least 2 d(x, c) from c
(triangle inequality). Points failing the test get a chunked full scan. On CPU tensors of low
dimension (the UMAP embedding) the pruned assignment and the seeding's distance passes are numba
loops, and the full assignment, the points failing the test, the seeding's nearest candidates and
the centres' neighbour lists scipy k-d tree queries (:mod:`fastal.select.kmeans.cpu`: at D = 2 a
matmul form spends its time writing (n, b) blocks, and with k a share of the points any scan of
every centre grows as the points squared); the points are fitted in Morton order, so that near
points read the same centres. In high dimension the pruning rarely holds and the scalar loop loses to BLAS, so there
Lloyd's iterations keep Yinyang group bounds and measure (numba, vectorised over D) only the
groups of centres the bounds leave open (:mod:`fastal.select.kmeans.bounds`). The choice is made once per fit
(:func:`assignment_ops`).

On CUDA nothing waits for the host: the points failing the pruning test are compacted by top-k
into at most ``unsure_cap`` rows per iteration (beyond that they keep the best of their
candidates), and convergence is read from a one-byte flag copied asynchronously into pinned
memory, which the host polls without blocking: the loop stops a few iterations after the
device converged, never before. Deterministic on CPU for a seed (CUDA's index_add uses atomics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastal.errors import FastalError
from fastal.select.distances import sq_dists, sq_dists_less_row_norm

if TYPE_CHECKING:
    from fastal.select.kmeans.bounds import GroupBounds

NUMBA_MAX_DIM = 4  # CPU tensors of more columns use the matmul paths (module docstring)

Assign = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def full_assign(x: torch.Tensor, centers: torch.Tensor, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row by a chunked scan: (labels int64 (N,), squared distance (N,))."""
    c_sq = (centers * centers).sum(1)
    c_t = centers.T.contiguous()
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    d2 = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        xs = x[s : s + chunk_size]
        # |c|^2 - 2 x.c orders the centres; |x|^2 is added to the minimum only.
        best, arg = sq_dists_less_row_norm(xs, c_t, c_sq).min(1)
        labels[s : s + chunk_size] = arg
        d2[s : s + chunk_size] = (best + (xs * xs).sum(1)).clamp_min_(0.0)
    return labels, d2


def _round_sizes(k: int, rounds: int) -> list[int]:
    """Seeds per round after the first: 1, 2, 4, ... up to ceil(k / rounds), summing to k - 1."""
    cap = max(1, -(-k // rounds))
    sizes, left, b = [], k - 1, 1
    while left > 0:
        sizes.append(min(b, cap, left))
        left -= sizes[-1]
        b *= 2
    return sizes


@dataclass(frozen=True)
class AssignmentOps:
    """How a fit measures distances: nearest centres (``full(x, centers)``, ``pruned(x, centers,
    labels, near, bound)``, each centre's ``near(centers, m)`` list) and the seeding's ``seed_gains(x, d2, cand)`` / ``seed_update(x, d2, new)``."""

    full: Assign
    pruned: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None  # None: always scan in full
    near: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # (centres, m) -> (near, bound)
    seed_gains: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    seed_update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
    seed_dtype: torch.dtype = torch.float32  # of the seeding's squared distances
    bounded: bool = False  # Lloyd's iterations through Yinyang group bounds (kmeans.bounds)
    candidates: int = 32  # n_candidates when TorchKMeans leaves it None
    order: Callable[[torch.Tensor], torch.Tensor] | None = None  # a locality-preserving permutation of the points


def seed_in_rounds(x: torch.Tensor, k: int, generator: torch.Generator, ops: AssignmentOps, rounds: int = 32) -> torch.Tensor:
    """k seeds (k, D) drawn by D^2 weighting in ``rounds``-ish rounds (module docstring).

    Each round draws candidates without replacement with probability proportional to the squared
    distance to the seeds so far and keeps those that alone lower the potential most: a round of
    one seed is scikit-learn's greedy k-means++ (the best of 2 + ln k candidates), so that for
    k <= ``rounds`` this is scikit-learn's seeding; larger rounds keep the best half of 2 b.
    """
    n, dev = x.shape[0], x.device
    trials = 2 + int(math.log(k))
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=dev)
    centers[:1] = x.index_select(0, torch.randint(n, (1,), generator=generator, device=dev))
    d2 = torch.full((n,), float("inf"), dtype=ops.seed_dtype, device=dev)
    ops.seed_update(x, d2, centers[:1])
    filled = 1
    for b in _round_sizes(k, rounds):
        # Top of D^2 / Exp(1) (the Gumbel top-k trick): draws without replacement, proportional
        # to D^2, with no host sync; ``per_seed`` candidates per seed to choose from.
        per_seed = trials if b == 1 else 2
        keys = d2 / torch.empty_like(d2).exponential_(generator=generator)
        cand = x.index_select(0, torch.topk(keys, min(n, b * per_seed)).indices)
        new = cand.index_select(0, torch.topk(ops.seed_gains(x, d2, cand), b).indices)  # b = 1: scikit-learn's rule
        centers[filled : filled + b] = new
        filled += b
        ops.seed_update(x, d2, new)
    return centers


def _seed_gains(x: torch.Tensor, d2: torch.Tensor, cand: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """How much each candidate alone lowers the potential (chunked matmul)."""
    c_sq = (cand * cand).sum(1)
    gain = torch.zeros(cand.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        gain += (d2[s : s + chunk_size, None] - sq_dists(x[s : s + chunk_size], cand.T, c_sq)).clamp_min_(0.0).sum(0)
    return gain


def _seed_update(x: torch.Tensor, d2: torch.Tensor, new: torch.Tensor, chunk_size: int) -> None:
    """``d2`` = min(d2, squared distance to the nearest row of ``new``), in place (chunked matmul)."""
    n_sq = (new * new).sum(1)
    for s in range(0, x.shape[0], chunk_size):
        d2[s : s + chunk_size] = torch.minimum(d2[s : s + chunk_size], sq_dists(x[s : s + chunk_size], new.T, n_sq).amin(1))


def near_centres(centers: torch.Tensor, m: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` centres nearest each centre (itself first) and the squared distance to the next
    one: (near (k, m) int64, bound (k,)); (chunk, k) blocks at a time, k x k would not fit for k ~ 10^5."""
    k = centers.shape[0]
    c_sq = (centers * centers).sum(1)
    near = torch.empty(k, m, dtype=torch.int64, device=centers.device)
    bound = torch.empty(k, dtype=centers.dtype, device=centers.device)
    for s in range(0, k, chunk_size):
        near_d, idx = torch.topk(sq_dists(centers[s : s + chunk_size], centers.T, c_sq), m + 1, dim=1, largest=False)
        near[s : s + chunk_size] = idx[:, :m]
        bound[s : s + chunk_size] = near_d[:, m]  # nearest centre outside the list
    return near, bound


def assignment_ops(
    x: torch.Tensor, use_numba: bool, chunk_size: int, unsure_cap: int, bounds: bool = True
) -> AssignmentOps:
    """The one device/dimension choice of a fit: numba loops for low-dimensional CPU tensors,
    group bounds (``bounds``) or a BLAS scan for high-dimensional CPU tensors, tensor code
    elsewhere (module docstring)."""
    def full(xs, c):
        return full_assign(xs, c, chunk_size)

    def gains(xs, d2, cand):
        return _seed_gains(xs, d2, cand, chunk_size)

    def update(xs, d2, new):
        _seed_update(xs, d2, new, chunk_size)

    def near(c, m):
        return near_centres(c, m, chunk_size)

    if use_numba and x.device.type == "cpu":
        if x.shape[1] > NUMBA_MAX_DIM:
            return AssignmentOps(full, None, near, gains, update, bounded=bounds)
        from fastal.select.kmeans import cpu

        return AssignmentOps(cpu.assign_full_cpu, cpu.assign_pruned_cpu, cpu.near_centres_cpu, cpu.seed_gains_cpu,
                             cpu.seed_update_cpu, torch.float64, candidates=cpu.CANDIDATES,
                             order=cpu.spatial_order)  # fmt: skip

    def pruned(xs, c, labels, near, bound):
        return pruned_assign(xs, c, labels, near, bound, chunk_size, unsure_cap)

    return AssignmentOps(full, pruned, near, gains, update)


def pruned_assign(
    x: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    near: torch.Tensor,
    bound: torch.Tensor,
    chunk_size: int = 4096,
    unsure_cap: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre per row among ``near[labels]`` (N, m), then a full scan for the rows whose
    answer the bound cannot prove (at most ``unsure_cap`` of them, the most doubtful first)."""
    m = near.shape[1]
    new_labels = torch.empty_like(labels)
    new_d2 = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    margin = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    rows = max(1, chunk_size * 64 // m)
    for s in range(0, x.shape[0], rows):
        xs, ls = x[s : s + rows], labels[s : s + rows]
        cand = near[ls]  # (n, m)
        d2 = ((centers[cand] - xs[:, None, :]) ** 2).sum(2)  # (n, m)
        best, arg = d2.min(1)
        new_labels[s : s + rows] = cand.gather(1, arg[:, None])[:, 0]
        new_d2[s : s + rows] = best
        # exact iff d(c, c_out) >= 2 d(x, c)  <=>  bound >= 4 d2(x, c); d2[:, 0] is d2(x, c)
        margin[s : s + rows] = 4.0 * d2[:, 0] - bound[ls]
    # Fixed-size compaction (no host-side count): rows with margin <= 0 are proven already and
    # come back from the scan unchanged.
    top = torch.topk(margin, min(unsure_cap, x.shape[0])).indices
    fl, fd = full_assign(x.index_select(0, top), centers, chunk_size)
    new_labels[top] = fl
    new_d2[top] = fd
    return new_labels, new_d2


class _ConvergenceFlag:
    """Reads a device boolean without waiting: CPU reads it at once; CUDA copies it into pinned
    memory asynchronously and reports it once the copy has landed (a few iterations late)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def set_and_poll(self, flag: torch.Tensor) -> bool:
        if not self.cuda:
            return bool(flag)
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))
        while self.pending and self.pending[0][1].query():  # landed copies, oldest first
            host, _ = self.pending.pop(0)
            if bool(host):
                return True
        return False


class TorchKMeans:
    """Lloyd's KMeans with scikit-learn's shape (``fit`` -> self, ``predict``, ``fit_predict``).

    Fitted attributes: ``cluster_centers_`` (k, D), ``labels_`` (N,) int64, ``inertia_`` (float;
    kept on the device until read), ``n_iter_``.
    Seeds: D^2 sampling in about ``seed_rounds`` rounds on a random sample of
    max(``seed_sample``, 4 k) points (None: all). Converges like scikit-learn: labels unchanged,
    or the squared centre shift below ``tol`` x mean feature variance. An empty cluster is moved
    onto one of the points farthest from their centres.

    Example::

        km = TorchKMeans(n_clusters=2500, random_state=0).fit(emb)  # emb (N, 2) on any device
        km.labels_  # (N,) int64, same device
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        max_iter: int = 100,
        tol: float = 1e-4,
        n_candidates: int | None = None,
        seed_sample: int | None = 16_384,
        seed_rounds: int = 32,
        random_state: int = 0,
        chunk_size: int = 4096,
        unsure_cap: int | None = None,
        use_numba: bool = True,
        bounds: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.n_candidates = n_candidates  # None: the path's (8 on the 2-D CPU path, 32 elsewhere)
        self.seed_sample = seed_sample
        self.seed_rounds = seed_rounds
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.unsure_cap = unsure_cap  # tensor path: most full-scanned points per iteration (None: N / 32)
        self.use_numba = use_numba  # low-dimensional CPU tensors: numba kernels; False: the tensor code
        self.bounds = bounds  # high-dimensional CPU tensors: Yinyang group bounds; False: full scans

    def _assign(
        self, ops: AssignmentOps, x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest centre, searching the neighbours of each point's current centre first."""
        k = centers.shape[0]
        m = min(ops.candidates if self.n_candidates is None else self.n_candidates, k)
        if m == k or ops.pruned is None:
            return ops.full(x, centers)
        return ops.pruned(x, centers, labels, *ops.near(centers, m))

    def _group_bounds(self, x: torch.Tensor, centers: torch.Tensor) -> GroupBounds:
        """Yinyang's state for ``x``: the seeds grouped by a short KMeans of their own (the paper's
        5 iterations), group ids made dense."""
        from fastal.select.kmeans.bounds import GroupBounds, n_groups  # numba: CPU fits only

        t = n_groups(x.shape[0], centers.shape[0])
        group = torch.zeros(centers.shape[0], dtype=torch.int64)
        if t > 1:
            grouping = TorchKMeans(t, max_iter=5, random_state=self.random_state, chunk_size=self.chunk_size, bounds=False)
            group = torch.unique(grouping.fit(centers).labels_, return_inverse=True)[1]
        return GroupBounds(x, centers, group)

    def fit(self, x: torch.Tensor) -> TorchKMeans:
        """Cluster ``x`` (N, D) float; N must be at least ``n_clusters``. Returns self."""
        k = self.n_clusters
        if x.ndim != 2 or x.shape[0] < k or k < 1:
            raise FastalError(f"KMeans: need (N, D) with N >= n_clusters = {k} >= 1, got {tuple(x.shape)}")
        x = x.float().contiguous()
        n, dev = x.shape[0], x.device
        cap = max(1024, n // 32) if self.unsure_cap is None else self.unsure_cap
        ops = assignment_ops(x, self.use_numba, self.chunk_size, cap, self.bounds)
        perm = ops.order(x) if ops.order is not None else None
        if perm is not None:
            x = x.index_select(0, perm)
        gen = torch.Generator(device=dev).manual_seed(self.random_state)
        n_seed = n if self.seed_sample is None else min(n, max(self.seed_sample, 4 * k))
        if n_seed == n:
            sample = x
        else:  # in the points' order: each seeding pass then reads the points in runs
            sample = x.index_select(0, torch.randperm(n, generator=gen, device=dev)[:n_seed].sort().values)
        centers = seed_in_rounds(sample, k, gen, ops, self.seed_rounds)
        tracker = self._group_bounds(x, centers) if ops.bounded else None
        labels, d2 = (tracker.labels, tracker.d2) if tracker is not None else ops.full(x, centers)
        tol = self.tol * x.var(0).mean()  # 0-d tensor: compared on the device
        n_far = min(k, n, 1024)  # empty clusters refilled per iteration (more stay where they were)
        flag = _ConvergenceFlag(dev)
        ones = torch.ones(n, dtype=x.dtype, device=dev)
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            # index_add_, not bincount: CUDA's bincount reads the largest label on the host.
            counts = torch.zeros(k, dtype=x.dtype, device=dev).index_add_(0, labels, ones)
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            new_centers = sums / counts.clamp_min(1)[:, None]
            # Empty clusters move onto the points farthest from their centres (the i-th empty
            # cluster onto the i-th farthest point), without a host-side count.
            empty = counts == 0
            rank = torch.cumsum(empty, 0) - 1
            far = x.index_select(0, torch.topk(d2, n_far).indices)
            refill = empty & (rank < n_far)
            new_centers = torch.where(refill[:, None], far[rank.clamp(0, n_far - 1)], new_centers)
            new_centers = torch.where((empty & ~refill)[:, None], centers, new_centers)
            shift = ((new_centers - centers) ** 2).sum()
            centers = new_centers
            new_labels, d2 = tracker.assign(centers) if tracker is not None else self._assign(ops, x, centers, labels)
            done = (new_labels == labels).all() | (shift <= tol)
            labels = new_labels
            if flag.set_and_poll(done):
                break
        if perm is not None:  # back to the caller's order
            labels = torch.empty_like(labels).index_copy_(0, perm, labels)
        self.cluster_centers_ = centers
        self.labels_ = labels
        self._inertia = d2.double().sum()  # stays on the device until inertia_ is read
        self.n_iter_ = n_iter
        return self

    @property
    def inertia_(self) -> float:
        """Sum of squared distances to the nearest centre (reading it syncs with the device)."""
        return float(self._inertia)

    def fit_predict(self, x: torch.Tensor) -> torch.Tensor:
        """``fit(x).labels_``."""
        return self.fit(x).labels_

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest fitted centre of each row of ``x`` (N, D): int64 (N,)."""
        return full_assign(x.float(), self.cluster_centers_, self.chunk_size)[0]
