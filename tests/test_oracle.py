"""Oracles: a hand-computed image, a naive per-superpixel reference, errors, people's masks."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given
from test_pool import NUM_CLASSES, StandInCache, oracle_for, random_scene

from fastal.errors import FastalError
from fastal.oracle import MaskOracle, SimulatedOracle
from fastal.pool import RegionPool

# 4x4 image, 3 superpixels: 0 = top-left 2x2, 1 = right 4x2, 2 = bottom-left 2x2.
LOCAL = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]], dtype=np.uint16)
TRUTH = np.array(
    [[0, 0, 2, 2], [1, 255, 2, 2], [255, 255, 2, 1], [255, 255, 1, 0]], dtype=np.uint8
)  # fmt: skip
# By hand: sp0 = {0,0,1,void}: class 0, 3 valid, 1 wrong, classes {0,1};
#          sp1 = {2,2,2,2,2,1,1,0}: class 2, 8 valid, 3 wrong, classes {0,1,2};
#          sp2 = all void: class -1, nothing labelled.


class StandInDataset:
    """``ds[i] -> (image, label)`` over given label maps."""

    def __init__(self, labels: list[np.ndarray], num_classes: int) -> None:
        self.labels = labels
        self.num_classes = num_classes
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        self.reads.append(i)
        y = self.labels[i]
        return np.zeros((*y.shape, 3), dtype=np.uint8), y


def hand_case():
    return StandInCache([LOCAL]), StandInDataset([TRUTH], num_classes=3)


def test_hand_computed_dominant():
    cache, ds = hand_case()
    a = SimulatedOracle(ds, cache, mode="dominant").query(np.array([2, 0, 1]))
    assert a.ids.tolist() == [2, 0, 1]
    assert a.classes.tolist() == [-1, 0, 2]
    assert a.pixels.tolist() == [4, 4, 8]
    assert a.clicks.tolist() == [1, 1, 1]
    assert a.noisy.tolist() == [0, 1, 3] and a.valid.tolist() == [0, 3, 8]
    assert (a.noisy_pixels, a.valid_pixels) == (4, 11) and a.noise == pytest.approx(4 / 11)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="dominant")
    pool.add(a, cycle=1)
    want = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [255, 255, 2, 2], [255, 255, 2, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(pool.label_map(0, LOCAL), want)
    assert pool.cost_clicks == 3 and pool.noisy_pixels == 4
    assert pool.summary()["label_noise"] == pytest.approx(4 / 11)


def test_hand_computed_full():
    cache, ds = hand_case()
    oracle = SimulatedOracle(ds, cache, mode="full")
    a = oracle.query(np.array([1, 2]))
    assert a.classes.tolist() == [2, -1]
    assert a.clicks.tolist() == [3, 1]  # one per class present; a void region still costs a look
    assert a.noisy.tolist() == [0, 0] and a.noise == 0.0
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="full")
    pool.add(a, cycle=1)
    want = np.array([[255, 255, 2, 2], [255, 255, 2, 2], [255, 255, 2, 1], [255, 255, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(pool.label_map(0, LOCAL, oracle.truth(0)), want)
    pool.add(oracle.query(np.array([0])), cycle=2)
    np.testing.assert_array_equal(pool.label_map(0, LOCAL, oracle.truth(0)), TRUTH)
    assert pool.cost_clicks == 3 + 1 + 2


def test_dominant_ties_go_to_lowest_class():
    local = np.zeros((2, 2), dtype=np.uint16)
    truth = np.array([[3, 1], [1, 3]], dtype=np.uint8)
    a = SimulatedOracle(StandInDataset([truth], 4), StandInCache([local]), "dominant").query([0])
    assert a.classes.tolist() == [1] and a.noisy.tolist() == [2]


@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["full", "dominant"]), data=st.data())
def test_query_equals_naive_per_superpixel(seed, mode, data):
    cache, truths = random_scene(np.random.default_rng(seed), num_images=4)
    ds = StandInDataset(truths, NUM_CLASSES)
    gids = data.draw(st.lists(st.integers(0, cache.num_superpixels - 1), unique=True, max_size=12))
    a = SimulatedOracle(ds, cache, mode).query(np.array(gids, dtype=np.int64))
    assert sorted(ds.reads) == sorted(set(ds.reads))  # each image read once
    assert a.ids.dtype == np.int64 and a.classes.dtype == np.int16
    for k, g in enumerate(gids):
        i = int(np.searchsorted(cache.offsets, g, side="right")) - 1
        vals = truths[i][cache.local(i) == g - cache.offsets[i]].tolist()
        valid = [v for v in vals if v != 255]
        counts = {c: valid.count(c) for c in set(valid)}
        top = min(counts, key=lambda c: (-counts[c], c)) if counts else -1
        assert a.ids[k] == g and a.pixels[k] == len(vals) and a.valid[k] == len(valid)
        assert a.classes[k] == top
        if mode == "dominant":
            assert a.clicks[k] == 1 and a.noisy[k] == len(valid) - counts.get(top, 0)
        else:
            assert a.clicks[k] == max(1, len(counts)) and a.noisy[k] == 0


def test_empty_query():
    cache, truths = random_scene(np.random.default_rng(0))
    a = oracle_for(cache, truths, "dominant").query(np.zeros(0, dtype=np.int64))
    assert len(a) == 0 and a.noise == 0.0


def test_oracle_errors():
    cache, ds = hand_case()
    oracle = SimulatedOracle(ds, cache, mode="dominant")
    with pytest.raises(FastalError, match=r"out of range 0..2: \[3\]"):
        oracle.query([0, 3])
    with pytest.raises(FastalError, match=r"duplicates.*\[1\]"):
        oracle.query([1, 1])
    with pytest.raises(FastalError, match="label mode"):
        SimulatedOracle(ds, cache, mode="partial")
    bad = TRUTH.copy()
    bad[0, 0] = 7
    with pytest.raises(FastalError, match="image 0: label 7 outside 0..2"):
        SimulatedOracle(StandInDataset([bad], 3), cache).query([0])
    with pytest.raises(FastalError, match="shape"):
        SimulatedOracle(StandInDataset([TRUTH[:3]], 3), cache).query([0])
    stale = StandInCache([LOCAL])
    stale.sizes = stale.sizes + 1
    with pytest.raises(FastalError, match="rebuild the cache"):
        SimulatedOracle(ds, stale).query([1])
    fewer = StandInCache([np.minimum(LOCAL, 1)])  # offsets say 2 superpixels, map below says 3
    fewer._locals = [LOCAL]
    with pytest.raises(FastalError, match="map holds id 2"):
        SimulatedOracle(ds, fewer).query([1])


def test_mask_oracle_answers_from_returned_masks():
    cache, truths = random_scene(np.random.default_rng(4), num_images=3)
    masks = {0: truths[0].astype(np.int64), 2: truths[2]}  # image 1 not returned
    people = MaskOracle(masks, cache, NUM_CLASSES, mode="full")
    sim = oracle_for(cache, truths, "full")
    ids = np.concatenate([np.arange(cache.offsets[2], cache.offsets[3]), [cache.offsets[0]]])
    a, b = people.query(ids), sim.query(ids)
    for name in ("ids", "classes", "pixels", "clicks", "noisy", "valid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    with pytest.raises(FastalError, match=rf"no returned mask for images \[1\].*{cache.offsets[1]}"):
        people.query([cache.offsets[0], cache.offsets[1]])
    with pytest.raises(FastalError, match="integers"):
        MaskOracle({0: truths[0].astype(float)}, cache, NUM_CLASSES).query([0])
