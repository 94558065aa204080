"""UMAP fitted by umap-learn on the (small) memory bank, with a transform vectorised in torch.

umap-learn's ``transform`` embeds new points one edge at a time in numba (about 1,000 points/s
on two cores), which dominates a selection cycle over a pool of 10^5-10^6 superpixels. The bank
is small (C x T <= ~11k points), so fitting stays with umap-learn; :meth:`TorchUMAP.transform`
re-implements umap-learn 0.5's transform step for step, on any torch device:

1. kNN of each new point among the fitted points (:mod:`fastal.select.knn`: exact below 4,096
   fitted points, a bf16 screen with exact re-ranking above, where umap-learn queries its
   approximate NNDescent index),
2. ``smooth_knn_dist`` (binary search for sigma, rho with ``local_connectivity - 1``) and the
   bipartite membership strengths,
3. initialisation at the membership-weighted mean of the neighbours' embedding,
4. ``n_epochs`` of SGD (``n_epochs // 3`` of the fit's, or 100 / 30 for <= / > 10,000 new points)
   against the fixed bank embedding: edges below ``max / n_epochs`` dropped, the same
   epochs-per-sample schedule, negative sampling rate, learning rate ``lr / 4`` decaying
   linearly, gradients clipped at 4.

On the CPU the SGD runs as a numba loop per point (:mod:`fastal.select.umap_sgd_cpu`) in
umap-learn's exact update order. The tensor version below (CUDA, or ``sgd="torch"``) has one
deliberate difference: umap-learn moves a point after every sampled edge and every negative
sample in turn; here each epoch evaluates all of a point's sampled edges at its position at the
start of the epoch (negatives at the position after their edge's attraction step) and applies
the sum, so an epoch is a few tensor operations over all edges instead of a sequential loop.
The steps are small (learning rate <= 0.25, clipped), and the test against umap-learn's own
transform checks that neighbourhoods and clusters agree. Negative samples come from a torch
generator instead of umap-learn's tausworthe streams: same distribution, different draws.
"""

from __future__ import annotations

import numpy as np
import torch

from fastal.errors import FastalError
from fastal.select.knn import knn_search
from fastal.select.umap_params import UMAPParams, translate_umap_params

_SMOOTH_K_TOLERANCE = 1e-5  # umap_.SMOOTH_K_TOLERANCE
_MIN_K_DIST_SCALE = 1e-3  # umap_.MIN_K_DIST_SCALE
_DISCONNECTION = {"cosine": 2.0, "euclidean": float("inf")}  # umap_.DISCONNECTION_DISTANCES


