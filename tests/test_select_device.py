"""The torch engine's estimator shape, and (on CUDA) that the contrastive selection never waits for the host."""

from __future__ import annotations

import pytest
import torch

from fastal.testing import synthetic_selection_inputs
from fastal.select.kmeans.estimator import TorchKMeans
from fastal.select.umap.params import UMAPParams
from fastal.select.umap.estimator import TorchUMAP


def test_estimators_have_the_protocol_shape() -> None:
    # Reducer: fit(x) -> self, transform(x); Clusterer: fit(x) -> self, labels_, cluster_centers_,
    # inertia_, n_iter_ (and fit_predict), as scikit-learn's and cuML's.
    scores, bank, _ = synthetic_selection_inputs(600, 8, 40, 3, 0, torch.device("cpu"))
    reducer = TorchUMAP(UMAPParams(random_state=0, n_epochs=30))
    assert reducer.fit(bank) is reducer
    emb = reducer.transform(scores.features)
    assert emb.shape == (600, 2) and emb.dtype == torch.float32
    km = TorchKMeans(12, random_state=0)
    assert km.fit(emb) is km
    assert km.labels_.shape == (600,) and km.labels_.dtype == torch.int64
    assert km.cluster_centers_.shape == (12, 2)
    assert isinstance(km.inertia_, float) and km.inertia_ > 0 and km.n_iter_ >= 1
    assert torch.equal(TorchKMeans(12, random_state=0).fit_predict(emb), km.labels_)


def _cuda_inputs(n: int = 20000) -> tuple:
    scores, bank, bank_labels = synthetic_selection_inputs(n, 128, 300, 11, 0, torch.device("cuda"))
    torch.cuda.synchronize()
    return scores, bank, bank_labels


@pytest.mark.gpu
def test_engines_on_cuda_never_sync_with_the_host() -> None:
    # Everything from the bank and the pool features to the cluster labels runs under
    # sync_debug_mode "error": any device->host copy or synchronising call raises.
    scores, bank, _ = _cuda_inputs()
    torch.cuda.set_sync_debug_mode("error")
    try:
        reducer = TorchUMAP(UMAPParams(random_state=0)).fit(bank)
        emb = reducer.transform(scores.features)
        km = TorchKMeans(200, random_state=0).fit(emb)
        labels = km.labels_
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert labels.device.type == "cuda" and labels.shape == (20000,)
    assert int(labels.min()) >= 0 and int(labels.max()) < 200


@pytest.mark.gpu
def test_contrastive_strategy_on_cuda_never_syncs_before_the_ids() -> None:
    # The whole strategy (UMAP fit, transform, KMeans, per-cluster pick, stage timings) under
    # "error" mode; it returns candidate positions on the device, and only select() copies the final ids.
    from fastal.select.strategies import STRATEGIES, Candidates

    scores, bank, _ = _cuda_inputs()
    cand = Candidates(
        features=scores.features, entropy=scores.entropy, margin=scores.margin,
        labelled_features=scores.features[:0], bank_features=bank,
        budget=200, seed=0, engine="torch", umap=UMAPParams(), timings={},
    )  # fmt: skip
    torch.cuda.set_sync_debug_mode("error")
    try:
        pos = STRATEGIES["contrastive"](cand)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert pos.device.type == "cuda" and pos.shape == (200,)
    assert torch.unique(pos).numel() == 200
    cand.finish_timings()  # the stages' CUDA events, read once the result is waited for
    assert set(cand.timings) == {"umap_fit", "umap_transform", "kmeans", "pick"}
    assert min(cand.timings.values()) > 0
