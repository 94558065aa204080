"""What a labelling tool's export says about a round: per image of the round, a class mask that
its shapes (masks, brush strokes, polygons) paint one by one, checked as they come.

The CVAT and Label Studio readers (:mod:`fastal.labelling.cvat`, :mod:`fastal.labelling.label_studio`)
hand every shape to :class:`Answers`; `fastal label import` then reads the masks as it reads the
PNG masks people paint by hand (:func:`fastal.labelling.query_round.import_masks`), with the same checks.

A region counts as answered when the export paints at least one of its pixels; regions still
carrying the :data:`UNANSWERED` label, or left out, stay unlabelled in the run.
"""

from __future__ import annotations

import colorsys
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fastal.errors import FastalError

UNANSWERED = "unanswered"  # the label of a queried region nobody has answered yet
REGION_ATTRIBUTE = "superpixel"  # CVAT attribute / Label Studio region id: the global superpixel id
NONE = 255  # a pixel no answer paints (the masks' "not labelled", as in masks/*.png)


@dataclass(frozen=True)
class RoundImage:
    """An image of the round: its dataset index, id (file stem in every export) and size."""

    index: int
    image_id: str
    height: int
    width: int
    regions: frozenset[int]  # the global superpixel ids queried in it

    @property
    def file_name(self) -> str:
        return f"{self.image_id}.png"


def round_images(rows: Sequence[dict[str, Any]], ds: Any) -> list[RoundImage]:
    """The images of a round's query rows, in index order."""
    out = []
    for i in sorted({r["image"] for r in rows}):
        h, w = ds.image_shape(i)
        out.append(RoundImage(i, ds.image_id(i), int(h), int(w),
                              frozenset(r["superpixel"] for r in rows if r["image"] == i)))  # fmt: skip
    return out


class Answers:
    """The class masks an export paints, image by image; every shape is checked against the round.

    Args:
        source: the export (named in every error).
        images: the round's images.
        classes: the run's class names (label ``k`` -> class ``k``).
    """

    def __init__(self, source: Path, images: Sequence[RoundImage], classes: Sequence[str]) -> None:
        self.source = source
        self.images = {im.image_id: im for im in images}
        self.classes = {name: k for k, name in enumerate(classes)}
        self.masks: dict[int, np.ndarray] = {}

    def fail(self, where: str, what: str) -> FastalError:
        return FastalError(f"{self.source}: {where}: {what}")

    def image(self, name: str, where: str) -> RoundImage:
        """The round image a tool names ``name`` (a file name, perhaps with folders or another extension)."""
        base = PurePosixPath(name.replace("\\", "/")).name
        uploaded = re.sub(r"^[0-9a-f]{8}-", "", base)  # Label Studio prefixes the files uploaded to it
        for key in (base, base.rsplit(".", 1)[0], uploaded.rsplit(".", 1)[0]):
            if key in self.images:
                return self.images[key]
        listed = ", ".join(sorted(self.images)[:5]) + (", ..." if len(self.images) > 5 else "")
        raise self.fail(where, f"image {name!r} is not in the round (its images: {listed})")

    def check_size(self, im: RoundImage, height: int, width: int, where: str) -> None:
        if (height, width) != (im.height, im.width):
            raise self.fail(where, f"the mask is {height}x{width}, image {im.image_id} is {im.height}x{im.width}")

    def label(self, name: Any, where: str) -> int | None:
        """Class index of label ``name``; None for :data:`UNANSWERED`."""
        if name == UNANSWERED:
            return None
        if name not in self.classes:
            raise self.fail(where, f"label {name!r} is none of the run's classes ({', '.join(self.classes)})")
        return self.classes[name]

    def region(self, im: RoundImage, value: Any, where: str) -> int:
        """The superpixel id a shape says it answers: one queried in its image (the answer itself
        is matched to regions by the pixels it paints)."""
        try:
            gid = int(float(value))
        except (TypeError, ValueError):
            raise self.fail(where, f"{REGION_ATTRIBUTE} {value!r} is not a superpixel id") from None
        if gid not in im.regions:
            raise self.fail(where, f"superpixel {gid} was not queried in image {im.image_id} "
                                   f"(queried: {sorted(im.regions)})")  # fmt: skip
        return gid

    def paint(self, im: RoundImage, mask: np.ndarray, cls: int, where: str) -> None:
        """Paint class ``cls`` where ``mask`` (H, W bool) is set. A region may be painted in several
        classes (full label mode), but answers that give one pixel two classes are refused."""
        name = list(self.classes)[cls]
        canvas = self.masks.setdefault(im.index, np.full((im.height, im.width), NONE, dtype=np.uint8))
        clash = mask & (canvas != NONE) & (canvas != cls)
        if clash.any():
            y, x = (int(v[0]) for v in np.nonzero(clash))
            other = list(self.classes)[canvas[y, x]]
            raise self.fail(where, f"{name} overlaps an answer of {other} at pixel (x={x}, y={y}) of image "
                                   f"{im.image_id}: one answer per region")  # fmt: skip
        canvas[mask] = cls


def colours(names: Sequence[str]) -> dict[str, str]:
    """A distinct #rrggbb per label (golden-ratio hues); "unanswered" grey."""
    out = {}
    for k, name in enumerate(names):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95)
        out[name] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return {**out, UNANSWERED: "#808080"}


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """The pixels inside a polygon of (x, y) pixel coordinates, (H, W) bool."""
    import cv2

    out = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(out, [np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)], 1)
    return out.astype(bool)


class ExportFiles:
    """The files of an export: a zip archive, a folder, or one file; names relative, with '/'."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self._names = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
            self._zip = None
        elif zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self._names = {n: n for n in self._zip.namelist() if not n.endswith("/")}
        else:
            self._names, self._zip = {path.name: path}, None

    def names(self) -> Iterator[str]:
        return iter(self._names)

    def find(self, base: str) -> list[str]:
        """Names whose last part is ``base``."""
        return [n for n in self._names if PurePosixPath(n).name == base]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._names[name])
        return self._names[name].read_bytes()
