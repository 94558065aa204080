"""Which superpixels are labelled, what they cost, how that state is saved, and the training
view of it (:class:`LabelledSamples`); an oracle's answer (:class:`fastal.oracle.OracleAnswer`) is what grows it.

Index spaces, named once and converted with the functions below:

- *global id* (``gid``): a superpixel's index over the whole pool, ``0..num_superpixels-1``;
- *image index* (``image``): the dataset index of the image a superpixel lies in;
- *local id* (``local``): the superpixel's index inside its image, as in ``cache.local(i)``.

``global id = offsets[image] + local id``.

The labelled set is one int32 array ``state`` over global ids (0 = unlabelled, k = labelled
in cycle k, cycles count from 1); masks, counts and the current cycle are derived from it.

Example::

    pool = RegionPool(cache.offsets, cache.sizes, label_mode="dominant", seed=0)
    pool.add(oracle.query(random_initial(pool, 0.01)), cycle=1)
    y = pool.label_map(i, cache.local(i))            # (H, W) uint8, 255 where unlabelled
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from fastal.atomic import atomic_write_bytes
from fastal.data.base import IGNORE
from fastal.errors import FastalError

LABEL_MODES = ("dominant", "full")
_FORMAT_VERSION = 1
# Arrays of the saved state besides offsets/sizes: name -> dtype.
_STATE_ARRAYS = {
    "state": np.int32,
    "classes": np.int16,
    "clicks": np.int16,
    "noisy": np.int32,
    "valid": np.int32,
    "order": np.int64,
}


def _show(ids: np.ndarray, limit: int = 10) -> str:
    """Short printable list of ids for error messages."""
    items = [int(x) for x in ids[:limit]]
    more = f" ... ({len(ids)} in all)" if len(ids) > limit else ""
    return f"{items}{more}"


def check_ids(ids: Any, num_superpixels: int, what: str = "superpixel ids") -> np.ndarray:
    """``ids`` as a 1-D int64 array of distinct global ids in range, or a FastalError."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise FastalError(f"{what}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise FastalError(f"{what}: expected integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_superpixels)]
    if bad.size:
        raise FastalError(f"{what} out of range 0..{num_superpixels - 1}: {_show(bad)}")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise FastalError(f"{what}: duplicates within one call: {_show(uniq[counts > 1])}")
    return arr


def image_of(offsets: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """Image index of each global id (``offsets`` non-decreasing, empty images allowed)."""
    return np.searchsorted(offsets, gids, side="right").astype(np.int64) - 1


def global_to_local(offsets: np.ndarray, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global ids -> (image index, local id), both int64."""
    gids = np.asarray(gids, dtype=np.int64)
    image = image_of(offsets, gids)
    return image, gids - offsets[image]


def local_to_global(offsets: np.ndarray, image: Any, local: Any) -> np.ndarray:
    """(image index, local id) -> global ids, int64."""
    return np.asarray(offsets, dtype=np.int64)[np.asarray(image)] + np.asarray(local, dtype=np.int64)


def _check_layout(offsets: Any, sizes: Any) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.asarray(offsets)
    sizes = np.asarray(sizes)
    if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise FastalError(f"pool offsets: expected a 1-D integer array, got {offsets.dtype} {offsets.shape}")
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer):
        raise FastalError(f"pool sizes: expected a 1-D integer array, got {sizes.dtype} {sizes.shape}")
    if offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != sizes.size:
        raise FastalError(
            f"pool offsets must rise from 0 to len(sizes)={sizes.size}; "
            f"got {offsets[0]}..{offsets[-1]} over {offsets.size - 1} images"
        )
    if (sizes < 0).any():
        raise FastalError("pool sizes: negative superpixel size")
    return offsets.astype(np.int64), sizes.astype(np.int64)


class RegionPool:
    """The labelled set of superpixels, its cost, and its query log.

    Args:
        offsets: int [num_images + 1], global id of each image's first superpixel (``cache.offsets``).
        sizes: int [num_superpixels], pixels per superpixel (``cache.sizes``).
        label_mode: ``"dominant"`` (a superpixel's pixels all get its majority class; one
            click each) or ``"full"`` (every pixel its ground truth; one click per class present).
        seed: seeds ``self.rng`` (numpy Generator), the pool's own random stream, saved with
            the state so that a reloaded pool draws the same next random selection.
    """

    def __init__(
        self, offsets: Any, sizes: Any, label_mode: str = "dominant", seed: int | None = None
    ) -> None:
        if label_mode not in LABEL_MODES:
            raise FastalError(f"label mode {label_mode!r}: expected one of {', '.join(LABEL_MODES)}")
        self.offsets, self.sizes = _check_layout(offsets, sizes)
        self.label_mode = label_mode
        n = self.sizes.size
        self.state = np.zeros(n, dtype=np.int32)
        self.classes = np.full(n, -1, dtype=np.int16)  # revealed majority class, -1 unknown/void
        self.clicks = np.zeros(n, dtype=np.int16)
        self.noisy = np.zeros(n, dtype=np.int32)  # labelled non-ignore pixels whose gt != label
        self.valid = np.zeros(n, dtype=np.int32)  # non-ignore pixels of labelled superpixels
        self.order = np.zeros(0, dtype=np.int64)  # global ids in the order they were labelled
        self.rng = np.random.default_rng(seed)

    # ---- layout ---------------------------------------------------------------------------
    @property
    def num_superpixels(self) -> int:
        return int(self.sizes.size)

    @property
    def num_images(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def counts(self) -> np.ndarray:
        """Superpixels per image, int64 [num_images]."""
        return np.diff(self.offsets)

    @property
    def total_pixels(self) -> int:
        return int(self.sizes.sum())

    def image_ids(self, i: int) -> np.ndarray:
        """Global ids of image ``i``'s superpixels."""
        self._check_image(i)
        return np.arange(self.offsets[i], self.offsets[i + 1], dtype=np.int64)

    def to_local(self, gids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Global ids -> (image index, local id)."""
        return global_to_local(self.offsets, check_ids(gids, self.num_superpixels))

    def to_global(self, image: Any, local: Any) -> np.ndarray:
        """(image index, local id) -> global ids; both must be in range."""
        image, local = np.broadcast_arrays(np.asarray(image, dtype=np.int64), np.asarray(local, dtype=np.int64))
        bad_image = (image < 0) | (image >= self.num_images)
        if bad_image.any():
            raise FastalError(f"image indices outside 0..{self.num_images - 1}: {_show(image[bad_image])}")
        bad = (local < 0) | (local >= self.counts[image])
        if bad.any():
            raise FastalError(
                f"local superpixel ids out of range: {_show(local[bad])} in images {_show(image[bad])}"
            )
        return local_to_global(self.offsets, image, local)

    def _check_image(self, i: int) -> None:
        if not 0 <= i < self.num_images:
            raise FastalError(f"image index {i} outside 0..{self.num_images - 1}")

    # ---- derived state --------------------------------------------------------------------
    @property
    def labelled_mask(self) -> np.ndarray:
        return self.state > 0

    def labelled_through(self, cycle: int) -> np.ndarray:
        """Bool mask of the superpixels labelled in cycles 1..``cycle`` (a later cycle's are not)."""
        return (self.state > 0) & (self.state <= cycle)

    def labelled_ids(self) -> np.ndarray:
        return np.flatnonzero(self.state).astype(np.int64)

    def unlabelled_ids(self) -> np.ndarray:
        return np.flatnonzero(self.state == 0).astype(np.int64)

    def labelled_images(self) -> np.ndarray:
        """Image indices with at least one labelled superpixel, ascending."""
        return np.unique(image_of(self.offsets, self.labelled_ids()))

    @property
    def current_cycle(self) -> int:
        """The latest cycle anything was labelled in; 0 for an empty labelled set."""
        return int(self.state.max(initial=0))

    @property
    def num_labelled(self) -> int:
        return int(np.count_nonzero(self.state))

    @property
    def labelled_pixels(self) -> int:
        return int(self.sizes[self.labelled_mask].sum())

    @property
    def labelled_pixel_fraction(self) -> float:
        total = self.total_pixels
        return self.labelled_pixels / total if total else 0.0

    @property
    def cost_clicks(self) -> int:
        return int(self.clicks.sum(dtype=np.int64))

    @property
    def noisy_pixels(self) -> int:
        return int(self.noisy.sum(dtype=np.int64))

    def summary(self, cycle: int | None = None) -> dict[str, Any]:
        """Budget and cost spent up to and including ``cycle`` (default: all), JSON-ready."""
        upto = self.current_cycle if cycle is None else int(cycle)
        sel = self.labelled_through(upto)
        valid = int(self.valid[sel].sum(dtype=np.int64))
        noisy = int(self.noisy[sel].sum(dtype=np.int64))
        pixels = int(self.sizes[sel].sum())
        total = self.total_pixels
        return {
            "cycle": upto,
            "labelled_superpixels": int(np.count_nonzero(sel)),
            "labelled_pixels": pixels,
            "labelled_pixel_fraction": pixels / total if total else 0.0,
            "cost_clicks": int(self.clicks[sel].sum(dtype=np.int64)),
            "noisy_pixels": noisy,
            "label_noise": noisy / valid if valid else 0.0,
        }

    def records(self, gids: Any) -> list[dict[str, Any]]:
        """Query-log records of labelled superpixels ``gids`` (in that order)."""
        gids = check_ids(gids, self.num_superpixels)
        if (self.state[gids] == 0).any():
            raise FastalError(f"no log record for unlabelled superpixels {_show(gids[self.state[gids] == 0])}")
        image, local = global_to_local(self.offsets, gids)
        cols = zip(
            self.state[gids].tolist(), gids.tolist(), image.tolist(), local.tolist(),
            self.sizes[gids].tolist(), self.clicks[gids].tolist(), self.classes[gids].tolist(),
            self.noisy[gids].tolist(),
        )  # fmt: skip
        keys = ("cycle", "superpixel", "image", "local", "pixels", "clicks", "class", "noisy")
        return [dict(zip(keys, row)) for row in cols]

    @property
    def log(self) -> list[dict[str, Any]]:
        """One record per labelled superpixel, in query order."""
        return self.records(self.order)

    # ---- growing the labelled set ---------------------------------------------------------
    def add(self, answer: Any, cycle: int) -> None:
        """Label the superpixels of an oracle answer in ``cycle`` (>= 1 and >= current cycle).

        All checks (:meth:`check_answer`) run before anything changes: a rejected answer leaves
        the pool as it was.
        """
        ids = self.check_answer(answer, cycle)
        self.state[ids] = cycle
        self.classes[ids] = answer.classes
        self.clicks[ids] = answer.clicks
        self.noisy[ids] = answer.noisy
        self.valid[ids] = answer.valid
        self.order = np.concatenate([self.order, ids])

    def check_answer(self, answer: Any, cycle: int) -> np.ndarray:
        """FastalError unless :meth:`add` would take ``answer`` in ``cycle``; returns its ids."""
        if answer.mode != self.label_mode:
            raise FastalError(f"oracle answered in {answer.mode!r} mode; this pool is {self.label_mode!r}")
        if int(cycle) < 1 or int(cycle) < self.current_cycle:
            raise FastalError(f"cycle {cycle}: must be >= 1 and >= the current cycle {self.current_cycle}")
        if cycle > np.iinfo(np.int32).max:
            raise FastalError(f"cycle {cycle}: too large")
        ids = check_ids(answer.ids, self.num_superpixels)
        for name in ("classes", "pixels", "clicks", "noisy", "valid"):
            if np.shape(getattr(answer, name)) != ids.shape:
                raise FastalError(f"oracle answer: {name} has shape {np.shape(getattr(answer, name))}, ids {ids.shape}")
        again = ids[self.state[ids] > 0]
        if again.size:
            raise FastalError(
                f"superpixels already labelled (in cycles {_show(self.state[again])}): {_show(again)}"
            )
        if not np.array_equal(answer.pixels, self.sizes[ids]):
            wrong = ids[np.asarray(answer.pixels) != self.sizes[ids]]
            raise FastalError(f"oracle answer: pixel counts differ from the pool's sizes for {_show(wrong)}")
        return ids

    # ---- training labels ------------------------------------------------------------------
    def label_map(self, i: int, local_sp: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
        """Sparse training labels of image ``i``: (H, W) uint8, 255 outside labelled superpixels.

        ``local_sp`` is ``cache.local(i)``. Full mode copies ``truth`` (the gt, (H, W) uint8)
        inside labelled superpixels; dominant mode paints each labelled superpixel with its
        revealed class and needs no ``truth``.
        """
        self._check_image(i)
        local_sp = np.asarray(local_sp)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        if local_sp.ndim != 2:
            raise FastalError(f"image {i}: superpixel map must be (H, W), got shape {local_sp.shape}")
        if local_sp.size and (local_sp.min() < 0 or local_sp.max() >= hi - lo):
            raise FastalError(
                f"image {i}: superpixel map holds ids {local_sp.min()}..{local_sp.max()}, pool has {hi - lo}"
            )
        labelled = self.state[lo:hi] > 0  # (S_i,)
        if self.label_mode == "dominant":
            lut = np.full(hi - lo, IGNORE, dtype=np.uint8)
            cls = self.classes[lo:hi]
            paint = labelled & (cls >= 0)
            lut[paint] = cls[paint]
            return lut[local_sp]
        if truth is None:
            raise FastalError(f"image {i}: full label mode needs the ground truth to build labels")
        truth = np.asarray(truth)
        if truth.shape != local_sp.shape:
            raise FastalError(f"image {i}: label shape {truth.shape} != superpixel map shape {local_sp.shape}")
        return np.where(labelled[local_sp], truth, IGNORE).astype(np.uint8)

    # ---- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this pool (arrays are copies)."""
        d: dict[str, Any] = {name: getattr(self, name).copy() for name in _STATE_ARRAYS}
        d.update(
            version=_FORMAT_VERSION,
            label_mode=self.label_mode,
            offsets=self.offsets.copy(),
            sizes=self.sizes.copy(),
            rng=self.rng.bit_generator.state,
        )
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; it must describe the same superpixels."""
        try:
            if d["version"] != _FORMAT_VERSION:
                raise FastalError(f"pool state version {d['version']}, expected {_FORMAT_VERSION}")
            if d["label_mode"] != self.label_mode:
                raise FastalError(f"pool state is in {d['label_mode']!r} mode; this pool is {self.label_mode!r}")
            if not (np.array_equal(d["offsets"], self.offsets) and np.array_equal(d["sizes"], self.sizes)):
                raise FastalError("pool state describes different superpixels (offsets/sizes differ)")
            arrays = {name: np.asarray(d[name]) for name in _STATE_ARRAYS}
            rng = np.random.default_rng()
            rng.bit_generator.state = d["rng"]
        except KeyError as e:
            raise FastalError(f"pool state lacks {e}") from None
        except (TypeError, ValueError) as e:
            raise FastalError(f"pool state: bad RNG state ({e})") from None
        n = self.num_superpixels
        for name, dtype in _STATE_ARRAYS.items():
            a = arrays[name]
            if a.ndim != 1 or (name != "order" and a.size != n) or not np.can_cast(a.dtype, dtype, "same_kind"):
                raise FastalError(f"pool state: {name} has {a.dtype} {a.shape}, expected {np.dtype(dtype)} ({n},)")
        state, order = arrays["state"], arrays["order"]
        if (state < 0).any() or not np.array_equal(np.sort(order), np.flatnonzero(state)):
            raise FastalError("pool state: query order does not match the labelled set")
        if (np.diff(state[order]) < 0).any():
            raise FastalError("pool state: query order goes back in cycles")
        for name, dtype in _STATE_ARRAYS.items():
            setattr(self, name, arrays[name].astype(dtype, copy=True))
        self.rng = rng

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> RegionPool:
        try:
            pool = cls(d["offsets"], d["sizes"], label_mode=d["label_mode"])
        except KeyError as e:
            raise FastalError(f"pool state lacks {e}") from None
        pool.load_state_dict(d)
        return pool

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to one compressed ``.npz``, atomically (old or new file, never half)."""
        d = self.state_dict()
        meta = {k: d.pop(k) for k in ("version", "label_mode", "rng")}
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **d)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, offsets: Any = None, sizes: Any = None) -> RegionPool:
        """Read a pool written by :meth:`save`; a missing or damaged file is a FastalError.

        With ``offsets``/``sizes`` (the cache's), also check the file describes those superpixels.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                d: dict[str, Any] = {k: z[k] for k in z.files if k != "meta"}
                meta = json.loads(str(z["meta"]))
        except FileNotFoundError:
            raise FastalError(f"{path}: pool state file not found") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise FastalError(f"{path}: not a readable pool state ({e})") from None
        d.update(meta)
        try:
            pool = cls.from_state_dict(d)
        except FastalError as e:
            raise FastalError(f"{path}: {e}") from None
        for name, want in (("offsets", offsets), ("sizes", sizes)):
            if want is not None and not np.array_equal(getattr(pool, name), want):
                raise FastalError(
                    f"{path}: pool state describes other superpixels than the cache "
                    f"({pool.num_images} images / {pool.num_superpixels} superpixels; {name} differ)"
                )
        return pool


def random_initial(pool: RegionPool, fraction: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Random unlabelled superpixels that bring the labelled pixel fraction up to ``fraction``.

    Superpixels are drawn in a random order (``rng``, default ``pool.rng``) and taken as
    :func:`take_until` does. Returns int64 global ids (empty when the fraction is already reached).
    """
    if not 0.0 <= fraction <= 1.0:
        raise FastalError(f"initial labelled fraction {fraction}: must lie in [0, 1]")
    rng = pool.rng if rng is None else rng
    need = fraction * pool.total_pixels - pool.labelled_pixels
    return take_until(pool.sizes, rng.permutation(pool.unlabelled_ids()), need)


def take_until(sizes: np.ndarray, ordered_ids: np.ndarray, pixels: float) -> np.ndarray:
    """The shortest prefix of ``ordered_ids`` (most wanted first) whose ``sizes`` add up to
    ``pixels``; the last one may overshoot. All of them when they fall short; none when
    ``pixels <= 0``. This is how a budget in pixels is spent: a strategy that prefers large
    regions gets fewer of them."""
    ordered_ids = np.asarray(ordered_ids, dtype=np.int64)
    if pixels <= 0:
        return np.zeros(0, dtype=np.int64)
    reach = np.cumsum(np.asarray(sizes)[ordered_ids])
    k = int(np.searchsorted(reach, pixels, side="left")) + 1
    return ordered_ids[: min(k, ordered_ids.size)]


class LabelledSamples:
    """The training view of a pool: (image, sparse label map) of each image with labelled superpixels.

    ``truth(i)`` gives image ``i``'s full labels; only full label mode reads it.
    """

    def __init__(self, ds: Any, cache: Any, pool: RegionPool, truth: Callable[[int], np.ndarray]) -> None:
        self.ds, self.cache, self.pool, self.truth = ds, cache, pool, truth
        self.images = pool.labelled_images()  # (n,) image indices

    def __len__(self) -> int:
        return int(self.images.size)

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        i = int(self.images[j])
        image, _ = self.ds[i]
        truth = self.truth(i) if self.pool.label_mode == "full" else None
        return image, self.pool.label_map(i, self.cache.local(i), truth)
