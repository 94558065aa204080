"""KMeans in torch for k in the thousands: k-means++ seeding and exact, pruned Lloyd iterations.

Lloyd's assignment step is the cost: N x k distances per iteration (250k x 2,500 = 6 x 10^8).
Centres move little between iterations, so each point is first compared with the ``n_candidates``
centres nearest to its current centre c. That answer is exact whenever the nearest centre outside
the list is at least 2 d(x, c) from c (triangle inequality: then no outside centre can beat c);
the few points that fail the test get a full chunked matmul scan. Runs on CPU and CUDA; on CPU
tensors of low dimension (the UMAP embedding) the seeding and the assignment run as numba loops
(:mod:`fastal.select.kmeans_cpu`). In high dimension the pruning rarely holds and the scalar
loops lose to BLAS: on one core, 40k points x 800 centres, a full numba scan took 5.8 s at
D = 128 against 0.24 s by matmul, k-means++ 5.7 s against 0.7 s (at D = 2 they tie), so there
the assignment is a plain chunked matmul scan and the seeding the tensor version.
Deterministic on CPU for a seed (CUDA's index_add uses atomics). faiss-cpu was not tried (not
installed); at 250k points and k = 2,500 this takes ~4-10 s on 2 shared cores, scikit-learn's
KMeans see benchmarks/results/selection_cpu.json.
"""

from __future__ import annotations

import math

import torch

from fastal.errors import FastalError


NUMBA_MAX_DIM = 4  # CPU tensors of more columns use the matmul paths (measured: module docstring)


