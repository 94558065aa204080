"""Datasets (synthetic, CamVid, Cityscapes, a user's folder) and the superpixel cache.

>>> from fastal.data import load_dataset
>>> ds = load_dataset("synthetic", split="train", num_images=8)
>>> image, label = ds[0]   # (H, W, 3) uint8 RGB, (H, W) uint8 with 255 = ignore
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastal.data.base import SegDataset
from fastal.errors import FastalError

DATASETS = ("synthetic", "camvid", "cityscapes", "folder")

__all__ = ["DATASETS", "SegDataset", "load_dataset"]


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    scale: float | None = None,
    size: tuple[int, int] | str | None = None,
    limit: int | None = None,
    seed: int = 0,
    num_images: int | None = None,
    classes: Sequence[str] | None = None,
) -> SegDataset:
    """Open a dataset split by name.

    ``root`` is the dataset folder (not used by ``synthetic``); ``scale`` (> 0) or ``size``
    (``(H, W)`` or ``"HxW"``) resize images (area/bilinear) and labels (nearest); ``limit``
    keeps the first N images in id order; ``seed`` and ``num_images`` drive ``synthetic``;
    ``classes`` names the classes of ``folder`` (else ``root/classes.txt``).

    ``synthetic`` defaults: 120x160 images, 200 train / 50 val / 50 test, CamVid's 11 classes.
    Every problem with the arguments or the files is a :class:`FastalError` naming it.
    """
    if name not in DATASETS:
        raise FastalError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    if limit is not None and int(limit) < 1:
        raise FastalError(f"limit {limit}: must be >= 1")
    if name != "synthetic" and num_images is not None:
        raise FastalError(f"num_images is only for the synthetic dataset, not {name}")
    if name != "folder" and classes is not None:
        raise FastalError(f"classes are only given for the folder dataset; {name} has its own")
    if name == "synthetic":
        from fastal.data.synthetic import SyntheticDataset

        if root is not None:
            raise FastalError("the synthetic dataset is generated: it takes no data root")
        if limit is not None:
            num_images = min(int(limit), num_images or len(SyntheticDataset(split, seed)))
        return SyntheticDataset(split, seed=seed, num_images=num_images, scale=scale, size=size)
    if root is None:
        raise FastalError(f"dataset {name} needs a data root (--data-root)")
    common = {"scale": scale, "size": size, "limit": limit}
    if name == "camvid":
        from fastal.data.camvid import load_camvid

        return load_camvid(Path(root), split, **common)
    if name == "cityscapes":
        from fastal.data.cityscapes import load_cityscapes

        return load_cityscapes(Path(root), split, **common)
    from fastal.data.folder import load_folder

    return load_folder(Path(root), split, classes=classes, **common)
