"""Datasets: the synthetic generator, CamVid, Cityscapes and folder loaders, resizing, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastal.data import DATASETS, load_dataset
from fastal.data.base import check_labels, resize_pair
from fastal.errors import FastalError


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_item(ds, i: int) -> tuple[np.ndarray, np.ndarray]:
    image, label = ds[i]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert label.dtype == np.uint8 and label.shape == image.shape[:2]
    assert label.shape == ds.image_shape(i)
    values = np.unique(label)
    assert np.all((values < ds.num_classes) | (values == 255))
    return image, label


# ------------------------------------------------------------------------------ synthetic


def test_registry_lists_every_loader():
    assert DATASETS == ("synthetic", "camvid", "cityscapes", "folder")


def test_synthetic_defaults_and_classes():
    ds = load_dataset("synthetic")
    assert len(ds) == 200 and len(load_dataset("synthetic", split="val")) == 50
    assert ds.classes[0] == "sky" and ds.classes[-1] == "bicyclist" and ds.num_classes == 11
    assert ds.ignore_index == 255 and ds.name == "synthetic" and ds.split == "train"
    image, _ = check_item(ds, 0)
    assert image.shape == (120, 160, 3)


def test_synthetic_is_deterministic_and_splits_differ():
    a = load_dataset("synthetic", num_images=4, size=(48, 64))
    b = load_dataset("synthetic", num_images=4, size=(48, 64))
    for i in (3, 0):  # any order: image i depends on (seed, split, i) only
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
    assert not np.array_equal(a[0][0], a[1][0])
    val = load_dataset("synthetic", split="val", num_images=4, size=(48, 64))
    assert not np.array_equal(a[0][0], val[0][0])
    other_seed = load_dataset("synthetic", seed=1, num_images=4, size=(48, 64))
    assert not np.array_equal(a[0][0], other_seed[0][0])
    assert a.fingerprint() == b.fingerprint() != other_seed.fingerprint()
    assert len({a.image_id(i) for i in range(4)} | {val.image_id(i) for i in range(4)}) == 8


def test_synthetic_has_every_class_with_rare_ones_rare():
    ds = load_dataset("synthetic", num_images=30, size=(96, 128))
    pixels = np.zeros(256, np.int64)
    for i in range(len(ds)):
        pixels += np.bincount(check_item(ds, i)[1].ravel(), minlength=256)
    frac = pixels[:11] / pixels.sum()
    assert np.all(pixels[:11] > 0), dict(zip(ds.classes, pixels[:11]))
    # Street layout: road, building and sky are large; poles, signs, bicyclists are small.
    for big in ("road", "building", "sky"):
        assert frac[ds.classes.index(big)] > 0.08
    for rare in ("pole", "sign", "pedestrian", "bicyclist"):
        assert frac[ds.classes.index(rare)] < 0.03


def test_synthetic_colour_alone_does_not_separate_classes():
    """A per-colour majority vote (colours quantised to 16 levels) leaves many pixels wrong."""
    ds = load_dataset("synthetic", num_images=10, size=(96, 128))
    votes = np.zeros((16**3, 256), np.int64)
    for i in range(len(ds)):
        image, label = ds[i]
        q = (image // 16).astype(np.int64)
        key = (q[..., 0] * 16 + q[..., 1]) * 16 + q[..., 2]
        np.add.at(votes, (key.ravel(), label.ravel()), 1)
    best = votes.max(1).sum() / votes.sum()
    assert best < 0.85


def test_synthetic_size_and_scale():
    assert load_dataset("synthetic", num_images=2, size="60x90")[1][0].shape == (60, 90, 3)
    ds = load_dataset("synthetic", num_images=2, scale=0.5)
    assert ds.image_shape(0) == (60, 80) and ds[0][1].shape == (60, 80)
    assert len(load_dataset("synthetic", limit=3)) == 3


@settings(max_examples=25)
@given(h=st.integers(1, 70), w=st.integers(1, 90), index=st.integers(0, 10**6))
def test_synthetic_any_size_gives_valid_items(h, w, index):
    ds = load_dataset("synthetic", num_images=index + 1, size=(h, w))
    check_item(ds, index)


def test_resize_nearest_keeps_label_values_and_bilinear_image():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(37, 53))
    image = random_image(rng, 37, 53)
    for shape in [(20, 30), (80, 101)]:
        img, lab = resize_pair(image, label, shape)
        assert img.shape == (*shape, 3) and lab.shape == shape
        assert set(np.unique(lab)) <= {0, 3, 7, 255}
    # Nearest: every output label is the input label at the source pixel of its centre.
    _, lab = resize_pair(image, label, (74, 106))
    assert np.array_equal(lab, label.repeat(2, 0).repeat(2, 1))
    # A smooth image stays smooth (interpolated, not sampled): a ramp stays a ramp.
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (8, 1)).astype(np.uint8)
    img, _ = resize_pair(np.dstack([ramp] * 3), np.zeros((8, 64), np.uint8), (8, 32))
    assert np.all(np.diff(img[4, :, 0].astype(int)) >= 0) and len(np.unique(img[4, :, 0])) > 16


# ------------------------------------------------------------------------------ CamVid


@pytest.mark.camvid
def test_camvid_train_and_val(camvid_root):
    ds = load_dataset("camvid", root=camvid_root, split="train")
    assert len(ds) == 367 and ds.num_classes == 11
    assert len(load_dataset("camvid", root=camvid_root, split="val")) == 101
    image, label = check_item(ds, 0)
    assert image.shape == (360, 480, 3)
    raw = cv2.imread(str(camvid_root / "trainannot" / f"{ds.image_id(0)}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, np.where(raw == 11, 255, raw))
    small = load_dataset("camvid", root=camvid_root, scale=0.5, limit=2)
    assert small.image_shape(1) == (180, 240) and len(small) == 2
    _, small_label = check_item(small, 0)
    assert set(np.unique(small_label)) <= set(np.unique(label))


@pytest.mark.camvid
def test_camvid_missing_split_is_a_clear_error(camvid_root):
    with pytest.raises(FastalError, match="testannot|test images"):
        load_dataset("camvid", root=camvid_root, split="test")


def make_camvid(root: Path, n: int = 2, h: int = 12, w: int = 16) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        write_png(root / "train" / f"f{i}.png", random_image(rng, h, w))
        write_png(root / "trainannot" / f"f{i}.png", rng.integers(0, 12, (h, w), dtype=np.uint8))
    return root


def test_camvid_void_becomes_ignore_on_a_small_tree(tmp_path):
    root = make_camvid(tmp_path)
    label = np.array([[0, 5, 10, 11]] * 3, np.uint8)
    write_png(root / "trainannot" / "f0.png", np.pad(label, ((0, 9), (0, 12))))
    _, got = load_dataset("camvid", root=root)[0]
    assert np.array_equal(got[:3, :4], np.array([[0, 5, 10, 255]] * 3))


# ------------------------------------------------------------------------------ Cityscapes


def make_cityscapes(root: Path, label_ids: np.ndarray, split: str = "train") -> Path:
    rng = np.random.default_rng(2)
    h, w = label_ids.shape
    for city, frame in [("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")]:
        write_png(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", random_image(rng, h, w))
        write_png(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png", label_ids)
        # The other gtFine files of the official layout must be ignored.
        write_png(root / "gtFine" / split / city / f"{frame}_gtFine_instanceIds.png", label_ids + 1)
    return root


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    # labelId: 0 unlabeled, 7 road, 8 sidewalk, 9 parking, 11 building, 23 sky,
    # 24 person, 26 car, 33 bicycle, 255 already ignore.
    ids = np.array([[0, 7, 8, 9, 11], [23, 24, 26, 33, 255]], np.uint8)
    expect = np.array([[255, 0, 1, 255, 2], [10, 11, 13, 18, 255]], np.uint8)
    ds = load_dataset("cityscapes", root=make_cityscapes(tmp_path, ids))
    assert len(ds) == 2 and ds.num_classes == 19
    assert ds.classes[0] == "road" and ds.classes[18] == "bicycle"
    assert [ds.image_id(i) for i in range(2)] == ["aachen_000000_000019", "bremen_000001_000019"]
    _, label = check_item(ds, 1)
    assert np.array_equal(label, expect)


def test_cityscapes_label_id_out_of_range(tmp_path):
    ds = load_dataset("cityscapes", root=make_cityscapes(tmp_path, np.array([[7, 34]], np.uint8)))
    with pytest.raises(FastalError, match=r"aachen_000000_000019_gtFine_labelIds.png: label value\(s\) 34"):
        ds[0]


# ------------------------------------------------------------------------------ folder


def make_folder(root: Path, n: int = 3, h: int = 10, w: int = 14, classes: int = 3) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        write_png(root / "images" / f"img{i}.png", random_image(rng, h, w))
        mask = rng.integers(0, classes, (h, w), dtype=np.uint8)
        mask[0, 0] = 255
        write_png(root / "masks" / f"img{i}.png", mask)
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(classes)) + "\n")
    return root


def test_folder_reads_classes_file_and_pairs_by_stem(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", root=root)
    assert ds.classes == ("c0", "c1", "c2") and len(ds) == 3
    image, label = check_item(ds, 2)
    expect = cv2.imread(str(root / "masks" / "img2.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, expect) and label[0, 0] == 255
    assert np.array_equal(image, cv2.imread(str(root / "images" / "img2.png"))[..., ::-1])
    named = load_dataset("folder", root=root, classes=["a", "b", "c", "d"])
    assert named.num_classes == 4


def test_folder_split_subfolders(tmp_path):
    make_folder(tmp_path / "val", n=2)
    ds = load_dataset("folder", root=tmp_path, split="val", classes=["a", "b", "c"])
    assert len(ds) == 2 and ds.split == "val"
    with pytest.raises(FastalError, match="train"):
        load_dataset("folder", root=tmp_path, split="train", classes=["a", "b", "c"])


def test_fingerprint_follows_file_contents_not_stats_or_location(tmp_path):
    root = make_folder(tmp_path / "a")
    first = load_dataset("folder", root=root).fingerprint()
    assert load_dataset("folder", root=root).fingerprint() == first
    mask = root / "masks" / "img1.png"
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert load_dataset("folder", root=root).fingerprint() == first
    moved = tmp_path / "b"
    root.rename(moved)  # a copied or moved dataset keeps its caches and runs
    assert load_dataset("folder", root=moved).fingerprint() == first
    changed = cv2.imread(str(moved / "masks" / "img1.png"), cv2.IMREAD_UNCHANGED)
    changed[3, 4] = (changed[3, 4] + 1) % 3  # one label, same file size class
    write_png(moved / "masks" / "img1.png", changed)
    assert load_dataset("folder", root=moved).fingerprint() != first
    assert load_dataset("folder", root=moved, scale=0.5).fingerprint() != load_dataset("folder", root=moved).fingerprint()


def test_unreadable_file_is_named(tmp_path):
    root = make_folder(tmp_path)
    ds = load_dataset("folder", root=root)
    (root / "masks" / "img2.png").unlink()
    with pytest.raises(FastalError, match="img2.png: cannot read"):
        ds.fingerprint()


# ------------------------------------------------------------------------------ bad input


def test_missing_folders_name_the_path(tmp_path):
    with pytest.raises(FastalError, match="nowhere.*not found"):
        load_dataset("camvid", root=tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(FastalError, match="trainannot"):
        load_dataset("camvid", root=tmp_path)
    root = make_folder(tmp_path / "f")
    for mask in (root / "masks").iterdir():
        mask.unlink()
    (root / "masks").rmdir()
    with pytest.raises(FastalError, match="f/masks: masks folder not found"):
        load_dataset("folder", root=root)
    with pytest.raises(FastalError, match="data root"):
        load_dataset("cityscapes")


def test_image_without_mask(tmp_path):
    root = make_folder(tmp_path)
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(FastalError, match=r"img1.png: no label image"):
        load_dataset("folder", root=root)


def test_size_mismatch_names_both_files(tmp_path):
    root = make_folder(tmp_path)
    write_png(root / "masks" / "img0.png", np.zeros((5, 5), np.uint8))
    ds = load_dataset("folder", root=root)
    with pytest.raises(FastalError, match=r"img0.png \(label .*img0.png\): image is 10x14 but its label is 5x5"):
        ds[0]
    check_item(ds, 1)  # the others still load: checks are per image, when read


def test_label_outside_class_range(tmp_path):
    root = make_folder(tmp_path)
    mask = np.zeros((10, 14), np.uint8)
    mask[3, 3] = 7
    write_png(root / "masks" / "img2.png", mask)
    with pytest.raises(FastalError, match=r"masks/img2.png: label value\(s\) 7 not allowed \(allowed: 0..2, 255\)"):
        load_dataset("folder", root=root)[2]


def test_unreadable_png(tmp_path, capfd):
    root = make_folder(tmp_path)
    (root / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "masks" / "img2.png").write_bytes(b"garbage")
    ds = load_dataset("folder", root=root)
    with pytest.raises(FastalError, match="images/img1.png: cannot read image"):
        ds[1]
    with pytest.raises(FastalError, match="masks/img2.png: cannot read label"):
        ds[2]
    assert capfd.readouterr().err == ""  # OpenCV's own log line would make the CLI's error two lines


def test_rgb_mask_is_rejected(tmp_path):
    root = make_folder(tmp_path)
    write_png(root / "masks" / "img0.png", np.zeros((10, 14, 3), np.uint8))
    with pytest.raises(FastalError, match="single-channel"):
        load_dataset("folder", root=root)[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "kitti"}, "unknown dataset 'kitti'"),
        ({"name": "synthetic", "scale": 0}, "scale 0"),
        ({"name": "synthetic", "scale": -1.5}, "scale -1.5"),
        ({"name": "synthetic", "scale": 0.5, "size": (4, 4)}, "either scale or size"),
        ({"name": "synthetic", "size": "12by5"}, "HxW"),
        ({"name": "synthetic", "limit": 0}, "limit 0"),
        ({"name": "synthetic", "split": "dev"}, "split 'dev'"),
        ({"name": "synthetic", "root": "/data"}, "no data root"),
        ({"name": "camvid", "root": "/data", "num_images": 3}, "only for the synthetic"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(FastalError, match=message):
        load_dataset(**kwargs)


def test_check_labels_names_the_first_bad_item(tmp_path):
    root = make_folder(tmp_path, n=4)
    check_labels(load_dataset("folder", root=root))  # a good folder passes
    bad = cv2.imread(str(root / "masks" / "img2.png"), cv2.IMREAD_UNCHANGED)
    bad[3, 4] = 7  # 3 classes: 7 is none, and 255 stays allowed
    write_png(root / "masks" / "img2.png", bad)
    with pytest.raises(FastalError, match=r"img2.*label value.* 7"):
        check_labels(load_dataset("folder", root=root), workers=2)
    write_png(root / "masks" / "img1.png", np.zeros((5, 5), np.uint8))  # wrong shape, an earlier item
    with pytest.raises(FastalError, match=r"img1.*10x14 but its label is 5x5"):
        check_labels(load_dataset("folder", root=root))
