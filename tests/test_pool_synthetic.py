"""Pool and oracle on the real synthetic dataset and SEEDS cache (small: 4 images, 48x64)."""

from __future__ import annotations

import numpy as np
import pytest

from fastal.data import load_dataset
from fastal.data.superpixels import build_cache, dominant
from fastal.oracle import SimulatedOracle
from fastal.pool import RegionPool, random_initial


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    ds = load_dataset("synthetic", num_images=4, size=(48, 64), seed=3)
    cache = build_cache(ds, superpixels=50, cache_dir=tmp_path_factory.mktemp("sp"), workers=1, show_progress=False)
    return ds, cache


@pytest.mark.parametrize("mode", ["dominant", "full"])
def test_label_a_whole_synthetic_pool_in_cycles(scene, tmp_path, mode):
    ds, cache = scene
    oracle = SimulatedOracle(ds, cache, mode=mode)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode=mode, seed=0)
    answers = []
    for cycle, frac in enumerate((0.1, 0.4, 1.0), start=1):
        answers.append(oracle.query(random_initial(pool, frac)))
        pool.add(answers[-1], cycle)
        assert pool.labelled_pixel_fraction >= frac - 1e-12
    assert pool.num_labelled == cache.num_superpixels and pool.labelled_pixels == 4 * 48 * 64
    assert pool.cost_clicks == sum(int(a.clicks.sum()) for a in answers)

    for i in range(len(ds)):
        _, y = ds[i]
        local = cache.local(i)
        cls, top, valid = dominant(local, y, int(cache.counts[i]), ds.num_classes)  # DATA's purity helper
        gids = pool.image_ids(i)
        np.testing.assert_array_equal(pool.classes[gids], cls)
        np.testing.assert_array_equal(pool.valid[gids], valid)
        want_noisy = valid - top if mode == "dominant" else np.zeros_like(valid)
        np.testing.assert_array_equal(pool.noisy[gids], want_noisy)
        got = pool.label_map(i, local, oracle.truth(i))
        if mode == "full":  # everything labelled: the label map is the ground truth
            np.testing.assert_array_equal(got, y)
        else:
            np.testing.assert_array_equal(got, np.where(cls >= 0, cls, 255).astype(np.uint8)[local])

    pool.save(tmp_path / "pool.npz")
    loaded = RegionPool.load(tmp_path / "pool.npz", cache.offsets, cache.sizes)
    assert loaded.log == pool.log and loaded.summary() == pool.summary()
