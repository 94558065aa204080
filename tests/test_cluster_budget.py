"""k under a pixel budget (`cluster_budget = "fit"`): every cluster's most uncertain region fits,
one pick per cluster, and k is the boundary the search states (k fits, k + 1 does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastal.errors import FastalError
from fastal.select import PoolScores, select
from fastal.select.cluster_budget import fit_clusters
from fastal.select.kmeans.estimator import TorchKMeans


def _pool(seed: int, n: int, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features in ``groups`` blobs (with duplicates, so KMeans may leave clusters empty), sizes, entropy."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(groups, 3))
    x = centres[rng.integers(groups, size=n)] + rng.normal(size=(n, 3))
    x[: n // 10] = x[0]  # a tenth of the rows coincide
    sizes = rng.integers(1, 60, size=n)
    entropy = sizes * rng.random(n)  # summed entropy grows with the region
    return x.astype(np.float32), sizes, entropy.astype(np.float32)


def _naive_picks(x: np.ndarray, entropy: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """KMeans labels for k, and each non-empty cluster's highest-entropy member (numpy, first on ties)."""
    labels = TorchKMeans(k, random_state=seed).fit_predict(torch.from_numpy(x)).numpy()
    reps = np.array([np.flatnonzero(labels == c)[np.argmax(entropy[labels == c])] for c in np.unique(labels)])
    return labels, reps


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 150), groups=st.integers(1, 6),
       share=st.floats(0.0, 0.6), first=st.integers(1, 150))  # fmt: skip
def test_every_cluster_keeps_one_pick_within_the_budget_and_k_is_the_boundary(seed, n, groups, share, first):
    x, sizes, entropy = _pool(seed, n, groups)
    pixels = float(share * sizes.sum())
    calls: list[int] = []

    def cluster(k: int) -> torch.Tensor:
        calls.append(k)
        return TorchKMeans(k, random_state=seed).fit_predict(torch.from_numpy(x))

    fit = fit_clusters(cluster, torch.from_numpy(entropy), torch.from_numpy(sizes), pixels, first=min(first, n))
    picks, labels = fit.picks.numpy(), fit.labels.numpy()
    assert fit.fits == len(calls) and fit.k in calls
    assert len(set(picks.tolist())) == picks.size
    # Exactly one pick per non-empty cluster, its most uncertain member (independent recount).
    _, reps = _naive_picks(x, entropy, fit.k, seed)
    np.testing.assert_array_equal(np.sort(picks), np.sort(reps))
    np.testing.assert_array_equal(np.sort(labels[picks]), np.unique(labels))
    if sizes[picks].sum() > pixels:  # only when one cluster's pick is too large: still one region
        assert fit.k == 1 and picks.size == 1
        return
    # k is maximal in the search's sense: k + 1 clusters' picks do not fit, or cannot (the
    # k + 1 smallest regions already weigh more than the budget).
    if np.sort(sizes)[: fit.k + 1].sum() <= pixels and fit.k < n:
        _, reps_next = _naive_picks(x, entropy, fit.k + 1, seed)
        assert sizes[reps_next].sum() > pixels
    assert fit.fits <= 3 * int(np.ceil(np.log2(n + 2))) + 2


def test_fit_keeps_every_cluster_where_the_prefix_drops_the_least_uncertain() -> None:
    # Summed entropy favours large regions: the prefix of k = pixels / mean size picks is cut short.
    x, sizes, entropy = _pool(5, 600, 6)
    scores = PoolScores(torch.from_numpy(x), torch.from_numpy(entropy), torch.zeros(600), np.arange(600))
    pixels = 0.1 * sizes.sum()
    first = round(pixels / sizes.mean())
    free = np.zeros(600, bool)
    fit = select("kmeans-entropy", scores, None, budget=first, labelled_mask=free, pixels=pixels, sizes=sizes)
    assert sizes[fit.ids].sum() <= pixels and fit.k == fit.ids.size and fit.clusters_kept() == 1.0
    assert sorted(fit.clusters.tolist()) == list(range(fit.k))  # one pick per cluster
    assert 1 <= fit.kmeans_fits <= 8
    assert np.all(np.diff(entropy[fit.ids]) <= 0)  # most uncertain first
    prefix = select("kmeans-entropy", scores, None, budget=first, labelled_mask=free)
    kept = np.searchsorted(np.cumsum(sizes[prefix.ids]), pixels) + 1
    assert prefix.k == first and prefix.clusters_kept(kept) < 0.9  # many clusters lose their pick
    assert fit.clusters_kept() > prefix.clusters_kept(kept)


def test_contrastive_fits_umap_once_and_refits_only_kmeans(monkeypatch) -> None:
    from fastal.select.umap import estimator as umap_torch

    x, sizes, entropy = _pool(1, 300, 4)
    bank = np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32)
    scores = PoolScores(torch.from_numpy(x), torch.from_numpy(entropy), torch.zeros(300), np.arange(300))
    counts = {"fit": 0, "transform": 0}
    for name in counts:
        real = getattr(umap_torch.TorchUMAP, name)

        def spy(self, *a, _real=real, _name=name, **k):
            counts[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(umap_torch.TorchUMAP, name, spy)
    sel = select("contrastive", scores, torch.from_numpy(bank), budget=20, labelled_mask=np.zeros(300, bool),
                 engine="torch", pixels=0.05 * sizes.sum(), sizes=sizes)  # fmt: skip
    assert counts == {"fit": 1, "transform": 1} and sel.kmeans_fits >= 2
    assert sizes[sel.ids].sum() <= 0.05 * sizes.sum() and sel.clusters_kept() == 1.0


def test_a_pixel_budget_is_for_the_clustering_strategies() -> None:
    x, sizes, entropy = _pool(1, 50, 2)
    scores = PoolScores(torch.from_numpy(x), torch.from_numpy(entropy), torch.zeros(50), np.arange(50))
    with pytest.raises(FastalError, match="a pixel budget needs sizes and one of contrastive, kmeans-entropy"):
        select("entropy", scores, None, budget=3, labelled_mask=np.zeros(50, bool), pixels=100.0, sizes=sizes)
