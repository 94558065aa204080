"""SEEDS count mapping, superpixels, purity, and the on-disk cache (reuse, invalidation, CSR)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

import fastal.data.superpixels as spx
from fastal.data import load_dataset
from fastal.data.superpixels import (
    build_cache,
    dominant,
    purity,
    seeds_grid,
    seeds_grid_count,
    seeds_superpixels,
)
from fastal.errors import FastalError

from test_data_datasets import make_folder, write_png


def small_synthetic(n: int = 4):
    return load_dataset("synthetic", num_images=n, size=(48, 64))


# ------------------------------------------------------------------------------ SEEDS grid


def test_grid_count_matches_opencv():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(8, 400, 2))
        n, levels = int(rng.integers(1, 2500)), int(rng.integers(1, 7))
        expected = seeds_grid_count(h, w, n, levels)
        if expected == 0:  # OpenCV divides by zero (crashes) there: seeds_grid never asks for it
            continue
        seeds = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, n, levels)
        assert seeds.getNumberOfSuperpixels() == expected, (h, w, n, levels)
        checked += 1
    assert checked > 250


@pytest.mark.parametrize("shape", [(360, 480), (120, 160), (1024, 2048), (97, 301)])
@pytest.mark.parametrize("requested", [50, 300, 1000])
def test_grid_is_the_closest_realisable_count(shape, requested):
    h, w = shape
    grid = seeds_grid(h, w, requested)
    assert grid.realised == seeds_grid_count(h, w, grid.num_superpixels, grid.num_levels)
    # Brute force over every request and level count: nothing realisable comes closer.
    best = min(
        abs(c - requested)
        for levels in range(2, spx.MAX_LEVELS + 1)
        for n in range(10, 3 * requested)
        if (c := seeds_grid_count(h, w, n, levels)) > 0
    )
    assert abs(grid.realised - requested) == best
    assert abs(grid.realised - requested) <= 0.35 * requested


@pytest.mark.parametrize("h,w,requested", [(20, 20, 5000), (16, 24, 1000), (8, 8, 64), (13, 34, 400)])
def test_small_images_get_a_grid_seeds_can_run(h, w, requested):
    # Before the fix each of these picked a one-level grid, on which SEEDS segfaults.
    grid = seeds_grid(h, w, requested)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    local, count = seeds_superpixels(image, grid)
    assert 0 < count <= grid.realised and local.shape == (h, w)


def test_image_too_small_for_seeds_is_an_error():
    with pytest.raises(FastalError, match="4x4 is too small"):
        seeds_grid(4, 4, 1000)


def test_superpixels_are_contiguous_and_cover_the_image():
    image, _ = small_synthetic(1)[0]
    grid = seeds_grid(48, 64, 60)
    local, count = seeds_superpixels(image, grid)
    assert local.shape == (48, 64) and local.dtype == np.int32
    assert 0 < count <= grid.realised
    assert np.array_equal(np.unique(local), np.arange(count))
    hsv, _ = seeds_superpixels(image, grid, space="hsv")
    assert not np.array_equal(hsv, local)


def test_superpixels_follow_colour_edges():
    """Two flat halves: hardly any superpixel straddles the edge."""
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, 41:] = (200, 40, 40)
    local, count = seeds_superpixels(image, seeds_grid(64, 96, 40), iterations=8)
    halves = (np.arange(96) >= 41)[None].repeat(64, 0).astype(np.uint8)
    assert np.nanmean(purity(local, halves, count, 2)) > 0.98


# ------------------------------------------------------------------------------ purity


def test_dominant_and_purity_by_hand():
    local = np.array([[0, 0, 1, 1], [0, 2, 1, 1]])
    label = np.array([[3, 3, 1, 255], [4, 255, 1, 2]], np.uint8)
    cls, top, labelled = dominant(local, label, 4, 5)
    assert cls.tolist() == [3, 1, -1, -1]  # sp 2: all ignore; sp 3: no pixels
    assert top.tolist() == [2, 2, 0, 0] and labelled.tolist() == [3, 3, 0, 0]
    got = purity(local, label, 4, 5)
    assert np.allclose(got[:2], [2 / 3, 2 / 3]) and np.isnan(got[2:]).all()


def test_purity_against_a_naive_loop():
    rng = np.random.default_rng(5)
    local = rng.integers(0, 30, (40, 50))
    label = rng.choice(np.array([0, 1, 2, 255], np.uint8), (40, 50), p=[0.5, 0.3, 0.1, 0.1])
    got = purity(local, label, 30, 3)
    for k in range(30):
        values = label[(local == k) & (label != 255)]
        if values.size == 0:
            assert np.isnan(got[k])
        else:
            assert got[k] == pytest.approx(np.bincount(values).max() / values.size)


# ------------------------------------------------------------------------------ cache


@pytest.fixture
def counted(monkeypatch):
    """Counts the images computed in this process (workers=1 runs in-process)."""
    calls = []
    real = spx._process

    def wrapper(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(spx, "_process", wrapper)
    return calls


def test_cache_layout_csr_and_global_ids(tmp_path):
    ds = small_synthetic(3)
    cache = build_cache(ds, superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    assert not cache.reused and cache.num_images == 3
    assert cache.path.parent == tmp_path and cache.path.name.startswith("synthetic-train-")
    assert cache.manifest["requested"] == 40
    realised = cache.manifest["grids"]["48x64"]["realised"]
    assert realised == seeds_grid(48, 64, 40).realised
    assert np.all(cache.counts <= realised) and np.all(cache.counts > 0.7 * realised)
    assert cache.offsets.tolist() == [0, *np.cumsum(cache.counts).tolist()]
    assert cache.num_superpixels == cache.counts.sum() == len(cache.sizes)
    assert cache.manifest["image_ids"] == [ds.image_id(i) for i in range(3)]
    for i in range(3):
        image, label = ds[i]
        local = cache.local(i)
        assert local.dtype == np.uint16 and local.shape == (48, 64)
        expect, count = seeds_superpixels(image, seeds_grid(48, 64, 40))
        assert np.array_equal(local, expect) and count == cache.counts[i]
        perm, indptr = cache.csr(i)
        assert perm.dtype == indptr.dtype == np.int64
        assert np.array_equal(perm, np.argsort(local.ravel(), kind="stable"))
        assert np.array_equal(np.diff(indptr), np.bincount(local.ravel(), minlength=count))
        flat = local.ravel()
        for k in (0, count // 2, count - 1):
            assert np.all(flat[perm[indptr[k] : indptr[k + 1]]] == k)
        gids = cache.global_ids(i)
        assert gids.dtype == np.int64
        assert gids.min() == cache.offsets[i] and gids.max() == cache.offsets[i + 1] - 1
        assert np.array_equal(np.bincount(gids.ravel() - cache.offsets[i]), cache.sizes[cache.offsets[i] : cache.offsets[i + 1]])
        assert np.all(cache.image_of(gids.ravel()[::97]) == i)
    with pytest.raises(FastalError, match="superpixel ids outside"):
        cache.image_of([cache.num_superpixels])
    expect_purity = np.nanmean(np.concatenate([purity(cache.local(i), ds[i][1], cache.counts[i], 11) for i in range(3)]))
    assert cache.purity == pytest.approx(expect_purity)


def test_cache_is_reused_not_recomputed(tmp_path, counted):
    ds = small_synthetic(3)
    first = build_cache(ds, superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    assert sorted(counted) == [0, 1, 2]
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    again = build_cache(small_synthetic(3), superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    assert again.reused and again.path == first.path and len(counted) == 3
    assert (first.path / "manifest.json").stat().st_mtime_ns == stamp
    assert np.array_equal(again.local(2), first.local(2))


def test_changed_parameters_build_another_cache(tmp_path, counted):
    ds = small_synthetic(2)
    a = build_cache(ds, superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    b = build_cache(ds, superpixels=80, cache_dir=tmp_path, workers=1, show_progress=False)
    c = build_cache(ds, superpixels=40, space="hsv", cache_dir=tmp_path, workers=1, show_progress=False)
    d = build_cache(load_dataset("synthetic", num_images=2, size=(40, 64)), superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    assert not (b.reused or c.reused or d.reused) and len(counted) == 8
    assert len({a.path, b.path, c.path, d.path}) == 4
    assert b.manifest["grids"]["48x64"]["realised"] > a.manifest["grids"]["48x64"]["realised"]
    assert build_cache(ds, superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False).reused


def test_changed_files_rebuild_the_same_cache(tmp_path, counted):
    root = make_folder(tmp_path / "data", n=2, h=32, w=40)
    cache_root = tmp_path / "cache"
    first = build_cache(load_dataset("folder", root=root), superpixels=20, cache_dir=cache_root, workers=1, show_progress=False)
    old_hash = first.manifest["hash"]
    mask = np.zeros((32, 40), np.uint8)
    write_png(root / "masks" / "img1.png", mask)
    st = (root / "masks" / "img1.png").stat()
    os.utime(root / "masks" / "img1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = build_cache(load_dataset("folder", root=root), superpixels=20, cache_dir=cache_root, workers=1, show_progress=False)
    assert not second.reused and second.path == first.path and len(counted) == 4
    assert second.manifest["hash"] != old_hash
    assert sorted(p.name for p in cache_root.iterdir()) == [first.path.name]  # replaced, no leftovers


def test_stale_or_broken_manifest_is_rebuilt(tmp_path, counted):
    ds = small_synthetic(2)
    cache = build_cache(ds, superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    (cache.path / "manifest.json").write_text("{not json")
    again = build_cache(ds, superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    assert not again.reused and len(counted) == 4 and again.manifest["num_images"] == 2


def test_parallel_build_equals_serial(tmp_path):
    ds = small_synthetic(4)
    serial = build_cache(ds, superpixels=40, cache_dir=tmp_path / "a", workers=1, show_progress=False)
    parallel = build_cache(ds, superpixels=40, cache_dir=tmp_path / "b", workers=2, show_progress=True)
    assert parallel.manifest["workers"] == 2
    assert np.array_equal(serial.counts, parallel.counts) and np.array_equal(serial.sizes, parallel.sizes)
    for i in range(4):
        assert np.array_equal(serial.local(i), parallel.local(i))
        assert np.array_equal(serial.csr(i)[0], parallel.csr(i)[0])


def test_failed_build_leaves_nothing(tmp_path):
    root = make_folder(tmp_path / "data", n=3)
    mask = np.zeros((10, 14), np.uint8)
    mask[2, 2] = 9
    write_png(root / "masks" / "img2.png", mask)
    cache_root = tmp_path / "cache" / "nested"
    with pytest.raises(FastalError, match=r"img2.png: label value\(s\) 9"):
        build_cache(load_dataset("folder", root=root), superpixels=10, cache_dir=cache_root, workers=1, show_progress=False)
    assert not (tmp_path / "cache").exists()  # the folders it made on the way go too


def test_mixed_image_sizes(tmp_path):
    root = make_folder(tmp_path / "data", n=2, h=30, w=40)
    rng = np.random.default_rng(0)
    write_png(root / "images" / "img1.png", rng.integers(0, 256, (24, 52, 3), dtype=np.uint8))
    write_png(root / "masks" / "img1.png", rng.integers(0, 3, (24, 52), dtype=np.uint8))
    cache = build_cache(load_dataset("folder", root=root), superpixels=12, cache_dir=tmp_path / "c", workers=1, show_progress=False)
    assert cache.local(0).shape == (30, 40) and cache.local(1).shape == (24, 52)
    assert set(cache.manifest["grids"]) == {"30x40", "24x52"}
    assert np.array_equal(cache.csr(1)[0], np.argsort(cache.local(1).ravel(), kind="stable"))


def test_cache_pickles_by_path(tmp_path):
    cache = build_cache(small_synthetic(2), superpixels=40, cache_dir=tmp_path, workers=1, show_progress=False)
    blob = pickle.dumps(cache)
    assert len(blob) < 2000  # the path, not the arrays
    clone = pickle.loads(blob)
    assert np.array_equal(clone.local(1), cache.local(1))


def test_default_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTAL_CACHE", str(tmp_path))
    assert spx.default_cache_root() == tmp_path / "superpixels"
    cache = build_cache(small_synthetic(1), superpixels=40, workers=1, show_progress=False)
    assert cache.path.parent == Path(tmp_path / "superpixels")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"superpixels": 0}, "superpixels 0"),
        ({"superpixels": -3}, "superpixels -3"),
        ({"space": "rgb"}, "colour space 'rgb'"),
        ({"workers": 0}, "workers 0"),
        ({"prior": 9}, "prior 9"),
    ],
)
def test_bad_cache_arguments_touch_nothing(tmp_path, kwargs, message):
    with pytest.raises(FastalError, match=message):
        build_cache(small_synthetic(1), cache_dir=tmp_path / "cache", show_progress=False, **kwargs)
    assert not (tmp_path / "cache").exists()


@pytest.mark.camvid
def test_camvid_superpixels_are_pure(camvid_root, tmp_path):
    ds = load_dataset("camvid", root=camvid_root, scale=0.5, limit=3)
    cache = build_cache(ds, superpixels=1000, cache_dir=tmp_path, workers=1, show_progress=False)
    assert cache.manifest["grids"]["180x240"]["realised"] == seeds_grid(180, 240, 1000).realised
    assert cache.purity >= 0.9


def test_unwritable_cache_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FastalError, match="cannot write the superpixel cache"):
        build_cache(small_synthetic(1), superpixels=40, cache_dir=blocker / "cache", workers=1, show_progress=False)


# ------------------------------------------------------------------------ cache format versions

V1_CACHE = Path(__file__).parent / "data" / "superpixel_cache_v1"  # built by fastal d3acc91 (version 1)


def test_new_layout_gives_the_old_layouts_local_maps_and_csr_order(tmp_path):
    """Version 1 stored labels.npy and the CSR order (order.npy, uint32): version 2 stores only the
    labels and rebuilds the order by a counting sort. Read against the stored version-1 files."""
    root = tmp_path / "cache"
    old_dir = root / "synthetic-train-89592efc50ab"
    old_dir.mkdir(parents=True)
    for f in V1_CACHE.iterdir():
        (old_dir / f.name).write_bytes(f.read_bytes())
    old_labels, old_order = np.load(old_dir / "labels.npy"), np.load(old_dir / "order.npy")
    offsets = np.load(old_dir / "pixel_offsets.npy")

    cache = build_cache(small_synthetic(3), superpixels=40, cache_dir=root, workers=1, show_progress=False)
    assert not cache.reused and cache.manifest["version"] == spx.CACHE_VERSION == 2
    assert sorted(p.name for p in cache.path.iterdir()) == [
        "counts.npy", "labels.npy", "manifest.json", "pixel_offsets.npy", "shapes.npy", "sizes.npy"]
    assert not old_dir.exists()  # the superseded version-1 cache of the same data went
    assert (cache.path / "labels.npy").stat().st_size <= 2 * offsets[-1] + 128  # 2 bytes a pixel + header
    assert np.array_equal(cache.sizes, np.load(V1_CACHE / "sizes.npy"))
    for i in range(3):
        pixels = slice(offsets[i], offsets[i + 1])
        assert np.array_equal(cache.local(i).ravel(), old_labels[pixels])
        perm, indptr = cache.csr(i)
        assert np.array_equal(perm, old_order[pixels].astype(np.int64))
        assert np.array_equal(indptr, np.concatenate([[0], np.cumsum(cache.sizes[cache.offsets[i]:cache.offsets[i + 1]])]))


def test_csr_order_hand_computed_and_against_argsort():
    from fastal.kernels.cpu import csr_order

    perm, indptr = csr_order(np.array([[2, 0, 2], [1, 0, 2]], np.uint16), 4)
    assert perm.tolist() == [1, 4, 3, 0, 2, 5] and indptr.tolist() == [0, 2, 3, 6, 6]
    seg = np.random.default_rng(0).integers(0, 300, 100_003).astype(np.int32)
    perm, indptr = csr_order(seg, 300)
    assert np.array_equal(perm, np.argsort(seg, kind="stable"))
    assert np.array_equal(np.diff(indptr), np.bincount(seg, minlength=300))
