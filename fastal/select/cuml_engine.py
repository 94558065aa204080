"""cuML UMAP and KMeans behind torch tensors: zero-copy through DLPack, no host round trip.

Imported only when the ``cuml`` engine is chosen; needs cuML >= 25.12 (the ``gpu`` extra).
Written against cuML's source (tags v25.12.00 to v26.10.00a), CuPy 14 and pylibraft; not yet run
on a machine with cuML.

Memory: three allocators meet here, and torch's pool governs only part of it.

- cuML's C++ scratch space (kNN graph, fuzzy graph, SGD buffers, the KMeans pairwise workspace)
  always comes from RMM's current device resource: plain ``cudaMalloc`` unless the user installs
  an RMM pool. Blocks that torch's caching allocator holds free are invisible to it, so every
  stage first hands them back to the driver (``torch.cuda.empty_cache``).
- CuPy arrays that cuML allocates in Python (its outputs, input conversions) use CuPy's current
  allocator. ``import cudf`` (cuML imports it) and, from 25.12, ``import cuml`` set CuPy's global
  allocator to RMM's; up to 25.12 every cuML call also runs inside
  ``cupy.cuda.using_allocator(rmm_cupy_allocator)`` (cuml/internals/api_context_managers.py),
  so there they come from RMM whatever we set. From 26.02 cuML uses the global allocator: each
  stage checks ``cupy.cuda.get_allocator()`` and puts torch's caching allocator back, so these
  arrays come out of torch's pool.
- Inputs and outputs cross by DLPack without a copy; only the fitted bank is copied, on purpose.

Streams: cuML works on pylibraft's default ``Handle()``, i.e. the per-thread default stream
(pylibraft/common/handle.pyx, 25.04 to 26.06). That stream waits for torch's default (legacy)
stream, and blocks torch lends to CuPy are tagged with torch's current stream; torch's side
streams are non-blocking, so under one cuML could read a tensor before it is written or reuse a
block still in use. Every stage refuses to run under a non-default torch stream.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from fastal.errors import FastalError
from fastal.select.umap.params import UMAPParams, transform_epochs

# cuML's default max_samples_per_batch; its KMeans holds a (rows x k) float32 distance block
# (cuml/cluster/kmeans.pyx docstring), 6.5 GB at k = 50,000 with the default rows.
KMEANS_MAX_BATCH = 1 << 15
KMEANS_WORKSPACE_BYTES = 1 << 30  # bound on that block (not measured: no GPU with cuML yet)
KMEANS_INITS = ("scalable-k-means++", "random")  # k-means|| seeding, or k rows drawn at random
# cuML's UMAP metrics for dense input: the names of cuml/manifold/umap/umap.pyx `_METRICS` that
# `_SUPPORTED_METRICS["brute_force_knn"]["dense"]` admits (v25.12.00 to v26.10.00a). "jaccard" is
# named there but dense brute-force kNN rejects it (fit raises NotImplementedError).
CUML_METRICS = (
    "l1", "cityblock", "taxicab", "manhattan", "euclidean", "l2", "sqeuclidean", "canberra",
    "minkowski", "chebyshev", "linf", "cosine", "correlation", "hellinger", "hamming",
)  # fmt: skip


def cuml_umap_params(params: UMAPParams) -> dict[str, Any]:
    """Keyword arguments for ``cuml.UMAP``'s fit; FastalError for a setting cuML cannot honour.

    cuML takes one ``random_state`` for fit and transform: ``random_state`` goes to the fit as it
    is (None is cuML's unseeded, non-deterministic mode, as it is umap-learn's parallel one), and
    ``transform_seed`` is not in these arguments because :func:`cuml_transform_params` sets it,
    with the epochs, before each transform call.
    """
    if params.metric not in CUML_METRICS:
        raise FastalError(f"umap.metric = {params.metric!r}: cuML supports {CUML_METRICS}")
    if params.init not in ("spectral", "random"):
        raise FastalError(f"umap.init = {params.init!r}: cuML supports 'spectral' and 'random'")
    kw = asdict(params)
    del kw["transform_seed"]
    return kw


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


@functools.cache
def _torch_allocator() -> Callable[[int], Any]:
    """CuPy's ``malloc`` hook backed by torch's caching allocator (one object, compared by identity)."""
    import cupy

    def malloc(size: int, device: int) -> int:
        return torch.cuda.caching_allocator_alloc(size, device, torch.cuda.current_stream(device).cuda_stream)

    def free(ptr: int, device: int) -> None:
        torch.cuda.caching_allocator_delete(ptr)

    return cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc


def use_torch_allocator() -> None:
    """Make torch's caching allocator CuPy's current one again if ``import cuml``/``cudf`` replaced it."""
    import cupy

    alloc = _torch_allocator()
    if cupy.cuda.get_allocator() is not alloc:
        cupy.cuda.set_allocator(alloc)


def check_default_stream(device: torch.device) -> None:
    """FastalError unless torch's current stream on ``device`` is its default stream (see module doc)."""
    if torch.cuda.current_stream(device).cuda_stream != torch.cuda.default_stream(device).cuda_stream:
        raise FastalError(
            "the cuml engine runs on torch's default CUDA stream only (cuML does not wait for "
            "torch's side streams): call it outside `with torch.cuda.stream(...)`"
        )


