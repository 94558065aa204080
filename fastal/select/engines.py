"""Which backend embeds (UMAP) and clusters (KMeans): ``torch`` anywhere, ``cuml`` on CUDA.

Both backends' estimators take and return torch tensors on the caller's device and have the
shape of :class:`Reducer` / :class:`Clusterer` (scikit-learn's: parameters in ``__init__``, work
in ``fit``, which returns the estimator, fitted attributes ending in ``_``), so strategies never
see the backend.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fastal.device import resolve_backend
from fastal.select.umap.params import UMAPParams

ENGINES = ("auto", "torch", "cuml")


class Reducer(Protocol):
    """A UMAP: ``fit(x)`` learns the embedding of x (N, D), ``transform(y)`` places new rows in it."""

    def fit(self, x: torch.Tensor) -> Reducer: ...

    def transform(self, x: torch.Tensor) -> torch.Tensor: ...  # (M, D) -> (M, n_components)


class Clusterer(Protocol):
    """A KMeans: ``fit(x)`` clusters the rows of x (N, d); ``fit_predict(x)`` is ``fit(x).labels_``."""

    labels_: torch.Tensor  # (N,) int64 cluster of each row
    cluster_centers_: torch.Tensor  # (k, d)
    inertia_: float  # sum of squared distances of the rows to their centres
    n_iter_: int  # Lloyd iterations run

    def fit(self, x: torch.Tensor) -> Clusterer: ...

    def fit_predict(self, x: torch.Tensor) -> torch.Tensor: ...


def resolve_engine(engine: str, device: torch.device) -> str:
    """``"auto"`` -> ``"cuml"`` when importable and ``device`` is CUDA, else ``"torch"``; checks forced choices."""
    return resolve_backend(engine, device, choices=ENGINES, gpu="cuml", cpu="torch", what="--engine")


def make_umap(engine: str, params: UMAPParams) -> Reducer:
    """An unfitted UMAP estimator of the resolved ``engine``."""
    if engine == "cuml":
        from fastal.select.cuml_engine import CumlUMAP

        return CumlUMAP(params)
    from fastal.select.umap.estimator import TorchUMAP

    return TorchUMAP(params)


def make_kmeans(engine: str, n_clusters: int, random_state: int) -> Clusterer:
    """An unfitted KMeans estimator of the resolved ``engine``."""
    if engine == "cuml":
        from fastal.select.cuml_engine import CumlKMeans

        return CumlKMeans(n_clusters=n_clusters, random_state=random_state)
    from fastal.select.kmeans.estimator import TorchKMeans

    return TorchKMeans(n_clusters, random_state=random_state)