def _sq_dists(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """Squared euclidean distances (n, k) by matmul, clamped at 0."""
    return torch.addmm(c_sq, x, c.T, alpha=-2.0).add_((x * x).sum(1, keepdim=True)).clamp_min_(0.0)


def full_assign(x: torch.Tensor, centers: torch.Tensor, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row by a chunked scan: (labels int64 (N,), squared distance (N,))."""
    c_sq = (centers * centers).sum(1)
    c_t = centers.T.contiguous()
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    d2 = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        xs = x[s : s + chunk_size]
        # |c|^2 - 2 x.c orders the centres; |x|^2 is added to the minimum only.
        best, arg = torch.addmm(c_sq, xs, c_t, alpha=-2.0).min(1)
        labels[s : s + chunk_size] = arg
        d2[s : s + chunk_size] = (best + (xs * xs).sum(1)).clamp_min_(0.0)
    return labels, d2


def kmeans_plusplus(
    x: torch.Tensor, k: int, generator: torch.Generator, n_local_trials: int = 1, use_numba: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means++ seeding (greedy with ``n_local_trials`` candidates per step, as scikit-learn).

    Returns (centres (k, D), labels of the nearest seed (N,), squared distance to it (N,)), so that
    the first Lloyd step needs no full scan. CPU tensors go to the numba loop of
    :mod:`fastal.select.kmeans_cpu`; elsewhere each step is a few tensor operations.
    """
    if use_numba and x.device.type == "cpu":
        from fastal.select.kmeans_cpu import kmeans_plusplus_cpu

        return kmeans_plusplus_cpu(x, k, generator, n_local_trials)
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centers[0] = x[first]
    x_sq = (x * x).sum(1)
    closest = (x_sq - 2.0 * (x @ x[first]) + x_sq[first]).clamp_min_(0.0)
    labels = torch.zeros(n, dtype=torch.int64, device=x.device)
    for c in range(1, k):
        # Sample candidates with probability proportional to the squared distance (D^2 weighting);
        # a float32 cumsum is precise enough to sample from and twice as fast as float64.
        cum = torch.cumsum(closest, 0)
        r = torch.rand(n_local_trials, generator=generator, device=x.device) * cum[-1]
        cand = torch.searchsorted(cum, r).clamp_(max=n - 1)
        d = torch.addmm(x_sq[cand][:, None], x[cand], x.T, alpha=-2.0).add_(x_sq).clamp_min_(0.0)  # (trials, N)
        best = 0 if n_local_trials == 1 else int(torch.minimum(closest[None], d).sum(1).argmin())
        dbest = d[best]
        labels.masked_fill_(dbest < closest, c)
        closest = torch.minimum(closest, dbest)
        centers[c] = x[cand[best]]
    return centers, labels, closest


class TorchKMeans:
    """Lloyd's KMeans with scikit-learn's shape (``fit``, ``predict``, ``fit_predict``).

    Fitted attributes: ``cluster_centers_`` (k, D), ``labels_`` (N,) int64, ``inertia_``, ``n_iter_``.
    Seeding is greedy k-means++ with ``n_local_trials`` candidates per seed (None: scikit-learn's
    2 + ln k; fewer is faster but, with k near the number of true clusters, can end 40% worse
    when a seed lands badly), on a random sample of max(``seed_sample``, 20 k) points (None: all;
    Lloyd then runs on every point; at 250k points and k = 2,500 this halves the time for +0.2%
    inertia). Converges like scikit-learn: labels unchanged, or the squared centre shift below
    ``tol`` x mean feature variance (then labels are refreshed once more so that every label is
    the nearest centre). An empty cluster is moved onto the point farthest from its centre.

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
        n_local_trials: int | None = None,
        n_candidates: int = 32,
        seed_sample: int | None = 50_000,
        random_state: int = 0,
        chunk_size: int = 4096,
        use_numba: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.n_local_trials = n_local_trials
        self.n_candidates = n_candidates
        self.seed_sample = seed_sample
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.use_numba = use_numba  # low-dimensional CPU tensors: numba kernels; False: the tensor code

    def _numba(self, x: torch.Tensor) -> bool:
        return self.use_numba and x.device.type == "cpu" and x.shape[1] <= NUMBA_MAX_DIM

    def _assign(self, x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest centre, searching the neighbours of each point's current centre first."""
        k = centers.shape[0]
        m = min(self.n_candidates, k)
        high_dim_cpu = self.use_numba and x.device.type == "cpu" and x.shape[1] > NUMBA_MAX_DIM
        if m == k or high_dim_cpu:  # high dimension: the pruning rarely holds, a BLAS scan wins
            return full_assign(x, centers, self.chunk_size)
        c_sq = (centers * centers).sum(1)
        cc = _sq_dists(centers, centers, c_sq)  # (k, k)
        near_d, near = torch.topk(cc, m + 1, dim=1, largest=False)  # the centre itself comes first
        bound = near_d[:, m]  # squared distance to the nearest centre outside the list
        near = near[:, :m]
        if self._numba(x):
            from fastal.select.kmeans_cpu import assign_pruned_cpu

            return assign_pruned_cpu(x, centers, labels, near, bound)
        new_labels = torch.empty_like(labels)
        new_d2 = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
        rows = max(1, self.chunk_size * 64 // m)
        for s in range(0, x.shape[0], rows):
            xs, ls = x[s : s + rows], labels[s : s + rows]
            cand = near[ls]  # (n, m)
            d2 = ((centers[cand] - xs[:, None, :]) ** 2).sum(2)  # (n, m)
            best, arg = d2.min(1)
            new_labels[s : s + rows] = cand.gather(1, arg[:, None])[:, 0]
            new_d2[s : s + rows] = best
            # exact iff d(c, c_out) >= 2 d(x, c)  <=>  bound >= 4 d2(x, c); d2[:, 0] is d2(x, c)
            unsure = (bound[ls] < 4.0 * d2[:, 0]).nonzero()[:, 0]
            if unsure.numel():
                fl, fd = full_assign(xs[unsure], centers, self.chunk_size)
                new_labels[s + unsure] = fl
                new_d2[s + unsure] = fd
        return new_labels, new_d2

    def fit(self, x: torch.Tensor) -> TorchKMeans:
        """Cluster ``x`` (N, D) float; N must be at least ``n_clusters``."""
        k = self.n_clusters
        if x.ndim != 2 or x.shape[0] < k or k < 1:
            raise FastalError(f"KMeans: need (N, D) with N >= n_clusters = {k} >= 1, got {tuple(x.shape)}")
        x = x.float().contiguous()
        gen = torch.Generator(device=x.device).manual_seed(self.random_state)
        trials = self.n_local_trials or 2 + int(math.log(k))
        n = x.shape[0]
        n_seed = n if self.seed_sample is None else min(n, max(self.seed_sample, 20 * k))
        if n_seed < n:
            sample = torch.randperm(n, generator=gen, device=x.device)[:n_seed]
            centers = kmeans_plusplus(x[sample], k, gen, trials, self._numba(x))[0]
            if self._numba(x):
                from fastal.select.kmeans_cpu import assign_full_cpu

                labels, d2 = assign_full_cpu(x, centers)
            else:
                labels, d2 = full_assign(x, centers, self.chunk_size)
        else:
            centers, labels, d2 = kmeans_plusplus(x, k, gen, trials, self._numba(x))
        tol = self.tol * float(x.var(0).mean())
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            empty = (counts == 0).nonzero()[:, 0]
            new_centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
            if empty.numel():  # relocate onto the points farthest from their centres
                far = torch.topk(d2, empty.numel()).indices
                new_centers[empty] = x[far]
            shift = float(((new_centers - centers) ** 2).sum())
            centers = new_centers
            new_labels, d2 = self._assign(x, centers, labels)
            changed = bool((new_labels != labels).any())  # host sync per iteration
            labels = new_labels
            if not changed or shift <= tol:
                break
        self.cluster_centers_ = centers
        self.labels_ = labels
        self.inertia_ = float(d2.double().sum())
        self.n_iter_ = n_iter
        return self

    def fit_predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.fit(x).labels_

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return full_assign(x.float(), self.cluster_centers_, self.chunk_size)[0]