def enter_cuml(x: torch.Tensor, what: str) -> Any:
    """The ``cuml`` module, after the checks and setup of a stage on ``x``.

    ``x`` on the current CUDA device, torch on its default stream; CuPy on torch's allocator;
    torch's cache released.
    """
    if x.device.type != "cuda":
        raise FastalError(f"{what}: the cuml engine needs a CUDA tensor, got one on {x.device}")
    if x.device.index != torch.cuda.current_device():  # cuML works on the current device
        raise FastalError(
            f"{what}: the tensor is on {x.device} but the current device is cuda:{torch.cuda.current_device()}; "
            "call it under `with torch.cuda.device(...)`"
        )
    check_default_stream(x.device)
    import cuml  # first, so that the allocator it (or its `import cudf`) installs is replaced below

    use_torch_allocator()
    torch.cuda.empty_cache()  # cuML's C++ scratch is cudaMalloc'd by RMM, outside torch's pool
    return cuml


def to_cupy(x: torch.Tensor) -> Any:
    """A CuPy view of a CUDA tensor (DLPack; no copy when ``x`` is contiguous)."""
    import cupy

    return cupy.from_dlpack(x.detach().contiguous())


def to_torch(a: Any) -> torch.Tensor:
    """A torch view of a CuPy array (DLPack; no copy)."""
    return torch.from_dlpack(a)


