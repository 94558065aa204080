"""CamVid in the SegNet layout: ``{split}/`` images and ``{split}annot/`` labels (0..10, 11 = void)."""

from __future__ import annotations

from pathlib import Path

from fastal.data.base import FileDataset, label_lut, pair_by_stem, require_dir

CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
VOID = 11
SPLITS = ("train", "val", "test")


def load_camvid(root: Path, split: str = "train", **common) -> FileDataset:
    """CamVid ``split`` under ``root``; void (11) becomes ignore (255), other values are errors."""
    from fastal.errors import FastalError

    if split not in SPLITS:
        raise FastalError(f"camvid split {split!r}: expected one of {', '.join(SPLITS)}")
    root = require_dir(Path(root), "CamVid root")
    image_dir = require_dir(root / split, f"CamVid {split} images")
    label_dir = require_dir(root / f"{split}annot", f"CamVid {split} labels")
    labels = {p.stem: p for p in label_dir.glob("*.png")}
    pairs = pair_by_stem(list(image_dir.glob("*.png")), labels, label_dir)
    lut = label_lut({**{c: c for c in range(len(CLASSES))}, VOID: 255})
    return FileDataset("camvid", split, CLASSES, root, pairs, lut, **common)
