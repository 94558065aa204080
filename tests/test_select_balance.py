"""The field's region strategies (cb-ratio, cb-ratio-pixels, impurity-entropy, weighted-ratio) and
the contrastive variants on hand-built pools whose right pick is known, their scores by hand."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from fastal.config import RunConfig, make_config
from fastal.errors import FastalError
from fastal.select import PoolScores, select
from fastal.select.scoring import with_pool_statistics
from fastal.select.selection_table import selection_table

BALANCED = ("cb-ratio", "cb-ratio-pixels", "impurity-entropy", "weighted-ratio")


def _pool(predicted: list[int], ratio: list[float], pixels: list[float], classes: int = 3, **extra) -> PoolScores:
    """Regions whose pixels all predict their dominant class; entropy and margin uninformative."""
    n = len(predicted)
    pred = torch.tensor(predicted)
    r, px = torch.tensor(ratio), torch.tensor(pixels)
    rows = {"impurity": torch.zeros(n), "mean_entropy": torch.zeros(n), "class_prob": torch.full((classes,), 1 / classes)}
    rows.update(extra)
    return with_pool_statistics(PoolScores(
        features=torch.zeros(n, 2), entropy=torch.ones(n), margin=torch.ones(n), gids=np.arange(n), pixels=px,
        predicted=pred, ratio=r, ratio_by_class=torch.nn.functional.one_hot(pred, classes) * (r * px)[:, None], **rows))


def _pick(strategy: str, scores: PoolScores, budget: int = 1, labelled: list[int] = (), **kw):
    mask = np.zeros(len(scores), bool)
    mask[list(labelled)] = True
    return select(strategy, scores, None, budget=budget, labelled_mask=mask, **kw)


@pytest.mark.parametrize("strategy", ["cb-ratio", "cb-ratio-pixels", "weighted-ratio"])
def test_equal_uncertainty_the_rare_predicted_class_wins(strategy: str) -> None:
    # Rows 0 and 1 equally uncertain; row 0 predicts the frequent class 0 (rows 2..9 too), row 1 the
    # rare class 1. Plain ratio ties (the lower row would win); the balanced scores take row 1.
    scores = _pool([0, 1] + [0] * 8, [0.8, 0.8] + [0.1] * 8, [100] * 10,
                   class_prob=torch.tensor([0.8, 0.1, 0.1]))  # fmt: skip
    assert _pick(strategy, scores).ids.tolist() == [1]


def test_regions_or_pixels_decide_which_class_is_frequent() -> None:
    # Class 0: eight small regions (many regions, few pixels); class 1: two huge ones (the reverse).
    # Row 10, labelled, is the least uncertain: the normalisation's minimum.
    scores = _pool([0] * 8 + [1] * 2 + [2], [0.5] * 10 + [0.1], [10] * 8 + [1000] * 2 + [10])
    assert _pick("cb-ratio", scores, labelled=[10]).ids.tolist() == [8]  # by regions class 1 is the rare one
    assert _pick("cb-ratio-pixels", scores, labelled=[10]).ids.tolist() == [0]  # by pixels class 0 is


def test_cb_ratio_scores_by_hand() -> None:
    # u min-max normalised over every scored row (labelled row 3 holds the maximum), times exp(-p).
    scores = _pool([0, 0, 1, 2], [0.2, 0.5, 0.4, 0.9], [10, 10, 10, 30])
    sel = _pick("cb-ratio", scores, budget=3, labelled=[3])
    norm = (np.array([0.2, 0.5, 0.4]) - 0.2) / 0.7
    want = norm * np.exp(-np.array([0.5, 0.5, 0.25]))  # class shares by regions: 2/4, 2/4, 1/4
    np.testing.assert_allclose(sel.fitted["score"].numpy(), want, rtol=1e-6)
    assert sel.ids.tolist() == [1, 2, 0]
    by_pixels = _pick("cb-ratio-pixels", scores, budget=3, labelled=[3]).fitted["score"].numpy()
    np.testing.assert_allclose(by_pixels, norm * np.exp(-np.array([20, 20, 10]) / 60), rtol=1e-6)


def test_weighted_ratio_weights_each_pixel_by_its_predicted_class() -> None:
    # Region 0: 10 pixels of class 0 with ratio sum 4, and 10 of class 2 with ratio sum 6.
    prob = torch.tensor([0.5, 0.3, 0.2])
    by_class = torch.tensor([[4.0, 0.0, 6.0], [0.0, 10.0, 0.0]])
    scores = _pool([2, 1], [0.5, 0.5], [20, 20], class_prob=prob)
    scores.ratio_by_class = by_class
    w = (6.0 * prob.numpy() + 1) ** -2
    want = np.array([(4 * w[0] + 6 * w[2]) / 20, 10 * w[1] / 20])
    sel = _pick("weighted-ratio", scores, budget=2)
    np.testing.assert_allclose(sel.fitted["score"].numpy(), want, rtol=1e-6)
    plain = _pick("weighted-ratio", scores, budget=2, weighted_ratio_coeff=0.0).fitted["score"].numpy()
    np.testing.assert_allclose(plain, [0.5, 0.5])  # coeff 0: the mean ratio


def test_impurity_entropy_prefers_mixed_predictions() -> None:
    # Equal mean entropy; row 1's pixels disagree about the class (impurity 1), row 0's do not.
    scores = _pool([0, 0, 1], [0.5] * 3, [10] * 3, impurity=torch.tensor([0.0, 1.0, 0.5]),
                   mean_entropy=torch.tensor([0.6, 0.6, 0.9]))  # fmt: skip
    sel = _pick("impurity-entropy", scores, budget=3)
    assert sel.ids.tolist() == [1, 2, 0]
    np.testing.assert_allclose(sel.fitted["score"].numpy(), [0.0, 0.6, 0.45])


def test_scores_without_predictions_get_one_clear_error() -> None:
    bare = PoolScores(torch.zeros(4, 2), torch.ones(4), torch.ones(4), np.arange(4))
    for strategy in BALANCED:
        with pytest.raises(FastalError, match="score the pool with score_pool"):
            _pick(strategy, bare)


def _two_groups() -> tuple[PoolScores, torch.Tensor]:
    # Two well separated groups of 20 (bank the same groups). In each group the most uncertain
    # region (summed entropy) predicts the frequent class 0, another one predicts rare class 1.
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [10.0] * 8])
    feats = centres.repeat_interleave(20, 0) + 0.1 * torch.randn(40, 8, generator=g)
    bank = centres.repeat_interleave(30, 0) + 0.1 * torch.randn(60, 8, generator=g)
    pred = [0] * 40
    pred[5], pred[25] = 1, 1
    scores = _pool(pred, [0.5] * 40, [100] * 40, class_prob=torch.tensor([0.9, 0.05, 0.05]))
    scores.features, scores.entropy = feats, torch.linspace(0, 1, 40)
    scores.entropy[[3, 23]] = 5.0  # the entropy's representatives
    return scores, bank


def test_contrastive_balanced_takes_each_clusters_rare_class_region() -> None:
    scores, bank = _two_groups()
    mask = np.zeros(40, bool)
    plain = select("contrastive", scores, bank, budget=2, labelled_mask=mask, engine="torch")
    balanced = select("contrastive-balanced", scores, bank, budget=2, labelled_mask=mask, engine="torch")
    assert sorted(plain.ids.tolist()) == [3, 23]
    assert sorted(balanced.ids.tolist()) == [5, 25]
    table = selection_table(scores, [balanced], [balanced.ids], np.arange(41), np.full(40, 100))
    picked = table[table["rank"] >= 0]
    assert sorted(picked["predicted"]) == [1, 1] and picked["score"].notna().all()


def test_contrastive_uncertain_clusters_only_the_shortlist() -> None:
    scores, bank = _two_groups()
    mask = np.zeros(40, bool)
    sel = select("contrastive-uncertain", scores, bank, budget=2, labelled_mask=mask, engine="torch", cluster_shortlist=3)
    shortlist = torch.sort(scores.entropy, descending=True, stable=True).indices[:6].numpy()
    assert np.isin(sel.ids, shortlist).all() and sorted(sel.ids.tolist()) == [3, 23]  # one per group
    cluster = sel.fitted["cluster"].numpy()
    assert (cluster[np.setdiff1d(np.arange(40), shortlist)] == -1).all() and (cluster[shortlist] >= 0).all()
    assert torch.isnan(sel.fitted["embedding"][0]).all()  # not embedded
    # A pixel budget: the clusters' picks fit it, from the shortlist still.
    fit = select("contrastive-uncertain", scores, bank, budget=2, labelled_mask=mask, engine="torch",
                 cluster_shortlist=3, pixels=250, sizes=np.full(40, 100))  # fmt: skip
    assert len(fit.ids) == 2 and np.isin(fit.ids, shortlist).all()


def test_knobs_are_config_keys_with_the_papers_defaults() -> None:
    params = inspect.signature(select).parameters
    for key, default in (("weighted_ratio_coeff", 6.0), ("cluster_shortlist", 10.0)):
        assert getattr(RunConfig(), key) == params[key].default == default
    with pytest.raises(FastalError, match="weighted_ratio_coeff = -1.0: must be >= 0"):
        make_config({"weighted_ratio_coeff": -1.0})
    with pytest.raises(FastalError, match="cluster_shortlist = 0.5: must be >= 1"):
        make_config({"cluster_shortlist": 0.5})
    with pytest.raises(FastalError, match="cluster_shortlist"):
        _pick("entropy", _pool([0, 1], [0.1, 0.2], [1, 1]), cluster_shortlist=math.nan)


@pytest.mark.parametrize("strategy", ["weighted-ratio", "contrastive-balanced"])
def test_a_run_spends_each_cycles_pixels_and_tables_the_score(strategy: str, tiny: dict, tmp_path) -> None:
    # The loop's pixel budget: a score strategy's ranked prefix reaches the cycle's target with its
    # last pick; a clustering one ends at or below it (one pick per cluster). The table holds the score.
    from fastal.config import SCHEDULE_KEYS
    from fastal.loop import run_experiment
    from fastal.pool import RegionPool
    from fastal.select.selection_table import read_table

    values = {k: v for k, v in tiny.items() if k not in SCHEDULE_KEYS}
    values.update(strategy=strategy, budgets=[25.0, 30.0], selection_plot=False, epochs=1)
    run_experiment(make_config(values), tmp_path / "run")
    pool = RegionPool.load(tmp_path / "run" / "pool.npz")
    upto = pool.sizes[pool.state > 0].sum()
    last = pool.order[-1]
    if strategy == "weighted-ratio":
        assert upto >= 0.30 * pool.total_pixels > upto - pool.sizes[last]
    else:
        assert upto <= 0.30 * pool.total_pixels
    table = read_table(tmp_path / "run" / "selection" / "cycle-2.parquet")
    picked = table[table["rank"] >= 0].sort_values("rank")
    assert picked["score"].notna().all() and (table["predicted"] >= 0).all()
    if strategy == "weighted-ratio":  # the picks in the order of their score
        assert picked["score"].is_monotonic_decreasing
