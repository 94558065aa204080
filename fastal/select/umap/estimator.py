"""UMAP in torch on the pool's device: fit on the memory bank and transform of the pool, umap-learn 0.5 step for step.

Why not umap-learn: its ``transform`` embeds new points one edge at a time in numba (slow for
a pool of regions) and its fit leaves the GPU. Why not TorchDR (its torch UMAP): it
has no ``transform`` of new points (fastal fits on the bank and embeds the pool), and it
optimises the whole affinity matrix rather than umap-learn's sampled-edge schedule.

Fit (:meth:`TorchUMAP.fit`, :mod:`fastal.select.umap.graph`): exact kNN graph of the bank, the
fuzzy simplicial set, the initial layout (PCA for ``init="spectral"``: see that module), the
a/b curve from ``min_dist`` and ``spread``, umap-learn's epoch count (500 up to 10,000 points,
else 200) and its SGD schedule.

Transform (:meth:`TorchUMAP.transform`):

1. kNN of each new point among the fitted points (:mod:`fastal.select.neighbors`: on the CPU a
   cell-pruned search once 4,096 or more points were fitted, where umap-learn queries its
   approximate NNDescent index; the exact scan on CUDA, or with ``knn="exact"``),
2. ``smooth_knn_dist`` (rho with ``local_connectivity - 1``, sigma by Newton then umap-learn's
   bisection) and the bipartite membership strengths,
3. initialisation at the membership-weighted mean of the neighbours' embedding,
4. ``n_epochs`` of SGD (``n_epochs // 3`` of the fit's, or 100 / 30 for <= / > 10,000 new points)
   against the fixed bank embedding: edges below ``max / n_epochs`` dropped, learning rate
   ``lr / 4``.

SGD: numba loops on the CPU (:mod:`fastal.select.umap.sgd_cpu`), tensor epochs elsewhere or with
``sgd="torch"`` (:mod:`fastal.select.umap.sgd_torch`); each module says how its update order
relates to umap-learn's. On CUDA nothing in fit or transform waits for the host: the loops run
a number of iterations known in advance, and no count decides a tensor's size.
"""

from __future__ import annotations

import torch

from fastal.errors import FastalError
from fastal.select.neighbors import APPROXIMATE_MIN_FIT, build_cell_index, knn_search, knn_search_cells
from fastal.select.umap.graph import (
    find_ab_params,
    fit_epochs,
    fuzzy_simplicial_set,
    initial_layout,
    membership_weights,
    smooth_knn_dist,
)
from fastal.select.umap.params import UMAPParams, transform_epochs, translate_umap_params
from fastal.select.umap.sgd_torch import epochs_per_sample, optimize_transform, sgd_epochs

_DISCONNECTION = {"cosine": 2.0, "euclidean": float("inf")}  # umap_.DISCONNECTION_DISTANCES
TRANSFORM_ROWS = 2**18  # rows whose weights and starting points a transform computes together


