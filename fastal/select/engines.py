"""Which backend embeds (UMAP) and clusters (KMeans): ``torch`` anywhere, ``cuml`` on CUDA.

Both backends' estimators take and return torch tensors on the caller's device, so strategies
never see the backend.
"""

from __future__ import annotations

from typing import Any

import torch

from fastal.errors import FastalError
from fastal.select.umap_params import UMAPParams

ENGINES = ("auto", "torch", "cuml")


def cuml_available() -> bool:
    """True when cuML imports (it needs a CUDA runtime; any import failure counts as absent)."""
    try:
        import cuml  # noqa: F401
    except Exception:
        return False
    return True


def resolve_engine(engine: str, device: torch.device) -> str:
    """``"auto"`` -> ``"cuml"`` when importable and ``device`` is CUDA, else ``"torch"``; checks forced choices."""
    if engine not in ENGINES:
        raise FastalError(f"--engine {engine!r}: unknown; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "cuml" if device.type == "cuda" and cuml_available() else "torch"
    if engine == "cuml":
        if device.type != "cuda":
            raise FastalError(f"--engine cuml needs a CUDA device, the pool is on {device}")
        if not cuml_available():
            raise FastalError("--engine cuml: cuML is not installed (pip install 'fastal[gpu]')")
    return engine


def make_umap(engine: str, params: UMAPParams) -> Any:
    """An unfitted UMAP estimator of the resolved ``engine`` (``fit(bank)``, ``transform(x)``)."""
    if engine == "cuml":
        from fastal.select.cuml_engine import CumlUMAP

        return CumlUMAP(params)
    from fastal.select.umap_torch import TorchUMAP

    return TorchUMAP(params)


def make_kmeans(engine: str, n_clusters: int, random_state: int) -> Any:
    """An unfitted KMeans estimator of the resolved ``engine`` (``fit_predict(x)`` -> int64 labels)."""
    if engine == "cuml":
        from fastal.select.cuml_engine import CumlKMeans

        return CumlKMeans(n_clusters=n_clusters, random_state=random_state)
    from fastal.select.kmeans_torch import TorchKMeans

    return TorchKMeans(n_clusters, random_state=random_state)
