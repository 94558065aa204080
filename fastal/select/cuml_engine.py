"""cuML UMAP and KMeans behind torch tensors: zero-copy through DLPack, no host round trip.

Imported only when the ``cuml`` engine is chosen. CuPy is pointed at torch's caching allocator
so that the arrays cuML returns (``output_type="cupy"``) come out of the same pool as the rest
of the pipeline; cuML's own scratch space goes through RMM's default resource.
"""

from __future__ import annotations

from typing import Any

import torch

from fastal.select.umap_params import UMAPParams, translate_umap_params

_ALLOCATOR_SET = False


def _use_torch_allocator() -> None:
    """Route CuPy allocations through torch's caching allocator (once per process)."""
    global _ALLOCATOR_SET
    if _ALLOCATOR_SET:
        return
    import cupy

    def malloc(size: int, device: int) -> int:
        return torch.cuda.caching_allocator_alloc(size, device, torch.cuda.current_stream(device).cuda_stream)

    def free(ptr: int, device: int) -> None:
        torch.cuda.caching_allocator_delete(ptr)

    cupy.cuda.set_allocator(cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc)
    _ALLOCATOR_SET = True


def to_cupy(x: torch.Tensor) -> Any:
    """A CuPy view of a CUDA tensor (DLPack; no copy when ``x`` is contiguous)."""
    import cupy

    _use_torch_allocator()
    return cupy.from_dlpack(x.detach().contiguous())


def to_torch(a: Any) -> torch.Tensor:
    """A torch view of a CuPy array (DLPack; no copy)."""
    return torch.from_dlpack(a)


class CumlUMAP:
    """``cuml.UMAP`` fitted on the bank, transforming the pool in chunks of ``chunk_size`` rows."""

    def __init__(self, params: UMAPParams | None = None, chunk_size: int = 1_000_000) -> None:
        self.params = params
        self.chunk_size = chunk_size

    def fit(self, x: torch.Tensor) -> CumlUMAP:
        import cuml

        kw = translate_umap_params(self.params or UMAPParams(), "cuml")
        self.model_ = cuml.UMAP(**kw, output_type="cupy").fit(to_cupy(x.float()))
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.model_.n_components, dtype=torch.float32, device=x.device)
        for s in range(0, x.shape[0], self.chunk_size):
            emb = self.model_.transform(to_cupy(x[s : s + self.chunk_size].float()))
            out[s : s + self.chunk_size] = to_torch(emb)
        return out


class CumlKMeans:
    """``cuml.KMeans`` (k-means|| init) returning torch labels on the input's device."""

    def __init__(self, n_clusters: int, random_state: int = 0, max_iter: int = 100) -> None:
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.max_iter = max_iter

    def fit_predict(self, x: torch.Tensor) -> torch.Tensor:
        import cuml

        self.model_ = cuml.KMeans(
            n_clusters=self.n_clusters, random_state=self.random_state, max_iter=self.max_iter,
            init="scalable-k-means++", output_type="cupy",
        )  # fmt: skip
        labels = self.model_.fit_predict(to_cupy(x.float()))
        return to_torch(labels).to(torch.int64)
