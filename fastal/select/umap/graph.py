"""The pieces of a UMAP fit before its SGD, in torch on the bank's device (umap-learn 0.5 semantics).

- :func:`find_ab_params`: the curve 1 / (1 + a d^(2b)) fitted to ``min_dist`` and ``spread`` (host;
  no tensor data involved),
- :func:`fuzzy_simplicial_set`: kNN graph (exact, :mod:`fastal.select.neighbors`), ``smooth_knn_dist``,
  membership strengths (a point's own entry 0) and the fuzzy union P + P^T - P o P^T (mixed with
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

from fastal.select.neighbors import CellIndex


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
    up to float rounding; the whole fit of 11k x 128 on 2 cores: 2.5 s -> 2.1 s).
    """
    from fastal.select.neighbors import knn_search, knn_search_cells
    from fastal.select.umap.estimator import membership_weights, smooth_knn_dist

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
