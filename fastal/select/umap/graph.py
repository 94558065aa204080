"""The pieces of a UMAP fit before its SGD, in torch on the bank's device (umap-learn 0.5 semantics).

- :func:`find_ab_params`: the curve 1 / (1 + a d^(2b)) fitted to ``min_dist`` and ``spread`` (host;
  no tensor data involved),
- :func:`fuzzy_simplicial_set`: kNN graph (exact, :mod:`fastal.select.neighbors`), :func:`smooth_knn_dist`,
  :func:`membership_weights` (a point's own entry 0) and the fuzzy union P + P^T - P o P^T (mixed with
  the intersection by ``set_op_mix_ratio``), as a fixed-size edge list: no host sync on CUDA,
- :func:`initial_layout`: umap-learn's ``init="pca"`` (the top principal axes by subspace
  iteration, then ``noisy_scale_coords``) or ``"random"``, then the [0, 10] rescaling of
  ``simplicial_set_embedding``.

``init="spectral"`` is served by the PCA layout: umap-learn's spectral layout needs sparse
eigensolvers and, on a graph of several connected components (the bank's classes usually are),
its multi-component layout; the PCA layout keeps each class contiguous, which is what the SGD
needs, and tests/test_select_umap.py checks the fitted embedding against umap-learn's spectral
fit (trustworthiness, kNN accuracy, KMeans ARI).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from fastal.select.neighbors import CellIndex, knn_search, knn_search_cells

_SMOOTH_K_TOLERANCE = 1e-5  # umap_.SMOOTH_K_TOLERANCE
_MIN_K_DIST_SCALE = 1e-3  # umap_.MIN_K_DIST_SCALE


def smooth_knn_dist(
    dists: torch.Tensor,
    k: float,
    local_connectivity: float = 1.0,
    n_iter: int = 64,
    mean_distance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """umap-learn's ``smooth_knn_dist`` for sorted kNN distances (N, K): (sigma (N,), rho (N,)).

    Vectorised over rows. sigma is any value whose kernel sum is within umap-learn's tolerance of
    log2(k) (Newton; umap-learn's bisection for rows Newton leaves unsettled), then floored as in
    umap-learn. Rows are independent but for one floor, a share of the mean of all distances:
    ``mean_distance`` gives it where ``dists`` is a chunk of the rows (None: ``dists.mean()``).
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
    unsettled = (psum - target).abs() >= _SMOOTH_K_TOLERANCE
    if dev.type != "cpu":  # no host decision: bisect every row, keep the unsettled ones
        mid = torch.where(unsettled, _bisect_sigma(d, target, n_iter, stop_early=False), mid)
    else:
        left = unsettled.nonzero()[:, 0]
        if left.numel():  # rows Newton did not settle: umap-learn's own bisection
            mid[left] = _bisect_sigma(d[left], target, n_iter)
    floor_row = _MIN_K_DIST_SCALE * dists.mean(1)
    floor_all = _MIN_K_DIST_SCALE * (dists.mean() if mean_distance is None else mean_distance)
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


def _bisect_sigma(d: torch.Tensor, target: float, n_iter: int, stop_early: bool = True) -> torch.Tensor:
    """umap-learn's bisection for sigma, vectorised over rows (each row freezes once converged);
    ``stop_early``: leave the loop once every row has converged (a host sync per step)."""
    n, dev = d.shape[0], d.device
    lo = torch.zeros(n, dtype=torch.float32, device=dev)
    hi = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
    mid = torch.ones(n, dtype=torch.float32, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    for _ in range(n_iter):
        psum = torch.where(d > 0, torch.exp(-(d / mid[:, None])), torch.ones_like(d)).sum(1)
        active &= (psum - target).abs() >= _SMOOTH_K_TOLERANCE
        if stop_early and not bool(active.any()):  # host sync: stop once every row has converged
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


@lru_cache(maxsize=16)
def find_ab_params(spread: float, min_dist: float) -> tuple[float, float]:
    """umap-learn's ``find_ab_params``: least-squares fit of 1 / (1 + a x^(2b)) to the target curve."""
    from scipy.optimize import curve_fit

    xv = np.linspace(0, spread * 3, 300)
    yv = np.where(xv < min_dist, 1.0, np.exp(-(xv - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), xv, yv)
    return float(a), float(b)


def fit_epochs(n_points: int, n_epochs: int | None) -> int:
    """umap-learn's fit epochs: 500 up to 10,000 points, else 200, unless given."""
    if n_epochs is not None:
        return int(n_epochs)
    return 500 if n_points <= 10000 else 200


def fuzzy_simplicial_set(
    x: torch.Tensor,
    n_neighbors: int,
    metric: str,
    local_connectivity: float = 1.0,
    set_op_mix_ratio: float = 1.0,
    index: CellIndex | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The symmetric fuzzy graph of ``x`` (M, D) as an edge list (src, dst, w) of fixed length 2 M k.

    Each undirected edge appears in both directions with the same weight; entries that the union
    merged or that carry no weight have w = 0 (callers ignore them). ``index``: a cell index of
    ``x`` (CPU tensors) to search the neighbours with instead of the exact scan (the same answer
    up to float rounding, faster).
    """
    m, k = x.shape[0], n_neighbors
    dists, idx = knn_search(x, x, k, metric) if index is None else knn_search_cells(x, index, k)
    rows = torch.arange(m, device=x.device)[:, None].expand(m, k)
    # A point's distance to itself is exactly 0 (the matmul form leaves rounding noise).
    dists, order = torch.where(idx == rows, torch.zeros_like(dists), dists).sort(1)
    idx = idx.gather(1, order)
    sigma, rho = smooth_knn_dist(dists, float(k), local_connectivity)
    w = membership_weights(dists, sigma, rho)
    w = torch.where(idx == rows, torch.zeros_like(w), w)  # umap-learn: a point is not its own neighbour
    src, dst, w = rows.reshape(-1), idx.reshape(-1), w.reshape(-1)
    # P + P^T - P o P^T, sync-free: sort both directions' keys; a key occurs at most twice
    # (once from P, once from P^T), and equal keys end up next to each other.
    keys = torch.cat([src * m + dst, dst * m + src])
    vals = torch.cat([w, w])
    keys, order = torch.sort(keys, stable=True)
    vals = vals[order]
    pair = torch.zeros_like(keys, dtype=torch.bool)
    pair[:-1] = keys[:-1] == keys[1:]
    nxt = torch.cat([vals[1:], vals.new_zeros(1)])
    both = torch.where(pair, vals * nxt, torch.zeros_like(vals))  # P o P^T on the first of a pair
    union = torch.where(pair, vals + nxt - both, vals)
    merged = set_op_mix_ratio * union + (1.0 - set_op_mix_ratio) * both
    second = torch.zeros_like(pair)
    second[1:] = pair[:-1]
    merged = torch.where(second, torch.zeros_like(merged), merged)  # counted on the first of the pair
    return keys // m, keys % m, merged


def _top_axes(xc: torch.Tensor, n: int, n_iter: int = 100) -> torch.Tensor:
    """The ``n`` leading principal axes (D, n) of centred ``xc`` by subspace iteration on the
    covariance, signs fixed as scikit-learn's ``svd_flip`` (largest |loading| positive)."""
    cov = xc.T @ xc  # (D, D)
    g = torch.Generator(device=xc.device).manual_seed(0)
    v = torch.randn(cov.shape[0], n, generator=g, device=xc.device, dtype=xc.dtype)
    for _ in range(n_iter):
        v = cov @ v
        for j in range(n):  # Gram-Schmidt; the loop is over columns, not over values
            v[:, j] -= v[:, :j] @ (v[:, :j].T @ v[:, j])
            v[:, j] /= v[:, j].norm().clamp_min(1e-30)
    big = v.abs().argmax(0)
    return v * torch.sign(v.gather(0, big[None]))


def initial_layout(x: torch.Tensor, n_components: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """The starting embedding (M, n_components) float32, rescaled to [0, 10] per axis as umap-learn."""
    dev = x.device
    if init == "random":
        emb = torch.rand(x.shape[0], n_components, generator=generator, device=dev) * 20.0 - 10.0
    else:  # "pca", and "spectral" (module docstring)
        xc = x.double() - x.double().mean(0)
        emb = (xc @ _top_axes(xc, n_components)).float()
        emb = emb * (10.0 / emb.abs().max())  # noisy_scale_coords
        emb = emb + 1e-4 * torch.randn(emb.shape, generator=generator, device=dev)
    lo, hi = emb.amin(0), emb.amax(0)
    return (10.0 * (emb - lo) / (hi - lo)).float().contiguous()
