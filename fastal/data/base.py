"""What every dataset shares: resizing, label checks, fingerprints, reading PNGs with clear errors.

A dataset yields ``(image, label)``: image (H, W, 3) uint8 RGB, label (H, W) uint8 with
classes 0..C-1 and 255 = ignore. Subclasses say how to get the raw pair of image ``i``
(:meth:`SegDataset._load_raw`) and its raw shape; resizing and checks happen here, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fastal.errors import FastalError

IGNORE = 255


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-able object (sorted keys), stable across runs and machines."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def parse_size(size: str | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``"360x480"`` or ``(360, 480)`` -> ``(360, 480)`` (height, width); both must be >= 1."""
    if size is None:
        return None
    parts = size.lower().split("x") if isinstance(size, str) else size
    try:
        hw = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise FastalError(f"size {size!r}: expected HxW with positive integers, e.g. 360x480")
    return hw  # type: ignore[return-value]


def resized_shape(shape: tuple[int, int], scale: float | None) -> tuple[int, int]:
    """The (H, W) an image of raw ``shape`` has after resizing by ``scale`` (rounded, >= 1)."""
    if scale is None or scale == 1.0:
        return shape
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_pair(
    image: np.ndarray, label: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``shape`` (H, W): area/bilinear for the image, nearest for the label.

    Nearest keeps labels exact: the result holds only values present in the input.
    """
    import cv2

    if image.shape[:2] == tuple(shape):
        return image, label
    h, w = shape
    # INTER_AREA averages when shrinking (no aliasing); bilinear when enlarging.
    interp = cv2.INTER_AREA if h * w < image.shape[0] * image.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp), resize_label(label, shape)


def resize_label(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``label`` at ``shape`` (H, W), nearest neighbour (:func:`resize_pair`'s label half)."""
    import cv2

    if label.shape == tuple(shape):
        return label
    return cv2.resize(label, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def _imread(path: Path, flags: int) -> np.ndarray | None:
    """``cv2.imread`` without OpenCV's own log line for a broken file: the caller raises one
    FastalError, and the CLI owes the user a single line."""
    import cv2
    from cv2.utils import logging as cv_logging

    level = cv_logging.getLogLevel()
    cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imread(str(path), flags)
    finally:
        cv_logging.setLogLevel(level)


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image; FastalError naming the file when it cannot be decoded."""
    import cv2

    bgr = _imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FastalError(f"{path}: cannot read image (missing, truncated or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """A single-channel uint8 (H, W) label image; FastalError when unreadable, not 8-bit grey, or
    JPEG data whatever its name: lossy compression invents class ids at the edges."""
    import cv2

    try:
        with open(path, "rb") as f:
            lossy = f.read(3) == b"\xff\xd8\xff"
    except OSError:
        lossy = False  # missing or unreadable: said below
    if lossy:
        raise FastalError(f"{path}: JPEG data; label images must be lossless (PNG), JPEG compression changes "
                          f"the class ids at the edges")  # fmt: skip
    label = _imread(path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise FastalError(f"{path}: cannot read label image (missing, truncated or not an image)")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise FastalError(
            f"{path}: label image must be single-channel 8-bit, got shape {label.shape} {label.dtype}"
        )
    return label


def png_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from a PNG header without decoding; None when the file is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise FastalError(f"{path}: cannot read image ({e.strerror})") from None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def label_lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry int16 table raw value -> class; -1 marks values that are not allowed.

    255 always maps to ignore, so already-ignored pixels pass through every dataset.
    """
    lut = np.full(256, -1, dtype=np.int16)
    for raw, cls in mapping.items():
        lut[raw] = cls
    lut[IGNORE] = IGNORE
    return lut


def _ranges(values: np.ndarray) -> str:
    """``[0 1 2 3 11 255]`` -> ``"0..3, 11, 255"`` for error messages."""
    parts, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return ", ".join(parts)


def apply_lut(label: np.ndarray, lut: np.ndarray, path: Path | str) -> np.ndarray:
    """Map raw label values through ``lut``; FastalError naming the file for a value not allowed."""
    mapped = lut[label]
    bad = mapped < 0
    if bad.any():
        shown = ", ".join(str(v) for v in np.unique(label[bad])[:8])
        allowed = _ranges(np.flatnonzero(lut >= 0))
        raise FastalError(f"{path}: label value(s) {shown} not allowed (allowed: {allowed})")
    return mapped.astype(np.uint8)


class SegDataset:
    """A segmentation split: ``len(ds)``, ``ds[i] -> (image, label)``, ids, shapes, fingerprint.

    Subclasses set ``name``, ``split``, ``classes`` and implement :meth:`_load_raw`,
    :meth:`_raw_shape`, :meth:`image_id`, :meth:`__len__` and :meth:`_content` (what,
    beyond the identity, changes when the data change: the files' digests).
    """

    ignore_index = IGNORE

    def __init__(
        self,
        name: str,
        split: str,
        classes: tuple[str, ...],
        scale: float | None = None,
        size: tuple[int, int] | str | None = None,
    ) -> None:
        if scale is not None and size is not None:
            raise FastalError("give either scale or size, not both")
        if scale is not None and not (float(scale) > 0 and np.isfinite(scale)):
            raise FastalError(f"scale {scale}: must be a positive number")
        self.name = name
        self.split = split
        self.classes = tuple(classes)
        self.scale = None if scale is None else float(scale)
        self.size = parse_size(size)
        self._shapes: dict[int, tuple[int, int]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_id(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """The image and the label mapped to classes/255, before resizing, checked for range."""
        raise NotImplementedError

    def _raw_shape(self, i: int) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _identity_extra(self) -> dict[str, Any]:
        """Dataset-specific parts of the identity (generator parameters)."""
        return {}

    def _content(self) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        return i % n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        i = self._check_index(i)
        image, label = self._load_raw(i)
        if image.shape[:2] != label.shape:
            raise FastalError(
                f"{self.describe(i)}: image is {image.shape[0]}x{image.shape[1]} "
                f"but its label is {label.shape[0]}x{label.shape[1]}"
            )
        return resize_pair(image, label, self.image_shape(i))

    def label(self, i: int) -> np.ndarray:
        """The label of item ``i`` as ``self[i][1]`` gives it; datasets that store labels in files
        read only the label (an oracle needs no image: at 1024x2048 the image is most of the decoding)."""
        return self[i][1]

    def describe(self, i: int) -> str:
        """Names item ``i`` in error messages (its files, where there are files)."""
        return f"{self.name}/{self.split} image {self.image_id(i)!r}"

    def image_shape(self, i: int) -> tuple[int, int]:
        """(H, W) of item ``i`` after resizing; read from file headers where possible."""
        i = self._check_index(i)
        if self.size is not None:
            return self.size
        if i not in self._shapes:
            self._shapes[i] = resized_shape(self._raw_shape(i), self.scale)
        return self._shapes[i]

    def identity(self) -> dict[str, Any]:
        """What names this split independent of file contents: dataset, split, resize, ids."""
        return {
            "dataset": self.name,
            "split": self.split,
            "classes": list(self.classes),
            "scale": self.scale,
            "size": list(self.size) if self.size else None,
            "ids": stable_hash([self.image_id(i) for i in range(len(self))]),
            "num_images": len(self),
            **self._identity_extra(),
        }

    def fingerprint(self) -> str:
        """A hash of the identity plus the content (file digests, or generator params)."""
        return stable_hash({"identity": self.identity(), "content": self._content()}, length=32)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.split}: {len(self)} images, {self.num_classes} classes>"


class FileDataset(SegDataset):
    """Image/label file pairs whose raw label values map to classes through a lookup table."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: tuple[str, ...],
        root: Path,
        pairs: list[tuple[str, Path, Path]],
        lut: np.ndarray,
        scale: float | None = None,
        size: tuple[int, int] | str | None = None,
        limit: int | None = None,
    ) -> None:
        """``pairs``: (id, image path, label path) in a stable order; ``limit`` keeps the first N."""
        super().__init__(name, split, classes, scale=scale, size=size)
        if not pairs:
            raise FastalError(f"{root}: no images found for {name} split {split!r}")
        self.root = Path(root)
        self.pairs = pairs[:limit] if limit is not None else pairs
        self.lut = lut
        self._digests: list[str] | None = None  # file digests, computed once (see _content)

    def __len__(self) -> int:
        return len(self.pairs)

    def image_id(self, i: int) -> str:
        return self.pairs[self._check_index(i)][0]

    def describe(self, i: int) -> str:
        _, image, label = self.pairs[self._check_index(i)]
        return f"{image} (label {label})"

    def _load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        _, image_path, label_path = self.pairs[i]
        image = read_image(image_path)
        label = apply_lut(read_label(label_path), self.lut, label_path)
        return image, label

    def label(self, i: int) -> np.ndarray:
        i = self._check_index(i)
        label_path = self.pairs[i][2]
        label = apply_lut(read_label(label_path), self.lut, label_path)
        raw = self._raw_shape(i)  # the image's, from its header: the check __getitem__ makes
        if label.shape != tuple(raw):
            raise FastalError(f"{self.describe(i)}: image is {raw[0]}x{raw[1]} "
                              f"but its label is {label.shape[0]}x{label.shape[1]}")  # fmt: skip
        return resize_label(label, self.image_shape(i))

    def _raw_shape(self, i: int) -> tuple[int, int]:
        image_path = self.pairs[i][1]
        shape = png_shape(image_path)
        return shape if shape is not None else read_image(image_path).shape[:2]

    def _content(self) -> list[Any]:
        # The bytes, not sizes and mtimes or the folder's path: a copied or moved dataset (new
        # mtimes, as when ../shared was re-created) keeps its caches, references and runs valid.
        if self._digests is None:
            paths = [p for _, image, label in self.pairs for p in (image, label)]
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
                self._digests = list(pool.map(file_digest, paths))
        return self._digests


def file_digest(path: Path) -> str:
    """BLAKE2b (128-bit) of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise FastalError(f"{path}: cannot read ({e.strerror})") from None
    return h.hexdigest()


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a FastalError naming it and what it should hold."""
    if not path.is_dir():
        raise FastalError(f"{path}: {what} folder not found")
    return path


def pair_by_stem(
    images: list[Path], label_for: dict[str, Path], label_dir: Path
) -> list[tuple[str, Path, Path]]:
    """Pair each image with the label of the same key (file stem); error on an image without one."""
    pairs = []
    for image in sorted(images):
        label = label_for.get(image.stem)
        if label is None:
            raise FastalError(f"{image}: no label image for it in {label_dir}")
        pairs.append((image.stem, image, label))
    return pairs


def check_labels(ds: SegDataset, workers: int = 4) -> None:
    """Read every item of ``ds`` (``workers`` threads): a label that cannot be read, does not
    match its image, or holds a value that is no class raises the dataset's FastalError here.
    For a split nothing else reads up front (validation), so that bad data stops a command
    before it writes anything."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(ds.__getitem__, range(len(ds))):  # re-raises the first failing item's error
            pass
