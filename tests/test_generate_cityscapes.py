"""`fastal generate cityscapes`: layout, labelIds -> trainIds through the loader, determinism,
resuming a killed generation, and bad input (exit 2, one line)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fastal.cli import main
from fastal.data import load_dataset
from fastal.data import synthetic as syn
from fastal.data.cityscapes import CLASSES, TRAIN_IDS
from fastal.data.generate_cityscapes import CITIES, EGO_VEHICLE, MANIFEST, VARIANTS, generate_cityscapes, to_label_ids

SIZE = (64, 128)


def tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs") / "cityscapes"
    generate_cityscapes(root, train=20, val=4, size=SIZE, seed=3, workers=1, show_progress=False)
    return root


def test_layout_is_cityscapes(tree):
    for split, n in (("train", 20), ("val", 4)):
        images = sorted((tree / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        labels = sorted((tree / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        assert len(images) == len(labels) == n
        for image, label in zip(images, labels):
            city, seq, frame, suffix = image.name.split("_")
            assert image.parent.name == city and city in CITIES[split] and suffix == "leftImg8bit.png"
            assert len(seq) == len(frame) == 6 and seq.isdigit() and frame.isdigit()
            assert label.name == f"{city}_{seq}_{frame}_gtFine_labelIds.png" and label.parent.name == city
            assert cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape == (*SIZE, 3)
            raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
            assert raw.shape == SIZE and raw.dtype == np.uint8 and raw.max() <= 33  # valid labelIds only
    assert json.loads((tree / MANIFEST).read_text())["size"] == list(SIZE)


def test_loader_maps_label_ids_to_train_ids(tree):
    ds = load_dataset("cityscapes", root=tree, split="train")
    assert len(ds) == 20 and ds.classes == CLASSES
    seen = set()
    for i in range(len(ds)):
        image, label = ds[i]
        _, image_path, label_path = ds.pairs[i]
        raw = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        # Independent reference: cityscapesScripts' table, pixel by pixel.
        want = np.array([[TRAIN_IDS.get(int(v), 255) for v in row] for row in raw], np.uint8)
        assert np.array_equal(label, want)
        assert np.array_equal(image, cv2.imread(str(image_path))[..., ::-1])
        assert (raw == EGO_VEHICLE).any() and (label[raw == EGO_VEHICLE] == 255).all()
        seen |= set(np.unique(label[label != 255]).tolist())
    # Roads, cars, buildings...: most evaluated classes occur in 20 small images.
    assert len(seen) >= 14 and {0, 2, 8, 10, 13} <= seen


def test_each_region_draws_one_variant_of_its_class():
    lab = syn.render(5, 10, 0, 96, 192)[1]
    ids = to_label_ids(lab, np.random.default_rng(0))
    for cls, (variants, _) in VARIANTS.items():
        mask = (lab == cls).astype(np.uint8)
        assert np.isin(ids[mask > 0], variants).all()
        n, comp = cv2.connectedComponents(mask, connectivity=8)
        for k in range(1, n):
            assert np.unique(ids[comp == k]).size == 1  # the whole region one labelId


def test_same_seed_same_bytes_other_seed_other_scenes(tree, tmp_path):
    again = tmp_path / "again"
    generate_cityscapes(again, train=20, val=4, size=SIZE, seed=3, workers=2, show_progress=False)
    assert tree_bytes(again) == tree_bytes(tree)  # and independent of the worker count
    other = tmp_path / "other"
    generate_cityscapes(other, train=2, val=1, size=SIZE, seed=4, workers=1, show_progress=False)
    a, b = tree_bytes(other), tree_bytes(tree)
    assert all(a[k] != b[k] for k in a if "leftImg8bit" in k)


def test_a_killed_generation_goes_on_and_other_parameters_are_refused(tree, tmp_path, capsys):
    root = tmp_path / "cs"
    generate_cityscapes(root, train=3, val=1, size=SIZE, seed=3, workers=1, show_progress=False)
    first = tree_bytes(root)
    gone = sorted(root.rglob("*_leftImg8bit.png"))[1]
    gone.unlink()  # as if killed between its label and its image
    generate_cityscapes(root, train=3, val=1, size=SIZE, seed=3, workers=1, show_progress=False)
    assert tree_bytes(root) == first
    assert not list(root.rglob("*.tmp"))

    def cli(*argv: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as e:
            main(["generate", "cityscapes", *argv])
        return e.value.code, capsys.readouterr().err

    code, out = cli("--out", str(root), "--train", "3", "--val", "1", "--size", "64x128", "--seed", "4")
    assert code == 2 and "other parameters" in out and tree_bytes(root) == first
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    code, out = cli("--out", str(tmp_path / "full"), "--train", "1", "--val", "1", "--size", "64x128")
    assert code == 2 and "not an empty folder" in out
    for bad in (["--size", "64"], ["--train", "0"], ["--size", "8x8"]):
        code, out = cli("--out", str(tmp_path / "new"), *bad)
        assert code == 2 and out.count("error:") == 1
    assert not (tmp_path / "new").exists()


def test_label_alone_equals_the_pairs_label_resized_or_not(tree):
    for scale in (None, 0.5, 0.37):
        ds = load_dataset("cityscapes", root=tree, split="val", scale=scale)
        for i in range(len(ds)):
            assert np.array_equal(ds.label(i), ds[i][1])


def test_label_alone_checks_the_images_size(tmp_path):
    from fastal.errors import FastalError

    root = tmp_path / "cs"
    generate_cityscapes(root, train=1, val=1, size=SIZE, seed=0, workers=1, show_progress=False)
    label = next(root.glob("gtFine/val/*/*.png"))
    cv2.imwrite(str(label), np.zeros((32, 128), np.uint8))
    ds = load_dataset("cityscapes", root=root, split="val")
    with pytest.raises(FastalError, match="image is 64x128 but its label is 32x128"):
        ds.label(0)