class CumlUMAP:
    """``cuml.UMAP`` fitted on the bank, transforming the pool in chunks of at most ``chunk_size`` rows.

    Same shape and checks as :class:`~fastal.select.umap.estimator.TorchUMAP`. The transform runs the
    epochs umap-learn would choose for the whole pool, seeded by ``transform_seed``, in every
    chunk (:func:`cuml_transform_params`). Chunks are of equal size
    (to a row) because cuML drops the edges lighter than (the chunk's heaviest edge) / epochs,
    where the torch engine takes the whole pool's heaviest edge: equal chunks leave no small
    remainder chunk whose threshold differs from the rest.

    Example::

        emb = CumlUMAP(UMAPParams(random_state=0)).fit(bank).transform(pool)  # (N, 2) on the pool's GPU
    """

    def __init__(self, params: UMAPParams | None = None, chunk_size: int = 1_000_000) -> None:
        self.params = params
        self.chunk_size = chunk_size

    def fit(self, x: torch.Tensor) -> CumlUMAP:
        """Fit ``cuml.UMAP`` on ``x`` (M, D), a CUDA tensor; keeps a private copy of ``x``."""
        params = self.params or UMAPParams()
        kw = cuml_umap_params(params)
        if x.ndim != 2 or x.shape[0] <= params.n_neighbors:
            raise FastalError(
                f"UMAP fit: need a (M, D) bank with M > n_neighbors = {params.n_neighbors}, got {tuple(x.shape)}"
            )
        if self.chunk_size < 1:
            raise FastalError(f"CumlUMAP: chunk_size = {self.chunk_size}: must be >= 1")
        cuml = enter_cuml(x, "UMAP fit")
        # cuML keeps a zero-copy view of what it was fitted on and reads it in every transform:
        # a copy, so that later writes to the caller's bank cannot change the transforms.
        self.fit_data_ = x.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        self.umap_ = cuml.UMAP(**kw, output_type="cupy").fit(to_cupy(self.fit_data_))
        self.embedding_ = to_torch(self.umap_.embedding_)  # the bank's embedding, a view
        self.params_ = params
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` (N, D) next to the fitted bank: (N, n_components) float32 on ``x``'s device."""
        if not hasattr(self, "umap_"):
            raise FastalError("CumlUMAP.transform called before fit")
        if x.ndim != 2 or x.shape[1] != self.fit_data_.shape[1]:
            raise FastalError(f"UMAP transform: expected (N, {self.fit_data_.shape[1]}), got {tuple(x.shape)}")
        enter_cuml(x, "UMAP transform")
        n = x.shape[0]
        self.umap_.set_params(**cuml_transform_params(self.params_, n))
        out = torch.empty(n, self.params_.n_components, dtype=torch.float32, device=x.device)
        if n == 0:
            return out
        s = 0
        for chunk in torch.tensor_split(x.detach(), -(-n // self.chunk_size)):
            out[s : s + chunk.shape[0]] = to_torch(self.umap_.transform(to_cupy(chunk.float())))
            s += chunk.shape[0]
        return out


def kmeans_batch_rows(n_clusters: int, workspace_bytes: int = KMEANS_WORKSPACE_BYTES) -> int:
    """cuML KMeans' ``max_samples_per_batch`` for ``n_clusters``: rows x k float32 within ``workspace_bytes``."""
    return max(1, min(KMEANS_MAX_BATCH, workspace_bytes // (4 * n_clusters)))


class CumlKMeans:
    """``cuml.KMeans`` with the shape of :class:`~fastal.select.kmeans.estimator.TorchKMeans`.

    Fitted attributes, torch on the input's device: ``labels_`` (N,) int64, ``cluster_centers_``
    (k, D) float32; and ``inertia_`` (float), ``n_iter_`` (int). ``init`` is one of
    :data:`KMEANS_INITS`, with one run (``n_init = 1``; cuML's "auto" runs "random" 10 times). Whether "random"
    beats k-means|| seeding at k in the thousands has not been measured (no GPU with cuML yet).
    ``max_samples_per_batch`` None: sized to k by :func:`kmeans_batch_rows`.

    Example::

        km = CumlKMeans(n_clusters=2500, random_state=0).fit(emb)  # emb (N, 2) on a GPU
        km.labels_  # (N,) int64, same device
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        max_iter: int = 100,
        init: str = "scalable-k-means++",
        max_samples_per_batch: int | None = None,
        random_state: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.init = init
        self.max_samples_per_batch = max_samples_per_batch
        self.random_state = random_state

    def fit(self, x: torch.Tensor) -> CumlKMeans:
        """Cluster ``x`` (N, D), a CUDA tensor; N must be at least ``n_clusters``."""
        k = self.n_clusters
        if x.ndim != 2 or x.shape[0] < k or k < 1:
            raise FastalError(f"KMeans: need (N, D) with N >= n_clusters = {k} >= 1, got {tuple(x.shape)}")
        if self.init not in KMEANS_INITS:
            raise FastalError(f"KMeans init = {self.init!r}: choose one of {KMEANS_INITS}")
        cuml = enter_cuml(x, "KMeans")
        rows = self.max_samples_per_batch or kmeans_batch_rows(k)
        model = cuml.KMeans(
            n_clusters=k, max_iter=self.max_iter, init=self.init, n_init=1, max_samples_per_batch=rows,
            random_state=self.random_state, output_type="cupy",
        ).fit(to_cupy(x.float()))  # fmt: skip
        # cuML returns int32 labels while N x D fits int32 indexing (cuml/cluster/kmeans.pyx).
        self.labels_ = to_torch(model.labels_).to(torch.int64)
        self.cluster_centers_ = to_torch(model.cluster_centers_)
        self.inertia_ = float(model.inertia_)
        self.n_iter_ = int(model.n_iter_)
        return self

    def fit_predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.fit(x).labels_