def init_from_neighbours(w: torch.Tensor, idx: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """umap-learn's ``init_graph_transform``: weighted mean of the neighbours' embedding.

    A weight of exactly 1 (a duplicate of a bank point) places the point on that bank point
    (the lowest bank index wins, as in umap-learn's sorted CSR rows); a row without edges is NaN.
    """
    total = w.sum(1, keepdim=True)
    out = (w[:, :, None] * embedding[idx]).sum(1) / total  # (N, dim)
    is_one = w == 1
    first = torch.where(is_one, idx, torch.full_like(idx, embedding.shape[0])).amin(1)
    on_bank = embedding[first.clamp(max=embedding.shape[0] - 1)]
    out = torch.where(is_one.any(1, keepdim=True), on_bank, out)
    return torch.where(total == 0, torch.full_like(out, float("nan")), out)


SGD_CHOICES = ("auto", "torch")
KNN_CHOICES = ("auto", "exact")


class TorchUMAP:
    """UMAP with scikit-learn's shape (``fit(bank)`` -> self, ``transform(x)``), in torch on ``x``'s device.

    ``sgd``: ``"auto"`` (numba loops on CPU tensors, tensor epochs elsewhere) or ``"torch"``
    (tensor epochs everywhere). ``knn``: ``"auto"`` (cell-pruned search on the CPU once 4,096 or
    more points were fitted, exact scan otherwise) or ``"exact"``. Fitted attributes:
    ``embedding_`` (M, n_components), ``fit_data_`` (M, D), ``a_``, ``b_``, ``n_epochs_``.

    Example::

        emb = TorchUMAP(UMAPParams(random_state=0)).fit(bank).transform(pool)  # (N, 2), pool's device
    """

    def __init__(
        self, params: UMAPParams | None = None, chunk_size: int = 8192, sgd: str = "auto", knn: str = "auto"
    ) -> None:
        self.params = params
        self.chunk_size = chunk_size
        self.sgd = sgd
        self.knn = knn

    def _check_options(self) -> None:
        if self.sgd not in SGD_CHOICES:
            raise FastalError(f"TorchUMAP sgd = {self.sgd!r}: choose one of {', '.join(SGD_CHOICES)}")
        if self.knn not in KNN_CHOICES:
            raise FastalError(f"TorchUMAP knn = {self.knn!r}: choose one of {', '.join(KNN_CHOICES)}")

    def _numba(self, x: torch.Tensor) -> bool:
        """The one device choice of the SGD (module docstring)."""
        return self.sgd == "auto" and x.device.type == "cpu"

    def fit(self, x: torch.Tensor) -> TorchUMAP:
        """Fit on ``x`` (M, D): graph, layout and SGD on ``x``'s device. Returns self."""
        self._check_options()
        params = self.params or UMAPParams()
        translate_umap_params(params, "torch")  # raises on a metric the torch engine cannot do
        if x.ndim != 2 or x.shape[0] <= params.n_neighbors:
            raise FastalError(
                f"UMAP fit: need a (M, D) bank with M > n_neighbors = {params.n_neighbors}, got {tuple(x.shape)}"
            )
        x = x.detach().to(torch.float32, copy=True).contiguous()  # our own: a later write to the bank cannot move transforms
        seed = 0 if params.random_state is None else params.random_state
        gen = torch.Generator(device=x.device).manual_seed(seed)
        use_cells = self.knn == "auto" and x.device.type == "cpu" and x.shape[0] >= APPROXIMATE_MIN_FIT
        self.knn_index_ = build_cell_index(x, params.metric, seed=seed) if use_cells else None
        src, dst, w = fuzzy_simplicial_set(x, params.n_neighbors, params.metric, params.local_connectivity,
                                           params.set_op_mix_ratio, self.knn_index_)  # fmt: skip
        n_epochs = fit_epochs(x.shape[0], params.n_epochs)
        w = torch.where(w < w.max() / float(n_epochs), torch.zeros_like(w), w)
        a, b = find_ab_params(params.spread, params.min_dist)
        emb = initial_layout(x, params.n_components, params.init, gen)
        eps = epochs_per_sample(w, n_epochs)
        kw = dict(gamma=params.repulsion_strength, initial_alpha=params.learning_rate,
                  negative_sample_rate=params.negative_sample_rate)  # fmt: skip
        if self._numba(x):
            from fastal.select.umap.sgd_cpu import optimize_fit_cpu

            optimize_fit_cpu(emb, src, dst, eps, n_epochs, a, b, seed=seed, **kw)
        else:
            sgd_epochs(emb, None, src, dst, eps, n_epochs, a, b, generator=gen, **kw)
        self.fit_data_ = x
        self.embedding_ = emb
        self.a_, self.b_, self.n_epochs_ = a, b, n_epochs
        self.params_ = params
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` (N, D) next to the fitted bank: (N, n_components) float32 on ``x``'s device."""
        self._check_options()
        if not hasattr(self, "embedding_"):
            raise FastalError("TorchUMAP.transform called before fit")
        if x.ndim != 2 or x.shape[1] != self.fit_data_.shape[1]:
            raise FastalError(f"UMAP transform: expected (N, {self.fit_data_.shape[1]}), got {tuple(x.shape)}")
        p = self.params_
        tail = self.embedding_.to(x.device)
        k = p.n_neighbors
        if self.knn == "auto" and self.knn_index_ is not None and x.device.type == "cpu":
            dists, idx = knn_search_cells(x, self.knn_index_, k)
        else:
            dists, idx = knn_search(x, self.fit_data_.to(x.device), k, p.metric, self.chunk_size)
        # Weights and starting points a chunk of rows at a time: their (rows, k) temporaries for
        # a pool of millions of regions were a peak of the selection's memory.
        mean_distance = dists.mean()
        w = torch.empty_like(dists)
        head = torch.empty(x.shape[0], tail.shape[1], dtype=tail.dtype, device=x.device)
        for s in range(0, x.shape[0], TRANSFORM_ROWS):
            d, i = dists[s : s + TRANSFORM_ROWS], idx[s : s + TRANSFORM_ROWS]
            sigma, rho = smooth_knn_dist(d, float(k), local_connectivity=max(0.0, p.local_connectivity - 1.0),
                                         mean_distance=mean_distance)  # fmt: skip
            wc = torch.where(d >= _DISCONNECTION[p.metric], 0.0, membership_weights(d, sigma, rho))
            w[s : s + TRANSFORM_ROWS] = wc
            head[s : s + TRANSFORM_ROWS] = init_from_neighbours(wc, i, tail)
        del dists
        n_epochs = transform_epochs(p, x.shape[0])
        w.masked_fill_(w < w.max() / float(n_epochs), 0.0)
        kw = dict(gamma=p.repulsion_strength, initial_alpha=p.learning_rate / 4.0,
                  negative_sample_rate=p.negative_sample_rate)  # fmt: skip
        if self._numba(x):
            from fastal.select.umap.sgd_cpu import optimize_transform_cpu

            return optimize_transform_cpu(head, tail, idx, w, n_epochs, self.a_, self.b_, seed=p.transform_seed, **kw)
        gen = torch.Generator(device=x.device).manual_seed(p.transform_seed)
        return optimize_transform(head, tail, idx, w, n_epochs, self.a_, self.b_, generator=gen, **kw)
