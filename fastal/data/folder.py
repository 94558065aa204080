"""A user's own data: ``images/`` and ``masks/`` with matching file stems, and class names.

Layout: per split ``root/{split}/images`` + ``root/{split}/masks``; a flat ``root/images`` +
``root/masks`` is the ``train`` split. Masks are 8-bit single-channel images with
values 0..C-1 and 255 = ignore. Class names come from ``classes`` or ``root/classes.txt``
(one per line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastal.data.base import FileDataset, label_lut, pair_by_stem, require_dir
from fastal.errors import FastalError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# Masks must be lossless: JPEG would invent labels at edges.
MASK_EXTS = {".png", ".bmp", ".tif", ".tiff"}


def read_classes(root: Path) -> tuple[str, ...]:
    path = root / "classes.txt"
    if not path.is_file():
        raise FastalError(f"{path}: not found; give the class names (classes=[...]) or write this file")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise FastalError(f"{path}: no class names in it")
    return names


def load_folder(
    root: Path, split: str = "train", classes: Sequence[str] | None = None, **common
) -> FileDataset:
    root = require_dir(Path(root), "dataset root")
    flat = split == "train" and (root / "images").is_dir() and not (root / split).is_dir()
    base = root if flat else root / split
    image_dir = require_dir(base / "images", "images")
    mask_dir = require_dir(base / "masks", "masks")
    names = tuple(classes) if classes is not None else read_classes(root)
    if not 1 <= len(names) <= 255:
        raise FastalError(f"folder dataset: {len(names)} classes; expected 1..255")
    if len(set(names)) != len(names):
        raise FastalError(f"folder dataset: duplicate class names in {list(names)}")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in MASK_EXTS}
    images = [p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS]
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})[0]
        raise FastalError(f"{image_dir}: several images share the stem {dup!r}")
    pairs = pair_by_stem(images, masks, mask_dir)
    lut = label_lut({c: c for c in range(len(names))})
    return FileDataset("folder", split, names, root, pairs, lut, **common)
