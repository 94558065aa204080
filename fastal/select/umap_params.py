"""UMAP parameters in our spelling, and the one translation to each backend's spelling."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fastal.errors import FastalError

# Metrics our torch transform reproduces exactly (kNN by matmul); umap-learn and cuML know more.
TORCH_METRICS = ("euclidean", "cosine")
# cuML's UMAP metrics (cuml.manifold.UMAP docstring).
CUML_METRICS = (
    "l1", "cityblock", "taxicab", "manhattan", "euclidean", "l2", "sqeuclidean", "canberra",
    "minkowski", "chebyshev", "linf", "cosine", "correlation", "hellinger", "hamming", "jaccard",
)  # fmt: skip


@dataclass(frozen=True)
class UMAPParams:
    """UMAP settings shared by every engine (defaults are umap-learn's)."""

    n_neighbors: int = 15
    n_components: int = 2
    metric: str = "euclidean"
    min_dist: float = 0.1
    spread: float = 1.0
    n_epochs: int | None = None  # None: the library's size-dependent default (fit and transform)
    learning_rate: float = 1.0
    negative_sample_rate: int = 5
    repulsion_strength: float = 1.0
    local_connectivity: float = 1.0
    set_op_mix_ratio: float = 1.0
    init: str = "spectral"
    random_state: int | None = 0  # seeds the fit; None lets umap-learn run its fit in parallel
    transform_seed: int = 42  # seeds the transform's negative sampling (umap-learn's name)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UMAPParams:
        """Build from a config dict; unknown keys are an error naming them."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FastalError(f"umap: unknown option(s) {unknown}; known: {sorted(known)}")
        p = cls(**d)
        if p.n_neighbors < 2:
            raise FastalError(f"umap.n_neighbors = {p.n_neighbors}: must be >= 2")
        if p.n_components < 1:
            raise FastalError(f"umap.n_components = {p.n_components}: must be >= 1")
        if p.n_epochs is not None and p.n_epochs < 3:
            raise FastalError(f"umap.n_epochs = {p.n_epochs}: must be >= 3 (transform runs n_epochs // 3)")
        return p


def translate_umap_params(params: UMAPParams, backend: str) -> dict[str, Any]:
    """Keyword arguments for ``umap.UMAP`` (backend ``"umap-learn"``/``"torch"``) or ``cuml.UMAP``.

    Raises FastalError for a setting the backend cannot honour instead of silently changing it.
    """
    kw = asdict(params)
    if backend in ("umap-learn", "torch"):
        if backend == "torch" and params.metric not in TORCH_METRICS:
            raise FastalError(
                f"umap.metric = {params.metric!r}: the torch engine transforms with {TORCH_METRICS} only"
            )
        return kw
    if backend == "cuml":
        if params.metric not in CUML_METRICS:
            raise FastalError(f"umap.metric = {params.metric!r}: cuML supports {CUML_METRICS}")
        if params.init not in ("spectral", "random"):
            raise FastalError(f"umap.init = {params.init!r}: cuML supports 'spectral' and 'random'")
        # cuML seeds fit and transform with one random_state; a separate transform seed cannot be kept.
        seed = kw.pop("transform_seed")
        if params.random_state is None:
            kw["random_state"] = seed
        return kw
    raise FastalError(f"unknown UMAP backend {backend!r}")