def smooth_knn_dist(
    dists: torch.Tensor, k: float, local_connectivity: float = 1.0, n_iter: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """umap-learn's ``smooth_knn_dist`` for sorted kNN distances (N, K): (sigma (N,), rho (N,)).

    Vectorised over rows. sigma is any value whose kernel sum is within umap-learn's tolerance of
    log2(k) (Newton; umap-learn's bisection for rows Newton leaves unsettled), then floored as in
    umap-learn.
    """
    n, kk = dists.shape
    target = float(np.log2(k))
    dev = dists.device
    # rho: the local_connectivity-th smallest non-zero distance (interpolated).
    n_zero = (dists <= 0).sum(1)  # distances are sorted, so the non-zero ones are a suffix
    n_nonzero = kk - n_zero
    rho = torch.zeros(n, dtype=torch.float32, device=dev)
    index = int(np.floor(local_connectivity))
    interp = local_connectivity - index
    enough = n_nonzero >= local_connectivity

    def nz(m: int) -> torch.Tensor:  # the m-th non-zero distance of each row (clamped in range)
        col = (n_zero + m).clamp(max=kk - 1)
        return dists.gather(1, col[:, None])[:, 0]

    if index > 0:
        r = nz(index - 1)
        if interp > _SMOOTH_K_TOLERANCE:
            r = r + interp * (nz(index) - r)
    else:
        r = interp * nz(0)
    rho = torch.where(enough, r, rho)
    some = (~enough) & (n_nonzero > 0)
    rho = torch.where(some, dists[:, -1], rho)  # fewer than needed: the largest distance

    d = dists[:, 1:] - rho[:, None]  # umap-learn's sum skips the first neighbour
    mid = _newton_sigma(d, target)
    psum = torch.where(d > 0, torch.exp(-(d / mid[:, None])), torch.ones_like(d)).sum(1)
    left = ((psum - target).abs() >= _SMOOTH_K_TOLERANCE).nonzero()[:, 0]
    if left.numel():  # rows Newton did not settle: umap-learn's own bisection
        mid[left] = _bisect_sigma(d[left], target, n_iter)
    floor_row = _MIN_K_DIST_SCALE * dists.mean(1)
    floor_all = _MIN_K_DIST_SCALE * dists.mean()
    sigma = torch.where(rho > 0, torch.maximum(mid, floor_row), torch.maximum(mid, floor_all))
    return sigma, rho


def _newton_sigma(d: torch.Tensor, target: float, n_iter: int = 12) -> torch.Tensor:
    """Safeguarded Newton on log(sigma) for sum_j exp(-d_j / sigma) = target (terms with d <= 0 count 1).

    umap-learn bisects (up to 64 steps) until the sum is within 1e-5 of the target; any sigma within
    that tolerance gives the same weights to ~1e-5, and Newton gets there in a handful of steps.
    """
    pos = d > 0
    dp = torch.where(pos, d, torch.zeros_like(d))
    n_one = (~pos).sum(1).to(d.dtype)
    sigma = (dp.sum(1) / pos.sum(1).clamp_min(1)).clamp_min(1e-12)  # start at the mean distance
    for _ in range(n_iter):
        e = torch.where(pos, torch.exp(-dp / sigma[:, None]), torch.zeros_like(dp))
        g = n_one + e.sum(1) - target
        slope = (e * dp).sum(1) / sigma  # d(sum) / d(log sigma) > 0
        step = torch.where(g.abs() < _SMOOTH_K_TOLERANCE, torch.zeros_like(g), (g / slope).nan_to_num(0.0))
        sigma = sigma * torch.exp(-step.clamp(-2.0, 2.0))
    return sigma


def _bisect_sigma(d: torch.Tensor, target: float, n_iter: int) -> torch.Tensor:
    """umap-learn's bisection for sigma, vectorised over rows (each row freezes once converged)."""
    n, dev = d.shape[0], d.device
    lo = torch.zeros(n, dtype=torch.float32, device=dev)
    hi = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
    mid = torch.ones(n, dtype=torch.float32, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    for _ in range(n_iter):
        psum = torch.where(d > 0, torch.exp(-(d / mid[:, None])), torch.ones_like(d)).sum(1)
        active &= (psum - target).abs() >= _SMOOTH_K_TOLERANCE
        if not bool(active.any()):  # host sync: stop once every row has converged
            break
        over = active & (psum > target)
        under = active & ~(psum > target)
        hi = torch.where(over, mid, hi)
        lo = torch.where(under, mid, lo)
        mid = torch.where(over, (lo + hi) / 2, mid)
        mid = torch.where(under, torch.where(torch.isinf(hi), mid * 2, (lo + hi) / 2), mid)
    return mid


def membership_weights(dists: torch.Tensor, sigma: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Bipartite membership strengths (umap-learn's ``compute_membership_strengths``), (N, K)."""
    d = dists - rho[:, None]
    w = torch.exp(-(d / sigma[:, None]))
    return torch.where((d <= 0) | (sigma[:, None] == 0), torch.ones_like(w), w)


def init_from_neighbours(w: torch.Tensor, idx: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """umap-learn's ``init_graph_transform``: weighted mean of the neighbours' embedding.

    A weight of exactly 1 (a duplicate of a bank point) places the point on that bank point
    (the lowest bank index wins, as in umap-learn's sorted CSR rows); a row without edges is NaN.
    """
    total = w.sum(1, keepdim=True)
    out = (w[:, :, None] * embedding[idx]).sum(1) / total  # (N, dim)
    is_one = w == 1
    if bool(is_one.any()):  # host sync; rare (duplicates of bank points)
        rows = is_one.any(1)
        first = torch.where(is_one, idx, torch.full_like(idx, torch.iinfo(torch.int64).max)).amin(1)
        out[rows] = embedding[first[rows]]
    out[total[:, 0] == 0] = float("nan")
    return out


def _sq_norm(diff: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norm (E, 1); a matmul with ones beats a size-2 reduction on the CPU."""
    sq = diff * diff
    return sq @ torch.ones(diff.shape[1], 1, dtype=diff.dtype, device=diff.device)


def _grad_attract(diff: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Clipped attractive gradient for ``diff = current - other`` (E, dim)."""
    d2 = _sq_norm(diff)
    pow_b = torch.exp(b * torch.log(d2))  # d2^b; exp/log is faster than pow on the CPU
    coeff = -2.0 * a * b * pow_b / (d2 * (a * pow_b + 1.0))  # d2^(b-1) = d2^b / d2
    coeff = torch.where(d2 > 0, coeff, torch.zeros_like(coeff))
    return (coeff * diff).clamp_(-4.0, 4.0)


def _grad_repel(diff: torch.Tensor, a: float, b: float, gamma: float) -> torch.Tensor:
    """Clipped repulsive gradient of a negative sample for ``diff = current - other``."""
    d2 = _sq_norm(diff)
    coeff = (2.0 * gamma * b) / ((0.001 + d2) * (a * torch.exp(b * torch.log(d2)) + 1.0))
    coeff = torch.where(d2 > 0, coeff, torch.zeros_like(coeff))
    return (coeff * diff).clamp_(-4.0, 4.0)


def optimize_transform(
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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SGD of new points ``head`` (N, dim) against the fixed ``tail`` (M, dim); edges (N, K).

    ``w`` holds the pruned weights (0 = no edge). Returns the optimised ``head`` (updated in place).
    """
    n_vertices = tail.shape[0]
    k = idx.shape[1]
    edge = (w > 0).reshape(-1).nonzero()[:, 0]  # flat edge list, (E,)
    src = edge // k  # the new point
    dst = idx.reshape(-1)[edge]  # its bank neighbour
    we = w.reshape(-1)[edge]
    # make_epochs_per_sample: float32 ratio, float64 schedule (as umap-learn).
    n_samples = n_epochs * (we / we.max())
    eps = float(n_epochs) / n_samples.double()
    eps_neg = eps / negative_sample_rate
    next_sample = eps.clone()
    next_neg = eps_neg.clone()
    alpha = initial_alpha
    for n in range(n_epochs):
        act = next_sample <= n
        sel = act.nonzero()[:, 0]  # this epoch's edges
        r = src[sel]
        cur = head.index_select(0, r)
        step = _grad_attract(cur - tail.index_select(0, dst[sel]), a, b).mul_(alpha)  # (E_n, dim)
        next_sample = torch.where(act, next_sample + eps, next_sample)
        n_neg = torch.where(act, ((n - next_neg) / eps_neg).trunc(), 0.0)  # int() in umap-learn
        next_neg = next_neg + n_neg * eps_neg  # also when negative, as umap-learn does
        # Negatives of an edge are drawn where its attraction step left the point, as in umap-learn.
        e = torch.repeat_interleave(n_neg[sel].clamp_min(0).long())
        neg = torch.randint(n_vertices, (e.numel(),), device=head.device, generator=generator)
        pos = (cur + step).index_select(0, e)
        push = _grad_repel(pos - tail.index_select(0, neg), a, b, gamma).mul_(alpha)
        head.index_add_(0, r, step).index_add_(0, r.index_select(0, e), push)
        alpha = initial_alpha * (1.0 - float(n) / float(n_epochs))
    return head


class TorchUMAP:
    """UMAP with scikit-learn's shape: fit on the bank (umap-learn), transform in torch.

    Example::

        emb = TorchUMAP(UMAPParams(random_state=0)).fit(bank).transform(pool)  # (N, 2), pool's device
    """

    def __init__(self, params: UMAPParams | None = None, chunk_size: int = 8192, sgd: str = "auto") -> None:
        self.params = params
        self.chunk_size = chunk_size
        self.sgd = sgd  # "auto": numba loop on CPU, tensor epochs elsewhere; "torch": tensor epochs everywhere

    def fit(self, x: torch.Tensor) -> TorchUMAP:
        """Fit umap-learn on ``x`` (M, D); keeps the fitted points and embedding on ``x``'s device."""
        import warnings

        import umap

        params = self.params or UMAPParams()
        kw = translate_umap_params(params, "torch")
        if x.ndim != 2 or x.shape[0] <= params.n_neighbors:
            raise FastalError(
                f"UMAP fit: need a (M, D) bank with M > n_neighbors = {params.n_neighbors}, got {tuple(x.shape)}"
            )
        with warnings.catch_warnings():  # "n_jobs overridden by random_state" and similar chatter
            warnings.simplefilter("ignore", UserWarning)
            self.umap_ = umap.UMAP(**kw).fit(x.detach().float().cpu().numpy())  # host copy: bank is small
        self.fit_data_ = x.detach().float()
        self.embedding_ = torch.from_numpy(np.ascontiguousarray(self.umap_.embedding_, dtype=np.float32)).to(x.device)
        self.a_, self.b_ = float(self.umap_._a), float(self.umap_._b)
        self.params_ = params
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` (N, D) next to the fitted bank: (N, n_components) float32 on ``x``'s device."""
        if not hasattr(self, "embedding_"):
            raise FastalError("TorchUMAP.transform called before fit")
        if x.ndim != 2 or x.shape[1] != self.fit_data_.shape[1]:
            raise FastalError(f"UMAP transform: expected (N, {self.fit_data_.shape[1]}), got {tuple(x.shape)}")
        p = self.params_
        ref = self.fit_data_.to(x.device)
        tail = self.embedding_.to(x.device)
        k = p.n_neighbors
        dists, idx = knn_search(x, ref, k, p.metric, self.chunk_size)
        disconnected = dists >= _DISCONNECTION[p.metric]
        sigma, rho = smooth_knn_dist(dists, float(k), local_connectivity=max(0.0, p.local_connectivity - 1.0))
        w = membership_weights(dists, sigma, rho)
        w = torch.where(disconnected, torch.zeros_like(w), w)
        head = init_from_neighbours(w, idx, tail)
        if p.n_epochs is None:
            n_epochs = 100 if x.shape[0] <= 10000 else 30
        else:
            n_epochs = int(p.n_epochs // 3.0)
        w = torch.where(w < w.max() / float(n_epochs), torch.zeros_like(w), w)
        kw = dict(gamma=p.repulsion_strength, initial_alpha=p.learning_rate / 4.0,
                  negative_sample_rate=p.negative_sample_rate)  # fmt: skip
        if self.sgd == "auto" and x.device.type == "cpu":
            from fastal.select.umap_sgd_cpu import optimize_transform_cpu

            return optimize_transform_cpu(head, tail, idx, w, n_epochs, self.a_, self.b_, seed=p.transform_seed, **kw)
        gen = torch.Generator(device=x.device).manual_seed(p.transform_seed)
        return optimize_transform(head, tail, idx, w, n_epochs, self.a_, self.b_, generator=gen, **kw)
