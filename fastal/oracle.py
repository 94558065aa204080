"""Oracles: reveal the labels of queried superpixels, from the dataset's ground truth or from
masks people return.

Two label modes (the cost model):

- ``full``: every pixel of a superpixel gets its ground-truth label; a person clicks once per
  class present (at least once: even a void region has to be looked at and marked);
- ``dominant``: the whole superpixel gets its majority non-ignore class (ties -> lowest class
  index); one click. Pixels whose truth differs become label noise, which the answer counts.
  A superpixel that is entirely ignore gets class -1 and labels no pixel.

Example::

    oracle = SimulatedOracle(ds, cache, mode="dominant")
    answer = oracle.query(np.array([3, 17, 250]))
    pool.add(answer, cycle=2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastal.data.base import IGNORE
from fastal.data.superpixels import class_histograms
from fastal.errors import FastalError
from fastal.pool import LABEL_MODES, check_ids, global_to_local

__all__ = ["MaskOracle", "Oracle", "OracleAnswer", "SimulatedOracle", "answer_from_histograms"]


@dataclass(frozen=True)
class OracleAnswer:
    """What an oracle (:mod:`fastal.oracle`) revealed; one entry per queried superpixel, in query order.

    ``classes`` is the majority non-ignore class (-1 when the superpixel is all ignore) in
    both modes; ``noisy`` counts non-ignore pixels whose truth differs from the label given
    (always 0 in full mode); ``valid`` counts non-ignore pixels.
    """

    mode: str
    ids: np.ndarray  # int64 [k] global superpixel ids
    classes: np.ndarray  # int16 [k]
    pixels: np.ndarray  # int64 [k]
    clicks: np.ndarray  # int64 [k]
    noisy: np.ndarray  # int64 [k]
    valid: np.ndarray  # int64 [k]

    def __len__(self) -> int:
        return int(self.ids.size)

    @property
    def noisy_pixels(self) -> int:
        return int(self.noisy.sum())

    @property
    def valid_pixels(self) -> int:
        return int(self.valid.sum())

    @property
    def noise(self) -> float:
        """Fraction of labelled non-ignore pixels whose label is wrong."""
        return self.noisy_pixels / self.valid_pixels if self.valid_pixels else 0.0


def answer_from_histograms(mode: str, ids: np.ndarray, hist: np.ndarray) -> OracleAnswer:
    """Build the answer for superpixels ``ids`` from their rows ``hist`` [k, C + 1]."""
    labelled = hist[:, :-1]  # (k, C) non-ignore pixels per class
    valid = labelled.sum(axis=1)
    top = labelled.argmax(axis=1)  # ties -> lowest class
    classes = np.where(valid > 0, top, -1).astype(np.int16)
    if mode == "dominant":
        clicks = np.ones(len(ids), dtype=np.int64)
        noisy = valid - np.take_along_axis(labelled, top[:, None], axis=1)[:, 0]
    else:
        clicks = np.maximum((labelled > 0).sum(axis=1), 1).astype(np.int64)
        noisy = np.zeros(len(ids), dtype=np.int64)
    return OracleAnswer(
        mode=mode,
        ids=ids,
        classes=classes,
        pixels=hist.sum(axis=1).astype(np.int64),
        clicks=clicks,
        noisy=noisy.astype(np.int64),
        valid=valid.astype(np.int64),
    )


class Oracle:
    """Reveals labels from ``truth_fn(i) -> (H, W) uint8`` (classes 0..C-1, 255 = ignore).

    Args:
        truth_fn: ground truth of image ``i``.
        cache: the superpixel cache (``offsets``, ``sizes``, ``local(i)``).
        num_classes: C; truth values outside 0..C-1 and 255 are an error.
        mode: ``"dominant"`` or ``"full"``.
    """

    def __init__(self, truth_fn: Callable[[int], np.ndarray], cache: Any, num_classes: int, mode: str) -> None:
        if mode not in LABEL_MODES:
            raise FastalError(f"label mode {mode!r}: expected one of {', '.join(LABEL_MODES)}")
        if not 0 < num_classes < IGNORE:
            raise FastalError(f"number of classes {num_classes}: must lie in 1..{IGNORE - 1}")
        self._truth_fn = truth_fn
        self.cache = cache
        self.num_classes = int(num_classes)
        self.mode = mode
        self.offsets = np.asarray(cache.offsets, dtype=np.int64)
        self.sizes = np.asarray(cache.sizes, dtype=np.int64)

    def truth(self, i: int) -> np.ndarray:
        """Validated ground truth of image ``i``, (H, W) uint8 (what ``pool.label_map`` reads)."""
        y = np.asarray(self._truth_fn(i))
        if y.ndim != 2 or not np.issubdtype(y.dtype, np.integer):
            raise FastalError(f"image {i}: label map must be (H, W) integers, got {y.dtype} {y.shape}")
        bad = (y >= self.num_classes) & (y != IGNORE)
        if bad.any() or (y < 0).any():
            raise FastalError(
                f"image {i}: label {int(y[bad | (y < 0)][0])} outside 0..{self.num_classes - 1} (255 = ignore)"
            )
        return y.astype(np.uint8, copy=False)

    def query(self, gids: Any) -> OracleAnswer:
        """Reveal the labels of global superpixel ids ``gids``; reads each image once."""
        gids = check_ids(gids, self.sizes.size, "queried superpixel ids")
        image, local = global_to_local(self.offsets, gids)
        hist = np.zeros((gids.size, self.num_classes + 1), dtype=np.int64)
        by_image = np.argsort(image, kind="stable")
        images, starts = np.unique(image[by_image], return_index=True)
        for i, rows in zip(images.tolist(), np.split(by_image, starts[1:])):
            local_sp = np.asarray(self.cache.local(i))
            y = self.truth(i)
            if y.shape != local_sp.shape:
                raise FastalError(f"image {i}: label shape {y.shape} != superpixel map shape {local_sp.shape}")
            count = int(self.offsets[i + 1] - self.offsets[i])
            if local_sp.size and int(local_sp.max()) >= count:
                raise FastalError(
                    f"superpixel cache does not match image {i}: map holds id {int(local_sp.max())}, "
                    f"offsets give {count} superpixels; rebuild the cache"
                )
            hist[rows] = class_histograms(local_sp, y, count, self.num_classes)[local[rows]]
        answer = answer_from_histograms(self.mode, gids, hist)
        stale = answer.pixels != self.sizes[gids]
        if stale.any():
            raise FastalError(
                f"superpixel cache does not match image {int(image[stale][0])}: "
                f"superpixel {int(gids[stale][0])} has {int(answer.pixels[stale][0])} pixels, "
                f"cache says {int(self.sizes[gids][stale][0])}; rebuild the cache"
            )
        return answer


class SimulatedOracle(Oracle):
    """The simulation's oracle: the dataset's own ground truth (``ds[i] -> (image, label)``)."""

    def __init__(self, ds: Any, cache: Any, mode: str = "dominant") -> None:
        # SegDataset.label reads the label alone; any other ``ds[i] -> (image, label)`` works too.
        truth = ds.label if hasattr(ds, "label") else (lambda i: ds[i][1])
        super().__init__(truth, cache, ds.num_classes, mode)
        self.ds = ds


class MaskOracle(Oracle):
    """Answers from label masks people returned: ``masks[image index] -> (H, W)`` class ids.

    Querying a superpixel of an image with no returned mask is a FastalError.
    """

    def __init__(self, masks: Mapping[int, np.ndarray], cache: Any, num_classes: int, mode: str = "dominant") -> None:
        super().__init__(lambda i: masks[i], cache, num_classes, mode)
        self.masks = masks

    def query(self, gids: Any) -> OracleAnswer:
        gids = check_ids(gids, self.sizes.size, "queried superpixel ids")
        image, _ = global_to_local(self.offsets, gids)
        missing = [i for i in np.unique(image).tolist() if i not in self.masks]
        if missing:
            asked = gids[np.isin(image, missing)]
            raise FastalError(
                f"no returned mask for images {missing[:10]} (queried superpixels {asked[:10].tolist()})"
            )
        return super().query(gids)
