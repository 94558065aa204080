"""The cuML engine: what needs no cuML runs here against fakes; the rest is marked ``cuml``.

The fakes stand in for ``cuml`` / ``cupy`` and record what fastal hands them, so the CPU tests
check the calls (epochs and seed per chunk, copies, allocator, streams), not cuML's numbers.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import KNeighborsClassifier

from fastal.errors import FastalError
from fastal.select import cuml_engine
from fastal.select.cuml_engine import (
    CUML_METRICS,
    CumlKMeans,
    CumlUMAP,
    cuml_transform_params,
    cuml_umap_params,
    kmeans_batch_rows,
)
from fastal.select.umap.params import UMAPParams, transform_epochs, translate_umap_params

# ---------------------------------------------------------------- parameters (no cuML needed)

# Transcribed from cuml/manifold/umap/umap.pyx (v25.12.00 to v26.10.00a): metric name ->
# DistanceType (`_METRICS`), and the DistanceTypes dense brute-force kNN accepts
# (`_SUPPORTED_METRICS["brute_force_knn"]["dense"]`; JaccardExpanded is commented out there).
_CUML_NAMES = {
    "l2": "L2SqrtExpanded", "euclidean": "L2SqrtExpanded", "sqeuclidean": "L2Expanded",
    "cityblock": "L1", "l1": "L1", "manhattan": "L1", "taxicab": "L1", "minkowski": "LpUnexpanded",
    "chebyshev": "Linf", "linf": "Linf", "cosine": "CosineExpanded", "correlation": "CorrelationExpanded",
    "hellinger": "HellingerExpanded", "hamming": "HammingUnexpanded", "jaccard": "JaccardExpanded",
    "canberra": "Canberra",
}  # fmt: skip
_CUML_DENSE = {
    "Canberra", "CorrelationExpanded", "CosineExpanded", "HammingUnexpanded", "HellingerExpanded", "L1",
    "L2SqrtExpanded", "L2Expanded", "Linf", "LpUnexpanded",
}  # fmt: skip


def test_offered_cuml_metrics_are_those_cuml_fits_on_dense_input() -> None:
    assert set(CUML_METRICS) == {m for m, d in _CUML_NAMES.items() if d in _CUML_DENSE}
    assert len(CUML_METRICS) == len(set(CUML_METRICS))
    with pytest.raises(FastalError, match="'jaccard': cuML supports"):
        cuml_umap_params(UMAPParams(metric="jaccard"))


def test_params_check_on_construction_with_todays_messages() -> None:
    for kw, msg in [
        ({"n_neighbors": 1}, r"umap.n_neighbors = 1: must be >= 2"),
        ({"n_components": 0}, r"umap.n_components = 0: must be >= 1"),
        ({"n_epochs": 2}, r"umap.n_epochs = 2: must be >= 3 \(transform runs n_epochs // 3\)"),
    ]:
        with pytest.raises(FastalError, match=msg):
            UMAPParams(**kw)
        with pytest.raises(FastalError, match=msg):
            UMAPParams.from_dict(kw)
    UMAPParams(n_neighbors=2, n_components=1, n_epochs=3)  # the limits themselves are fine


def test_transform_epochs_follow_umap_learn_from_the_pool_size() -> None:
    # umap-learn 0.5.12 umap_.py UMAP.transform: 100 epochs up to 10,000 new points, else 30;
    # n_epochs // 3 when set.
    assert transform_epochs(UMAPParams(), 10_000) == 100
    assert transform_epochs(UMAPParams(), 10_001) == 30
    assert transform_epochs(UMAPParams(n_epochs=200), 5) == 66
    assert transform_epochs(UMAPParams(n_epochs=3), 10**6) == 1
    # cuML divides its n_epochs by 3 in the transform (cpp/src/umap/runner.cuh): hand it 3x.
    assert cuml_transform_params(UMAPParams(transform_seed=7), 50_000) == {"random_state": 7, "n_epochs": 90}
    assert cuml_transform_params(UMAPParams(n_epochs=200), 5)["n_epochs"] // 3 == 66


def test_cuml_translation_changes_nothing_silently() -> None:
    for seed in (None, 0, 11):
        p = UMAPParams(metric="manhattan", random_state=seed, transform_seed=7, n_epochs=30)
        kw = cuml_umap_params(p)
        expected = {k: v for k, v in translate_umap_params(p, "umap-learn").items() if k != "transform_seed"}
        assert kw == expected  # random_state as given, None included; every other value untouched
        assert cuml_transform_params(p, 100)["random_state"] == 7  # the transform seed goes to transform
    with pytest.raises(FastalError, match="cuML supports 'spectral' and 'random'"):
        cuml_umap_params(UMAPParams(init="pca"))


def test_kmeans_batch_is_sized_to_k() -> None:
    assert kmeans_batch_rows(2000) == 1 << 15  # cuML's default while it fits the workspace bound
    for k in (50_000, 300_000):
        rows = kmeans_batch_rows(k)
        assert rows * k * 4 <= cuml_engine.KMEANS_WORKSPACE_BYTES < (rows + 1) * k * 4
    assert kmeans_batch_rows(50_000) * 50_000 * 4 < (1 << 15) * 50_000 * 4 / 6  # 6.5 GB -> 1 GiB
    assert kmeans_batch_rows(10**9) == 1


# ---------------------------------------------------------------- streams and allocator (fakes)


def _fake_streams(monkeypatch: pytest.MonkeyPatch, current: int) -> None:
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=current))
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))


def test_side_stream_is_refused_with_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_streams(monkeypatch, current=0)
    cuml_engine.check_default_stream(torch.device("cuda", 0))  # the default stream passes
    _fake_streams(monkeypatch, current=0x5EED)
    with pytest.raises(FastalError, match=r"default CUDA stream only .* outside `with torch.cuda.stream"):
        cuml_engine.check_default_stream(torch.device("cuda", 0))


def test_every_stage_checks_device_and_stream_first(monkeypatch: pytest.MonkeyPatch) -> None:
    on_gpu0 = types.SimpleNamespace(device=torch.device("cuda", 0))  # all enter_cuml reads before cuML
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    with pytest.raises(FastalError, match=r"UMAP fit: the tensor is on cuda:0 but the current device is cuda:1"):
        cuml_engine.enter_cuml(on_gpu0, "UMAP fit")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    _fake_streams(monkeypatch, current=0x5EED)
    with pytest.raises(FastalError, match="default CUDA stream only"):
        cuml_engine.enter_cuml(on_gpu0, "KMeans")


def test_cpu_tensors_are_refused_before_cuml_is_imported() -> None:
    x = torch.zeros(40, 3)
    with pytest.raises(FastalError, match="UMAP fit: the cuml engine needs a CUDA tensor, got one on cpu"):
        CumlUMAP().fit(x)
    with pytest.raises(FastalError, match="KMeans: the cuml engine needs a CUDA tensor"):
        CumlKMeans(3).fit(x)


class _FakeCupy(types.ModuleType):
    """``cupy.cuda``'s allocator switch and ``PythonFunctionAllocator``, as in CuPy 14's memory.pyx."""

    def __init__(self) -> None:
        super().__init__("cupy")
        self.current = "default"
        self.sets = 0

        class PythonFunctionAllocator:
            def __init__(self, malloc, free) -> None:
                self.malloc_func, self.free_func = malloc, free

            def malloc(self, size: int) -> None:  # a bound method: a new object per attribute access
                raise AssertionError("not called in these tests")

        def set_allocator(alloc) -> None:
            self.current, self.sets = alloc, self.sets + 1

        self.cuda = types.SimpleNamespace(
            get_allocator=lambda: self.current,
            set_allocator=set_allocator,
            memory=types.SimpleNamespace(PythonFunctionAllocator=PythonFunctionAllocator),
        )


def test_allocator_is_put_back_whenever_something_replaced_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cupy = _FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    cuml_engine._torch_allocator.cache_clear()
    try:
        cuml_engine.use_torch_allocator()
        ours = cupy.current
        assert ours is cuml_engine._torch_allocator() and ours.__self__.malloc_func.__qualname__.endswith("malloc")
        cuml_engine.use_torch_allocator()
        assert cupy.sets == 1  # already ours: left alone
        cupy.cuda.set_allocator("rmm_cupy_allocator")  # what `import cudf` / `import cuml` do
        cuml_engine.use_torch_allocator()
        assert cupy.current is ours and cupy.sets == 3
    finally:
        cuml_engine._torch_allocator.cache_clear()


# ---------------------------------------------------------------- estimators against a fake cuML


class _FakeUMAP:
    """Records what cuml.UMAP is given; its transform returns each row's first columns."""

    def __init__(self, **kw) -> None:
        self.kw = kw
        self.calls: list[tuple[int, int, int]] = []

    def set_params(self, **kw) -> _FakeUMAP:
        self.kw.update(kw)
        return self

    def fit(self, x: np.ndarray) -> _FakeUMAP:
        self.x = x  # cuML keeps a view of what it was fitted on
        self.embedding_ = np.zeros((x.shape[0], self.kw["n_components"]), np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        self.calls.append((x.shape[0], self.kw["n_epochs"], self.kw["random_state"]))
        return np.ascontiguousarray(x[:, : self.kw["n_components"]])


class _FakeKMeans:
    made: list[_FakeKMeans] = []

    def __init__(self, **kw) -> None:
        self.kw = kw
        self.made.append(self)

    def fit(self, x: np.ndarray) -> _FakeKMeans:
        k = self.kw["n_clusters"]
        self.labels_ = (np.arange(x.shape[0]) % k).astype(np.int32)  # cuML's int32 labels
        self.cluster_centers_ = x[:k].copy()
        self.inertia_, self.n_iter_ = np.float32(1.5), 7
        return self


@pytest.fixture
def fake_cuml(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """cuml_engine on CPU tensors: the checks that need CUDA are skipped, cuML is the fake."""
    fake = types.SimpleNamespace(UMAP=_FakeUMAP, KMeans=_FakeKMeans)
    monkeypatch.setattr(cuml_engine, "enter_cuml", lambda x, what: fake)
    monkeypatch.setattr(cuml_engine, "to_cupy", lambda t: t.detach().contiguous().numpy())
    monkeypatch.setattr(cuml_engine, "to_torch", torch.from_numpy)
    return fake


def test_umap_epochs_and_seed_come_from_the_pool_in_every_chunk(fake_cuml) -> None:
    bank = torch.randn(300, 5)
    params = UMAPParams(random_state=3, transform_seed=9)
    model = CumlUMAP(params, chunk_size=10_000).fit(bank)
    assert model.umap_.kw == cuml_umap_params(params) | {"output_type": "cupy"}
    pool = torch.randn(25_001, 5)
    emb = model.transform(pool)
    # A 25,001-row pool gets 30 epochs (cuML would give each <= 10,000-row chunk 100), in three
    # chunks of equal size to a row, so no small remainder chunk trims its edges differently.
    assert model.umap_.calls == [(8334, 90, 9), (8334, 90, 9), (8333, 90, 9)]
    torch.testing.assert_close(emb, pool[:, :2], rtol=0, atol=0)  # each chunk lands in its rows
    model.umap_.calls.clear()
    model.transform(pool[:5000])  # a small pool on its own: 100 epochs, one chunk
    assert model.umap_.calls == [(5000, 300, 9)]


def test_umap_keeps_its_own_copy_of_the_bank(fake_cuml) -> None:
    bank = torch.randn(300, 5)
    model = CumlUMAP(UMAPParams()).fit(bank)
    before = model.umap_.x.copy()
    bank.add_(100.0)  # the caller's memory bank moves on
    np.testing.assert_array_equal(model.umap_.x, before)
    assert model.fit_data_.data_ptr() == model.umap_.x.ctypes.data  # cuML's view is of fit_data_


def test_umap_shape_and_checks_match_the_torch_engine(fake_cuml) -> None:
    with pytest.raises(FastalError, match="CumlUMAP.transform called before fit"):
        CumlUMAP().transform(torch.zeros(3, 2))
    with pytest.raises(FastalError, match=r"need a \(M, D\) bank with M > n_neighbors = 15, got \(15, 4\)"):
        CumlUMAP().fit(torch.zeros(15, 4))
    model = CumlUMAP(UMAPParams(n_components=3))
    assert model.fit(torch.randn(40, 4)) is model and model.params_.n_components == 3
    assert model.embedding_.shape == (40, 3) and model.fit_data_.shape == (40, 4)
    with pytest.raises(FastalError, match=r"expected \(N, 4\), got \(2, 5\)"):
        model.transform(torch.zeros(2, 5))
    assert model.transform(torch.zeros(0, 4)).shape == (0, 3)
    with pytest.raises(FastalError, match="chunk_size = 0"):
        CumlUMAP(chunk_size=0).fit(torch.randn(40, 4))


def test_kmeans_shape_int64_labels_and_batch_sized_to_k(fake_cuml) -> None:
    x = torch.randn(600, 4)
    km = CumlKMeans(n_clusters=50, random_state=5)
    assert km.fit(x) is km
    assert km.labels_.dtype == torch.int64 and torch.equal(km.labels_, torch.arange(600) % 50)
    assert km.cluster_centers_.shape == (50, 4) and km.inertia_ == 1.5 and km.n_iter_ == 7
    assert torch.equal(CumlKMeans(n_clusters=50).fit_predict(x), km.labels_)
    with pytest.raises(FastalError, match=r"need \(N, D\) with N >= n_clusters = 601"):
        CumlKMeans(601).fit(x)
    with pytest.raises(FastalError, match="KMeans init = 'k-means'"):
        CumlKMeans(5, init="k-means").fit(x)


def test_kmeans_hands_cuml_its_settings(fake_cuml) -> None:
    CumlKMeans(n_clusters=40_000, init="random", random_state=2).fit(torch.randn(40_000, 2))
    assert _FakeKMeans.made[-1].kw == {
        "n_clusters": 40_000, "max_iter": 100, "init": "random", "n_init": 1,
        "max_samples_per_batch": kmeans_batch_rows(40_000), "random_state": 2, "output_type": "cupy",
    }  # fmt: skip


# ---------------------------------------------------------------- on a GPU with cuML


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    # Overlapping classes, so that kNN accuracy is informative (not 1.0 for any embedding).
    x, y = make_blobs(5500, 16, centers=6, cluster_std=4.5, random_state=3)
    x = torch.from_numpy(x.astype(np.float32))
    return x[:500], y[:500], x[500:], y[500:]


def _knn_accuracy(bank_emb: np.ndarray, bank_y: np.ndarray, emb: torch.Tensor, y: np.ndarray) -> float:
    assert bool(torch.isfinite(emb).all())
    return KNeighborsClassifier(15).fit(bank_emb, bank_y).score(emb.cpu().numpy(), y)


@pytest.mark.cuml
@pytest.mark.parametrize("chunk_size", [5000, 250])  # the pool in one chunk; chunks half the bank
def test_cuml_bank_smaller_than_the_chunk_matches_the_torch_engine(blobs, chunk_size: int) -> None:
    from fastal.select.umap.estimator import TorchUMAP

    bank, bank_y, pool, pool_y = blobs
    params = UMAPParams(random_state=0)
    ours = CumlUMAP(params, chunk_size=chunk_size).fit(bank.cuda())
    emb = ours.transform(pool.cuda())
    assert emb.shape == (5000, 2) and emb.device.type == "cuda"
    ref = TorchUMAP(params).fit(bank.cuda())
    acc_ref = _knn_accuracy(ref.embedding_.cpu().numpy(), bank_y, ref.transform(pool.cuda()), pool_y)
    acc = _knn_accuracy(ours.embedding_.cpu().numpy(), bank_y, emb, pool_y)
    assert abs(acc - acc_ref) < 0.03


@pytest.mark.cuml
def test_cuml_chunked_and_unchunked_transforms_agree(blobs) -> None:
    bank, bank_y, pool, pool_y = blobs
    whole = CumlUMAP(UMAPParams(random_state=0)).fit(bank.cuda())
    a = whole.transform(pool.cuda())
    whole.chunk_size = 700
    b = whole.transform(pool.cuda())  # same fit, same seed and epochs; only the chunking differs
    bank_emb = whole.embedding_.cpu().numpy()
    assert abs(_knn_accuracy(bank_emb, bank_y, a, pool_y) - _knn_accuracy(bank_emb, bank_y, b, pool_y)) < 0.03
    spread = float(a.std(0).norm())
    assert float((a - b).norm(dim=1).median()) < 0.05 * spread


@pytest.mark.cuml
def test_cuml_zero_copy_both_ways() -> None:
    t = torch.randn(1000, 8, device="cuda")
    a = cuml_engine.to_cupy(t)
    assert a.data.ptr == t.data_ptr()
    assert cuml_engine.to_torch(a).data_ptr() == a.data.ptr


@pytest.mark.cuml
def test_cuml_allocator_is_torchs_after_importing_cuml_and_cudf() -> None:
    import cudf  # noqa: F401  (both set CuPy's global allocator to RMM's on import)
    import cupy
    import cuml  # noqa: F401

    cuml_engine.enter_cuml(torch.zeros(1, device="cuda"), "test")
    assert cupy.cuda.get_allocator() is cuml_engine._torch_allocator()
    before = torch.cuda.memory_allocated()
    block = cupy.empty(1 << 20, dtype=cupy.float32)  # 4 MiB, from torch's pool
    assert torch.cuda.memory_allocated() >= before + (4 << 20)
    del block


@pytest.mark.cuml
@pytest.mark.parametrize("metric", CUML_METRICS)
def test_cuml_every_offered_metric_fits(blobs, metric: str) -> None:
    bank, _, pool, _ = blobs
    bank, pool = bank.abs().cuda(), pool[:300].abs().cuda()  # hellinger wants non-negative data
    emb = CumlUMAP(UMAPParams(metric=metric, random_state=0)).fit(bank).transform(pool)
    assert emb.shape == (300, 2) and bool(torch.isfinite(emb).all())


@pytest.mark.cuml
def test_cuml_kmeans_large_k() -> None:
    x, _ = make_blobs(100_000, 32, centers=2500, random_state=0)
    x = torch.from_numpy(x.astype(np.float32)).cuda()
    labels = CumlKMeans(2000, random_state=0).fit_predict(x)
    assert labels.dtype == torch.int64 and labels.device.type == "cuda" and labels.shape == (100_000,)
    assert int(labels.min()) >= 0 and int(labels.max()) < 2000
    assert labels.unique().numel() >= 0.9 * 2000
    assert torch.equal(labels, CumlKMeans(2000, random_state=0).fit_predict(x))


@pytest.mark.cuml
def test_cuml_transform_with_three_epochs_runs(blobs) -> None:
    bank, _, pool, _ = blobs
    emb = CumlUMAP(UMAPParams(n_epochs=3, random_state=0)).fit(bank.cuda()).transform(pool[:1000].cuda())
    assert emb.shape == (1000, 2) and bool(torch.isfinite(emb).all())


@pytest.mark.cuml
def test_cuml_under_a_side_stream_raises(blobs) -> None:
    bank, _, pool, _ = blobs
    model = CumlUMAP(UMAPParams(random_state=0)).fit(bank.cuda())
    with torch.cuda.stream(torch.cuda.Stream()):
        with pytest.raises(FastalError, match="default CUDA stream only"):
            model.transform(pool.cuda())
        with pytest.raises(FastalError, match="default CUDA stream only"):
            CumlKMeans(5).fit(pool.cuda())
