"""Selection strategies on CPU: never labelled, exactly ``budget`` ids, deterministic, against references."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastal.errors import FastalError
from fastal.select import STRATEGIES, PoolScores, select
from fastal.select.strategies import Candidates, k_center_greedy, pick_per_cluster
from fastal.select.umap.params import UMAPParams

OFFSET = 1000  # scored rows hold global ids OFFSET.., so rows and ids differ


def _clustered(n: int, d: int, centres: int, seed: int, spread: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)) * spread
    lab = rng.integers(centres, size=n)
    return (means[lab] + rng.normal(size=(n, d))).astype(np.float32), lab


@pytest.fixture(scope="module")
def pool() -> tuple[PoolScores, torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(0)
    x, _ = _clustered(800, 8, 5, seed=1)
    bank, bank_lab = _clustered(150, 8, 5, seed=1)
    scores = PoolScores(
        features=torch.from_numpy(x),
        entropy=torch.from_numpy(rng.random(800).astype(np.float32)),
        margin=torch.from_numpy(rng.random(800).astype(np.float32)),
        gids=np.arange(800, dtype=np.int64) + OFFSET,
    )
    mask = np.zeros(OFFSET + 800, dtype=bool)
    mask[rng.choice(np.arange(OFFSET, OFFSET + 800), 200, replace=False)] = True
    mask[:OFFSET] = True  # ids outside the scored pool: labelled or not, never candidates
    return scores, torch.from_numpy(bank), torch.from_numpy(bank_lab), mask


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_contract(strategy: str, pool) -> None:
    scores, bank, bank_lab, mask = pool
    sel = select(strategy, scores, bank, budget=30, labelled_mask=mask, seed=3, engine="torch")
    assert sel.ids.dtype == np.int64 and sel.ids.shape == (30,)
    assert np.unique(sel.ids).size == 30
    assert np.isin(sel.ids, scores.gids).all()
    assert not mask[sel.ids].any()
    assert sel.timings["total"] >= 0 and len(sel.timings) >= 2
    again = select(strategy, scores, bank, budget=30, labelled_mask=mask, seed=3, engine="torch")
    np.testing.assert_array_equal(sel.ids, again.ids)


def test_entropy_and_margin_match_numpy_argsort(pool) -> None:
    scores, bank, bank_lab, mask = pool
    free = ~mask[scores.gids]
    ent = scores.entropy.numpy()[free]
    mar = scores.margin.numpy()[free]
    ids = scores.gids[free]
    sel = select("entropy", scores, bank, budget=40, labelled_mask=mask)
    np.testing.assert_array_equal(sel.ids, ids[np.argsort(-ent, kind="stable")[:40]])
    sel = select("margin", scores, bank, budget=40, labelled_mask=mask)
    np.testing.assert_array_equal(sel.ids, ids[np.argsort(mar, kind="stable")[:40]])


def test_entropy_ties_go_to_the_lower_row() -> None:
    scores = PoolScores(torch.zeros(5, 2), torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0]), torch.zeros(5), np.arange(5))
    sel = select("entropy", scores, None, budget=2, labelled_mask=np.zeros(5, bool))
    np.testing.assert_array_equal(sel.ids, [1, 2])


def test_random_depends_on_seed_only(pool) -> None:
    scores, bank, bank_lab, mask = pool
    a = select("random", scores, bank, budget=50, labelled_mask=mask, seed=1).ids
    b = select("random", scores, bank, budget=50, labelled_mask=mask, seed=2).ids
    assert set(a) != set(b)


def _naive_k_center(x: np.ndarray, centres: np.ndarray, k: int, first: int | None) -> list[int]:
    x = x.astype(np.float64)
    chosen: list[int] = []
    pts = [c.astype(np.float64) for c in centres]
    if first is not None:
        chosen.append(first)
        pts.append(x[first])
    while len(chosen) < k:
        d = np.array([min(np.sum((xi - c) ** 2) for c in pts) for xi in x])
        d[chosen] = -1
        i = int(np.argmax(d))
        chosen.append(i)
        pts.append(x[i])
    return chosen


def test_k_center_greedy_matches_naive_float64() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    centres = rng.normal(size=(4, 3)).astype(np.float32)
    got = k_center_greedy(torch.from_numpy(x), torch.from_numpy(centres), 10, seed=0).tolist()
    assert got == _naive_k_center(x, centres, 10, None)
    got = k_center_greedy(torch.from_numpy(x), torch.zeros(0, 3), 10, seed=7).tolist()
    assert got == _naive_k_center(x, centres[:0], 10, got[0])


def test_coreset_uses_labelled_rows_as_centres() -> None:
    # Two far groups; the labelled row sits in group A, so the first pick must come from group B.
    x = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0)]).astype(np.float32)
    x += np.random.default_rng(0).normal(scale=0.1, size=x.shape).astype(np.float32)
    scores = PoolScores(torch.from_numpy(x), torch.zeros(10), torch.zeros(10), np.arange(10))
    mask = np.zeros(10, bool)
    mask[0] = True
    sel = select("coreset", scores, None, budget=1, labelled_mask=mask)
    assert sel.ids[0] >= 5


def test_pick_per_cluster_takes_each_max_and_fills_empty_clusters() -> None:
    entropy = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 3])  # cluster 2 is empty
    got = pick_per_cluster(entropy, labels, 4).tolist()
    assert got[:3] == [1, 5, 3]  # max of clusters 0, 3, 1: most uncertain first
    assert got[3] == 2  # filled with the highest entropy not chosen yet
    assert len(set(got)) == 4


def test_contrastive_picks_the_max_entropy_member_of_each_cluster() -> None:
    # Four tight, far-apart groups and budget 4: KMeans on the embedding finds the groups,
    # so the picks are exactly the per-group entropy maxima.
    x, lab = _clustered(400, 6, 4, seed=11, spread=20.0)
    bank, _ = _clustered(120, 6, 4, seed=11, spread=20.0)
    entropy = np.random.default_rng(2).random(400).astype(np.float32)
    scores = PoolScores(torch.from_numpy(x), torch.from_numpy(entropy), torch.zeros(400), np.arange(400))
    sel = select("contrastive", scores, torch.from_numpy(bank), budget=4,
                 labelled_mask=np.zeros(400, bool), seed=0, engine="torch")
    expected = {int(np.flatnonzero(lab == g)[np.argmax(entropy[lab == g])]) for g in range(4)}
    assert set(sel.ids.tolist()) == expected
    assert np.all(np.diff(entropy[sel.ids]) <= 0)  # in order of preference: a pixel budget keeps a prefix
    assert set(sel.timings) >= {"umap_fit", "umap_transform", "kmeans", "pick", "total"}


def test_budget_larger_than_unlabelled_pool_names_the_sizes(pool) -> None:
    scores, bank, bank_lab, mask = pool
    with pytest.raises(FastalError, match=r"budget 601 > 600 unlabelled .*800 scored, 200 labelled"):
        select("entropy", scores, bank, budget=601, labelled_mask=mask)


@pytest.mark.parametrize("budget", [0, -3, 2.5])
def test_budget_must_be_a_positive_integer(budget, pool) -> None:
    scores, bank, bank_lab, mask = pool
    with pytest.raises(FastalError, match="budget"):
        select("entropy", scores, bank, budget=budget, labelled_mask=mask)


def test_unknown_names_and_impossible_engine(pool) -> None:
    scores, bank, bank_lab, mask = pool
    with pytest.raises(FastalError, match="unknown; choose one of"):
        select("bald", scores, bank, budget=3, labelled_mask=mask)
    with pytest.raises(FastalError, match="--engine 'sklearn'"):
        select("entropy", scores, bank, budget=3, labelled_mask=mask, engine="sklearn")
    with pytest.raises(FastalError, match="needs a CUDA device"):
        select("entropy", scores, bank, budget=3, labelled_mask=mask, engine="cuml")
    with pytest.raises(FastalError, match="labelled_mask covers 10"):
        select("entropy", scores, bank, budget=3, labelled_mask=np.zeros(10, bool))
    with pytest.raises(FastalError, match="memory bank of more than 15"):
        select("contrastive", scores, bank[:10], budget=3, labelled_mask=mask, engine="torch")
    with pytest.raises(FastalError, match="unknown option"):
        select("contrastive", scores, bank, budget=3, labelled_mask=mask, umap={"n_neigbours": 5})


def test_pick_per_cluster_with_more_clusters_keeps_the_most_uncertain_representatives() -> None:
    entropy = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])  # representatives 1 (0.9), 3 (0.7), 5 (0.8), 6 (0.2)
    assert pick_per_cluster(entropy, labels, 2, num_clusters=4).tolist() == [1, 5]


def _naive_pick_per_cluster(entropy: list[float], labels: list[int], k: int) -> list[int]:
    """pick_per_cluster in plain Python floats: each cluster's first maximum; those by entropy
    (equal: the lower cluster first), cut to k; then the others by entropy (equal: the lower position)."""
    best: dict[int, int] = {}
    for i, (e, c) in enumerate(zip(entropy, labels)):
        if c not in best or e > entropy[best[c]]:
            best[c] = i
    reps = [best[c] for c in sorted(best, key=lambda c: (-entropy[best[c]], c))][:k]
    rest = sorted(set(range(len(entropy))) - set(reps), key=lambda i: (-entropy[i], i))
    return reps + rest[: k - len(reps)]


@settings(max_examples=300)
@given(data=st.data())
def test_pick_per_cluster_matches_a_naive_reference(data) -> None:
    # Few distinct values (and +-inf) make ties; ids >= used leave clusters empty; k runs below,
    # at and above the non-empty clusters (filled up) and above num_clusters (padded).
    n = data.draw(st.integers(1, 40))
    num_clusters = data.draw(st.integers(1, n + 5))
    used = data.draw(st.integers(1, num_clusters))
    value = st.sampled_from([-math.inf, 0.0, 0.5, 1.0, math.inf]) | st.floats(0, 4, width=32)
    entropy = data.draw(st.lists(value, min_size=n, max_size=n))  # float32-exact
    labels = data.draw(st.lists(st.integers(0, used - 1), min_size=n, max_size=n))
    k = data.draw(st.integers(0, n))
    got = pick_per_cluster(torch.tensor(entropy, dtype=torch.float32), torch.tensor(labels), k, num_clusters)
    assert got.dtype == torch.int64 and got.tolist() == _naive_pick_per_cluster(entropy, labels, k)


def test_pick_per_cluster_needs_enough_candidates() -> None:
    with pytest.raises(FastalError, match="cannot pick 4 of 3"):
        pick_per_cluster(torch.rand(3), torch.zeros(3, dtype=torch.int64), 4)


def test_stage_times_each_stage_on_the_cpu() -> None:
    c = Candidates(features=torch.zeros(3, 2), entropy=torch.zeros(3), margin=torch.zeros(3),
                   labelled_features=torch.zeros(0, 2), bank_features=None, budget=1, seed=0,
                   engine="torch", umap=UMAPParams(), timings={})  # fmt: skip
    for _ in range(2):
        with c.stage("pick"):
            time.sleep(0.01)
    assert c.timings["pick"] >= 0.02 and c.peak_memory_mib["pick"] > 0
    c.timer.finish()  # nothing left to read on the CPU
    assert list(c.timings) == ["pick"] and c.timings["pick"] < 1.0


def test_clusters_factor_moves_contrastive_towards_entropy() -> None:
    # 2 groups, budget 2: with k = 2 one pick per group; with k = all, the two most uncertain overall.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [10.0] * 8])
    feats = centres.repeat_interleave(20, 0) + 0.1 * torch.randn(40, 8, generator=g)
    entropy = torch.rand(40, generator=g)
    entropy[[3, 7]] = torch.tensor([5.0, 4.0])  # both in group 0
    scores = PoolScores(features=feats, entropy=entropy, margin=torch.rand(40, generator=g), gids=np.arange(40))
    one = select("kmeans-entropy", scores, None, budget=2, labelled_mask=np.zeros(40, bool)).ids
    many = select("kmeans-entropy", scores, None, budget=2, labelled_mask=np.zeros(40, bool), clusters=20).ids
    assert sorted(np.asarray(one) // 20) == [0, 1]
    assert sorted(many.tolist()) == [3, 7]
    with pytest.raises(FastalError, match="clusters"):
        select("kmeans-entropy", scores, None, budget=2, labelled_mask=np.zeros(40, bool), clusters=0.5)
