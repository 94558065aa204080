"""The torch UMAP transform against umap-learn: each step, then the whole transform on labelled data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.manifold import trustworthiness
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import KNeighborsClassifier
from umap.umap_ import compute_membership_strengths, init_graph_transform
from umap.umap_ import smooth_knn_dist as umap_smooth_knn_dist

from fastal.errors import FastalError
from fastal.select.knn import knn_search
from fastal.select.umap_params import UMAPParams, cuml_transform_params, translate_umap_params
from fastal.select.umap_torch import TorchUMAP, init_from_neighbours, membership_weights, smooth_knn_dist


def _sorted_dists(seed: int) -> np.ndarray:
    d = np.sort(np.random.default_rng(seed).gamma(2.0, 1.0, size=(400, 15)).astype(np.float32), 1)
    d[:20, :3] = 0.0  # duplicates of bank points
    d[20:25] = 0.0  # a row with no positive distance: no sigma solves it, umap-learn bisects down
    return d


@pytest.mark.parametrize("local_connectivity", [0.0, 1.0, 1.5])
def test_smooth_knn_dist_and_weights_match_umap_learn(local_connectivity: float) -> None:
    d = _sorted_dists(0)
    sigma_ref, rho_ref = umap_smooth_knn_dist(d, 15.0, local_connectivity=local_connectivity)
    sigma, rho = smooth_knn_dist(torch.from_numpy(d), 15.0, local_connectivity)
    np.testing.assert_allclose(rho.numpy(), rho_ref, rtol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), sigma_ref, rtol=1e-4)
    idx = np.tile(np.arange(15, dtype=np.int64), (400, 1))
    _, _, vals, _ = compute_membership_strengths(idx, d, sigma_ref, rho_ref, bipartite=True)
    w = membership_weights(torch.from_numpy(d), sigma, rho)
    np.testing.assert_allclose(w.numpy().ravel(), vals, atol=2e-5)


def test_init_matches_umap_learn_graph_init() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 2)).astype(np.float32)
    idx = np.stack([rng.choice(50, 6, replace=False) for _ in range(30)])
    w = rng.random((30, 6)).astype(np.float32)
    w[3, 2] = 1.0  # exact duplicate of a bank point: placed on it
    graph = scipy.sparse.coo_matrix((w.ravel(), (np.repeat(np.arange(30), 6), idx.ravel())), shape=(30, 50)).tocsr()
    ref = init_graph_transform(graph, emb)
    got = init_from_neighbours(torch.from_numpy(w), torch.from_numpy(idx), torch.from_numpy(emb))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_search_is_exact(metric: str) -> None:
    rng = np.random.default_rng(2)
    x, ref = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(500, 8)).astype(np.float32)
    d, idx = knn_search(torch.from_numpy(x), torch.from_numpy(ref), 10, metric, chunk_size=64)
    if metric == "cosine":
        xn, rn = x / np.linalg.norm(x, axis=1, keepdims=True), ref / np.linalg.norm(ref, axis=1, keepdims=True)
        full = 1.0 - xn.astype(np.float64) @ rn.T.astype(np.float64)
    else:
        full = np.sqrt(((x[:, None].astype(np.float64) - ref[None]) ** 2).sum(2))
    np.testing.assert_allclose(d.numpy(), np.sort(full, 1)[:, :10], atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, idx.numpy(), 1), np.sort(full, 1)[:, :10], atol=1e-4)


@pytest.fixture(scope="module")
def fitted() -> tuple[TorchUMAP, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Overlapping classes, so that label accuracy is informative (not 1.0 for any embedding).
    x, y = make_blobs(2600, 16, centers=6, cluster_std=4.5, random_state=3)
    x = x.astype(np.float32)
    bank, bank_y, new, new_y = x[:800], y[:800], x[800:], y[800:]
    model = TorchUMAP(UMAPParams(random_state=0)).fit(torch.from_numpy(bank))
    return model, bank_y, new, new_y, model.umap_.transform(new)


@pytest.mark.parametrize("sgd", ["auto", "torch"])  # CPU: numba loop; "torch": the CUDA code path
def test_transform_agrees_with_umap_learn(fitted, sgd: str) -> None:
    model, bank_y, new, new_y, ref = fitted
    model.sgd = sgd
    ours = model.transform(torch.from_numpy(new)).numpy()
    model.sgd = "auto"
    assert ours.shape == ref.shape and np.isfinite(ours).all()
    knn = KNeighborsClassifier(15).fit(model.umap_.embedding_, bank_y)
    acc_ours, acc_ref = knn.score(ours, new_y), knn.score(ref, new_y)
    tw_ours = trustworthiness(new, ours, n_neighbors=10)
    tw_ref = trustworthiness(new, ref, n_neighbors=10)
    km = KMeans(6, n_init=4, random_state=0)
    ari_ours, ari_ref = adjusted_rand_score(new_y, km.fit_predict(ours)), adjusted_rand_score(new_y, km.fit_predict(ref))
    print(f"{sgd}: knn acc {acc_ours:.3f}/{acc_ref:.3f} trust {tw_ours:.3f}/{tw_ref:.3f} ARI {ari_ours:.3f}/{ari_ref:.3f}")
    assert acc_ours > 0.5  # the data are informative at all
    assert abs(acc_ours - acc_ref) < 0.03
    assert abs(tw_ours - tw_ref) < 0.02
    assert abs(ari_ours - ari_ref) < 0.05
    # Point by point the two embeddings place each new point in the same spot: the median offset
    # is ~3% of the embedding's spread (the initialisation alone, without the SGD, is at ~7.5%).
    dist = np.linalg.norm(ours - ref, axis=1)
    assert np.median(dist) < 0.05 * np.linalg.norm(ref.std(0))


def test_transform_is_deterministic_and_seeded(fitted) -> None:
    model, _, new, _, _ = fitted
    a = model.transform(torch.from_numpy(new[:300]))
    assert torch.equal(a, model.transform(torch.from_numpy(new[:300])))
    other = TorchUMAP(UMAPParams(random_state=0, transform_seed=1))
    other.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    other.params_ = UMAPParams(random_state=0, transform_seed=1)
    assert not torch.equal(a, other.transform(torch.from_numpy(new[:300])))


def test_params_translation_and_errors() -> None:
    p = UMAPParams(metric="manhattan", random_state=None, transform_seed=7)
    assert translate_umap_params(p, "umap-learn")["metric"] == "manhattan"
    cu = translate_umap_params(p, "cuml")
    # random_state reaches cuML as given; the transform seed is set per transform (issue 18).
    assert cu["random_state"] is None and "transform_seed" not in cu
    assert cuml_transform_params(p, 100)["random_state"] == 7
    with pytest.raises(FastalError, match="torch engine transforms with"):
        translate_umap_params(p, "torch")
    with pytest.raises(FastalError, match="cuML supports"):
        translate_umap_params(UMAPParams(metric="haversine"), "cuml")
    with pytest.raises(FastalError, match="n_neighbors"):
        UMAPParams.from_dict({"n_neighbors": 1})
    with pytest.raises(FastalError, match="before fit"):
        TorchUMAP().transform(torch.zeros(3, 2))


@pytest.mark.gpu
def test_transform_on_cuda_agrees_with_cpu(fitted) -> None:
    model, bank_y, new, new_y, _ = fitted
    cpu = model.transform(torch.from_numpy(new)).numpy()
    gpu = model.transform(torch.from_numpy(new).cuda())
    assert gpu.device.type == "cuda"
    knn = KNeighborsClassifier(15).fit(model.umap_.embedding_, bank_y)
    assert abs(knn.score(gpu.cpu().numpy(), new_y) - knn.score(cpu, new_y)) < 0.03


@pytest.mark.cuml
def test_cuml_engine_returns_torch_on_cuda() -> None:
    from fastal.select.cuml_engine import CumlKMeans, CumlUMAP

    x, y = make_blobs(3000, 16, centers=5, random_state=0)
    t = torch.from_numpy(x.astype(np.float32)).cuda()
    emb = CumlUMAP(UMAPParams(random_state=0), chunk_size=1000).fit(t[:1000]).transform(t[1000:])
    assert emb.device.type == "cuda" and emb.shape == (2000, 2)
    labels = CumlKMeans(5, random_state=0).fit_predict(emb)
    assert labels.dtype == torch.int64 and labels.device.type == "cuda"
    assert adjusted_rand_score(y[1000:], labels.cpu().numpy()) > 0.9
