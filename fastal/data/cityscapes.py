"""Cityscapes in the official layout, labelIds mapped to the 19 train ids (everything else ignore).

``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png`` with
``gtFine/{split}/{city}/{id}_gtFine_labelIds.png``; ids are ``{city}_{seq}_{frame}``.
"""

from __future__ import annotations

from pathlib import Path

from fastal.data.base import FileDataset, label_lut, pair_by_stem, require_dir

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# labelId -> trainId for the 19 evaluated classes (cityscapesScripts' labels.py); the other
# valid labelIds (0..33) are void classes and become ignore.
TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
NUM_LABEL_IDS = 34
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds"


def load_cityscapes(root: Path, split: str = "train", **common) -> FileDataset:
    """Cityscapes ``split`` under ``root``; labelIds outside 0..33 (other than 255) are errors."""
    root = require_dir(Path(root), "Cityscapes root")
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes {split} images")
    label_dir = require_dir(root / "gtFine" / split, f"Cityscapes {split} labels")
    labels = {
        p.name[: -len(LABEL_SUFFIX + ".png")]: p for p in label_dir.glob(f"*/*{LABEL_SUFFIX}.png")
    }
    images = list(image_dir.glob(f"*/*{IMAGE_SUFFIX}.png"))
    # Pair on the id before the suffix: file stems differ between the two trees.
    pairs = [
        (key[: -len(IMAGE_SUFFIX)], img, lab)
        for key, img, lab in pair_by_stem(images, {k + IMAGE_SUFFIX: v for k, v in labels.items()}, label_dir)
    ]
    mapping = {label_id: TRAIN_IDS.get(label_id, 255) for label_id in range(NUM_LABEL_IDS)}
    return FileDataset("cityscapes", split, CLASSES, root, pairs, label_lut(mapping), **common)
