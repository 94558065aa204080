"""UMAP parameters in our spelling, and the one translation to each backend's spelling."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fastal.errors import FastalError

# Metrics our torch transform reproduces exactly (kNN by matmul); umap-learn and cuML know more.
TORCH_METRICS = ("euclidean", "cosine")
# cuML's UMAP metrics for dense input: the names of cuml/manifold/umap/umap.pyx `_METRICS` that
# `_SUPPORTED_METRICS["brute_force_knn"]["dense"]` admits (v25.12.00 to v26.10.00a). "jaccard" is
# named there but dense brute-force kNN rejects it (fit raises NotImplementedError).
CUML_METRICS = (
    "l1", "cityblock", "taxicab", "manhattan", "euclidean", "l2", "sqeuclidean", "canberra",
    "minkowski", "chebyshev", "linf", "cosine", "correlation", "hellinger", "hamming",
)  # fmt: skip


@dataclass(frozen=True)
class UMAPParams:
    """UMAP settings shared by every engine (defaults are umap-learn's); checked on construction."""

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

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise FastalError(f"umap.n_neighbors = {self.n_neighbors}: must be >= 2")
        if self.n_components < 1:
            raise FastalError(f"umap.n_components = {self.n_components}: must be >= 1")
        if self.n_epochs is not None and self.n_epochs < 3:
            raise FastalError(f"umap.n_epochs = {self.n_epochs}: must be >= 3 (transform runs n_epochs // 3)")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UMAPParams:
        """Build from a config dict; unknown keys are an error naming them."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FastalError(f"umap: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def transform_epochs(params: UMAPParams, n_points: int) -> int:
    """SGD epochs of a transform of ``n_points`` new points: umap-learn 0.5's rule.

    ``n_epochs // 3`` of the fit's, or 100 / 30 for <= / > 10,000 new points. ``n_points`` is the
    whole pool, however it is chunked, so every chunk runs the same schedule.
    """
    if params.n_epochs is not None:
        return int(params.n_epochs // 3)
    return 100 if n_points <= 10_000 else 30


def translate_umap_params(params: UMAPParams, backend: str) -> dict[str, Any]:
    """Keyword arguments for ``umap.UMAP`` (backend ``"umap-learn"``/``"torch"``) or for ``cuml.UMAP``'s fit.

    Raises FastalError for a setting the backend cannot honour instead of silently changing it.
    cuML takes one ``random_state`` for fit and transform: ``random_state`` goes to the fit as it
    is (None is cuML's unseeded, non-deterministic mode, as it is umap-learn's parallel one), and
    ``transform_seed`` is not in these arguments because :func:`cuml_transform_params` sets it,
    with the epochs, before each transform call.
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
        del kw["transform_seed"]
        return kw
    raise FastalError(f"unknown UMAP backend {backend!r}")


def cuml_transform_params(params: UMAPParams, n_points: int) -> dict[str, Any]:
    """``set_params`` arguments for a fitted ``cuml.UMAP`` before it transforms part of a pool of ``n_points``.

    cuML reads ``random_state`` and ``n_epochs`` from the estimator at every ``transform`` call
    (cuml/manifold/umap/umap.pyx ``init_params``, v25.12.00 to v26.10.00a); from 25.12 it also
    derives its deterministic mode from ``random_state`` per call. Left alone, a transform would
    reuse the fit's seed and pick 100 or 30 epochs from the chunk's row count
    (cpp/src/umap/runner.cuh ``_transform``), so the last, small chunk of a large pool would run
    100 epochs where the rest run 30. cuML runs ``n_epochs // 3``, hence the factor 3.
    """
    return {"random_state": params.transform_seed, "n_epochs": 3 * transform_epochs(params, n_points)}
