"""UMAP parameters in our spelling, and their translation to umap-learn's (cuML's dialect:
:mod:`fastal.select.cuml_engine`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fastal.errors import FastalError

# Metrics our torch transform reproduces exactly (kNN by matmul); umap-learn and cuML know more.
TORCH_METRICS = ("euclidean", "cosine")


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
        for name, rule in range_problems(asdict(self)):
            raise FastalError(f"umap.{name} = {getattr(self, name)}: {rule}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UMAPParams:
        """Build from a config dict; unknown keys are an error naming them."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FastalError(f"umap: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def range_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings among ``values`` (UMAPParams' names) out of range, each with its rule: the one
    definition of UMAP's ranges, for UMAPParams and the run config's ``umap_*`` keys."""
    spread = values.get("spread", 1.0)
    rules = {
        "n_neighbors": (lambda v: v >= 2, "must be >= 2"),
        "n_components": (lambda v: v >= 1, "must be >= 1"),
        "min_dist": (lambda v: 0 <= v <= spread, f"must lie in [0, {spread:g}] (UMAP's spread is {spread:g})"),
        "n_epochs": (lambda v: v is None or v >= 3, "must be >= 3 (transform runs n_epochs // 3)"),
    }
    return [(name, rule) for name, (ok, rule) in rules.items() if name in values and not ok(values[name])]


def transform_epochs(params: UMAPParams, n_points: int) -> int:
    """SGD epochs of a transform of ``n_points`` new points: umap-learn 0.5's rule.

    ``n_epochs // 3`` of the fit's, or 100 / 30 for <= / > 10,000 new points. ``n_points`` is the
    whole pool, however it is chunked, so every chunk runs the same schedule.
    """
    if params.n_epochs is not None:
        return int(params.n_epochs // 3)
    return 100 if n_points <= 10_000 else 30


def translate_umap_params(params: UMAPParams, backend: str) -> dict[str, Any]:
    """Keyword arguments for ``umap.UMAP`` (backend ``"umap-learn"``, or ``"torch"``: the same
    names, checked for what the torch engine can do); cuML's are
    :func:`fastal.select.cuml_engine.cuml_umap_params`.

    Raises FastalError for a setting the backend cannot honour instead of silently changing it.
    """
    if backend not in ("umap-learn", "torch"):
        raise FastalError(f"unknown UMAP backend {backend!r}")
    if backend == "torch" and params.metric not in TORCH_METRICS:
        raise FastalError(f"umap.metric = {params.metric!r}: the torch engine transforms with {TORCH_METRICS} only")
    return asdict(params)
