"""SEEDS superpixels of a dataset split, computed once in parallel and cached on disk.

Index spaces: *local* ids ``0..counts[i]-1`` within image ``i``; *global* ids
``offsets[i] + local`` across the pool. Per image the cache holds the local label map; its CSR
form (the flat pixel indices sorted by superpixel, with ``indptr`` from the superpixel sizes, so
that reductions over superpixels need no atomics) is rebuilt from it on demand by a counting sort.

On disk (one directory per dataset identity and parameters, written atomically), 2 bytes a pixel
while an image has at most 65,536 superpixels (version 1 also stored the CSR order, 6 bytes)::

    manifest.json      parameters, image ids, shapes, counts, content hash, code version
    labels.npy         all local label maps, flattened and concatenated (uint16 when it fits)
    pixel_offsets.npy  int64 [N+1]: image i's pixels are [pixel_offsets[i], pixel_offsets[i+1])
    shapes.npy         int64 [N, 2]
    counts.npy         int64 [N]
    sizes.npy          int64 [S]: pixels per superpixel, global id order

>>> cache = build_cache(load_dataset("synthetic"), superpixels=300)
>>> sp = cache.local(0)              # (H, W) local ids
>>> perm, indptr = cache.csr(0)      # pixels of superpixel k: perm[indptr[k]:indptr[k+1]]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastal import __version__
from fastal.atomic import atomic_dir, atomic_write_json, fsync_path
from fastal.data.base import IGNORE, SegDataset, stable_hash
from fastal.errors import FastalError

# Bump when the on-disk format or the computation changes: old caches are then rebuilt.
# 2: no order.npy (the CSR order is a counting sort of the label map away).
CACHE_VERSION = 2
SPACES = ("lab", "hsv")
MAX_LEVELS = 5  # SEEDS block levels tried; more levels = finer block moves, coarser count steps


@dataclass(frozen=True)
class SeedsGrid:
    """What to pass SEEDS for an image size, and the superpixel count its grid realises."""

    num_superpixels: int
    num_levels: int
    realised: int


def seeds_grid_count(height: int, width: int, num_superpixels: int, num_levels: int) -> int:
    """The number of superpixels ``createSuperpixelSEEDS`` creates for these arguments.

    Mirrors OpenCV's ``SuperpixelSEEDSImpl::initialize`` (float32 arithmetic included): the
    request becomes a grid of blocks, halved once per level, and the top level's block
    count is what is realised. Tests compare it with ``getNumberOfSuperpixels``.
    """
    return _seeds_layout(height, width, num_superpixels, num_levels)[1]


def _seeds_layout(height: int, width: int, num_superpixels: int, num_levels: int) -> tuple[int, int]:
    """(block levels OpenCV keeps, superpixels it realises); (0, 0) where it has no grid."""
    num_superpixels, num_levels = max(num_superpixels, 10), max(num_levels, 2)
    f32 = np.float32
    n_h = int(np.sqrt(f32(num_superpixels) * f32(height) / f32(width)))
    n_w = n_h * width // height
    if n_h < 1 or n_w < 1:
        return 0, 0
    levels = num_levels + 1
    while True:
        levels -= 1
        if levels < 1:
            return 0, 0
        w_f = f32(width) / f32(n_w) / f32(1 << (levels - 1))
        h_f = f32(height) / f32(n_h) / f32(1 << (levels - 1))
        if w_f >= 1 and h_f >= 1:
            break
    block_w, block_h = int(np.ceil(w_f)), int(np.ceil(h_f))
    top_w, top_h = width // block_w, height // block_h
    for _ in range(1, levels):
        top_w, top_h = top_w // 2, top_h // 2
    return levels, top_w * top_h


def seeds_grid(height: int, width: int, requested: int, max_levels: int = MAX_LEVELS) -> SeedsGrid:
    """The SEEDS arguments whose realised count is closest to ``requested`` (ties: more levels).

    SEEDS only realises the block counts of its grid, so asking for 1000 may give 660; this
    searches the grid rows (the only free variable) for each level count instead.
    """
    if requested < 1:
        raise FastalError(f"superpixels {requested}: must be >= 1")
    best: tuple[tuple[int, int], SeedsGrid] | None = None
    for levels in range(max_levels, 1, -1):
        for rows in range(1, height + 1):
            # Smallest request that SEEDS turns into `rows` grid rows.
            n = max(10, int(np.ceil(rows * rows * width / height)))
            while int(np.sqrt(np.float32(n) * np.float32(height) / np.float32(width))) < rows:
                n += 1
            kept, realised = _seeds_layout(height, width, n, levels)
            # SEEDS's iterate() often segfaults when it keeps a single block level (small
            # images, dense requests): a worker would die without a message, so never pick one.
            if realised == 0 or kept < 2:
                continue
            rank = (abs(realised - requested), -levels)
            if best is None or rank < best[0]:
                best = (rank, SeedsGrid(n, levels, realised))
            if realised > 2 * requested:
                break
    if best is None:
        raise FastalError(f"image {height}x{width} is too small for SEEDS superpixels")
    return best[1]


def seeds_superpixels(
    image: np.ndarray,
    grid: SeedsGrid,
    space: str = "lab",
    iterations: int = 4,
    prior: int = 2,
    histogram_bins: int = 5,
) -> tuple[np.ndarray, int]:
    """SEEDS on one RGB uint8 image: (local ids (H, W) int32 in 0..count-1, count).

    Ids are made contiguous: a superpixel SEEDS emptied during its updates leaves no gap.
    """
    import cv2

    code = {"lab": cv2.COLOR_RGB2Lab, "hsv": cv2.COLOR_RGB2HSV_FULL}[space]  # FULL: hue uses 0..255
    converted = cv2.cvtColor(image, code)
    h, w = image.shape[:2]
    seeds = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, grid.num_superpixels, grid.num_levels, prior, histogram_bins)
    seeds.iterate(converted, iterations)
    raw = seeds.getLabels()
    present = np.bincount(raw.ravel(), minlength=grid.realised) > 0
    remap = (np.cumsum(present) - 1).astype(np.int32)
    return remap[raw], int(present.sum())


def class_histograms(
    local: np.ndarray, label: np.ndarray, count: int, num_classes: int, ignore_index: int = IGNORE
) -> np.ndarray:
    """Per superpixel, its pixels of each class: int64 [count, num_classes + 1].

    The last column counts ignore pixels. One bincount over ``local id * (C + 1) + class``.
    """
    label = label.ravel()
    cls = np.where(label == ignore_index, num_classes, label).astype(np.int64)
    if (cls > num_classes).any():
        raise FastalError(f"label values {np.unique(cls[cls > num_classes])} >= {num_classes} classes")
    width = num_classes + 1
    key = local.ravel().astype(np.int64) * width + cls
    return np.bincount(key, minlength=count * width).reshape(count, width)


def dominant(
    local: np.ndarray, label: np.ndarray, count: int, num_classes: int, ignore_index: int = IGNORE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per superpixel: dominant class (-1 when all its pixels are ignore; ties -> lowest class),
    pixels of that class, and non-ignore pixels. All int64 [count]."""
    hist = class_histograms(local, label, count, num_classes, ignore_index)[:, :-1]
    labelled = hist.sum(1)
    cls = np.where(labelled > 0, hist.argmax(1), -1)
    return cls, hist.max(1), labelled


def purity(
    local: np.ndarray, label: np.ndarray, count: int, num_classes: int, ignore_index: int = IGNORE
) -> np.ndarray:
    """Per superpixel, the fraction of its non-ignore pixels in its dominant class (NaN when none).

    ``np.nanmean`` of it is the purity ``fastal prepare`` reports.
    """
    _, top, labelled = dominant(local, label, count, num_classes, ignore_index)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(labelled > 0, top / labelled, np.nan)


def default_cache_root() -> Path:
    """``$FASTAL_CACHE/superpixels`` or ``~/.cache/fastal/superpixels``."""
    base = os.environ.get("FASTAL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "fastal") / "superpixels"


class SuperpixelCache:
    """A built cache, opened read-only with memory maps; see the module docstring."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = json.loads((self.path / "manifest.json").read_text())
        self.reused = False  # set by build_cache
        self._labels = np.load(self.path / "labels.npy", mmap_mode="r")
        self.pixel_offsets = np.load(self.path / "pixel_offsets.npy")
        self.shapes = np.load(self.path / "shapes.npy")
        self.counts = np.load(self.path / "counts.npy")
        self.sizes = np.load(self.path / "sizes.npy")
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    # Memory maps do not pickle as views: workers (e.g. a DataLoader's) reopen the files.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "reused": self.reused}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])
        self.reused = state["reused"]

    @property
    def num_images(self) -> int:
        return len(self.counts)

    @property
    def num_superpixels(self) -> int:
        return int(self.offsets[-1])

    @property
    def image_ids(self) -> list[str]:
        return self.manifest["image_ids"]

    @property
    def purity(self) -> float:
        """Mean over superpixels of the fraction of their labelled pixels in the dominant class."""
        return self.manifest["purity"]

    def _pixels(self, i: int) -> slice:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        return slice(int(self.pixel_offsets[i]), int(self.pixel_offsets[i + 1]))

    def local(self, i: int) -> np.ndarray:
        """(H, W) local superpixel ids of image ``i`` (a read-only memory-mapped view)."""
        return self._labels[self._pixels(i)].reshape(tuple(self.shapes[i]))

    def global_ids(self, i: int) -> np.ndarray:
        """(H, W) int64 global superpixel ids of image ``i``."""
        return self.local(i).astype(np.int64) + self.offsets[i]

    def csr(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(perm int64 [H*W], indptr int64 [counts[i]+1]): flat pixel indices grouped by superpixel,
        in raster order within each (``np.argsort(local(i).ravel(), kind="stable")``).

        A counting sort of the label map, O(pixels): the stored order of cache version 1 took 4 more
        bytes a pixel on disk and loaded no faster (docs/cityscapes-scale.md).
        """
        from fastal.kernels.cpu import csr_order

        return csr_order(np.asarray(self._labels[self._pixels(i)]), int(self.counts[i]))

    def image_of(self, gids: np.ndarray | int) -> np.ndarray:
        """Image index of each global id; FastalError for ids outside 0..num_superpixels-1."""
        gids = np.asarray(gids, dtype=np.int64)
        if gids.size and (gids.min() < 0 or gids.max() >= self.num_superpixels):
            raise FastalError(f"superpixel ids outside 0..{self.num_superpixels - 1}")
        return np.searchsorted(self.offsets, gids, side="right").astype(np.int64) - 1

    def __repr__(self) -> str:
        return f"<SuperpixelCache {self.path.name}: {self.num_images} images, {self.num_superpixels} superpixels>"


# ---------------------------------------------------------------------------- building

_worker: dict[str, Any] = {}


def _init_worker(ds: SegDataset, out_dir: Path, params: dict[str, Any], single_thread: bool) -> None:
    if single_thread:  # one image per process already fills the cores
        import cv2

        cv2.setNumThreads(1)
    _worker.update(ds=ds, params=params, labels=np.load(out_dir / "labels.npy", mmap_mode="r+"))


def _process(i: int, grid: SeedsGrid, start: int) -> tuple[int, np.ndarray, float, int]:
    """Superpixels of image ``i`` written into the shared arrays at ``start``.

    Returns (i, sizes per local id, sum of purities, superpixels with labelled pixels).
    """
    ds, p = _worker["ds"], _worker["params"]
    image, label = ds[i]
    local, count = seeds_superpixels(image, grid, p["space"], p["iterations"], p["prior"], p["histogram_bins"])
    flat = local.ravel()
    stop = start + flat.size
    _worker["labels"][start:stop] = flat
    pure = purity(local, label, count, ds.num_classes, ds.ignore_index)
    return i, np.bincount(flat, minlength=count), float(np.nansum(pure)), int(np.isfinite(pure).sum())


def _build(ds: SegDataset, params: dict[str, Any], out: Path, workers: int, show_progress: bool) -> dict[str, Any]:
    from numpy.lib.format import open_memmap

    from fastal.progress import progress

    n = len(ds)
    shapes = np.array([ds.image_shape(i) for i in range(n)], dtype=np.int64).reshape(n, 2)
    pixel_offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)
    grids = {(h, w): seeds_grid(h, w, params["superpixels"], params["max_levels"]) for h, w in {tuple(s) for s in shapes.tolist()}}
    max_count = max(g.realised for g in grids.values())
    label_dtype = np.uint16 if max_count <= np.iinfo(np.uint16).max + 1 else np.int32
    total = int(pixel_offsets[-1])
    # Only the header and the file size here: workers fill it through their own memory maps.
    empty = open_memmap(out / "labels.npy", mode="w+", dtype=label_dtype, shape=(total,))
    del empty

    sizes: list[np.ndarray] = [np.empty(0, np.int64)] * n
    pure_sum, pure_n = 0.0, 0
    tasks = [(i, grids[tuple(shapes[i])], int(pixel_offsets[i])) for i in range(n)]
    # Transient: the bar goes when done, so a failure leaves just its one error line.
    bar = progress(transient=True) if show_progress else contextlib.nullcontext()
    with bar:
        task = bar.add_task(f"superpixels {ds.name}/{ds.split}", total=n) if show_progress else None

        def done(result: tuple[int, np.ndarray, float, int]) -> None:
            nonlocal pure_sum, pure_n
            i, sizes[i], s, k = result
            pure_sum, pure_n = pure_sum + s, pure_n + k
            if show_progress:
                bar.advance(task)

        if workers == 1:
            _init_worker(ds, out, params, single_thread=False)
            try:
                for t in tasks:
                    done(_process(*t))
            finally:
                _worker.clear()
        else:
            import multiprocessing

            # forkserver: clean workers, unaffected by threads (torch, OpenMP) in this process.
            ctx = multiprocessing.get_context("forkserver")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(ds, out, params, True)) as pool:
                futures = [pool.submit(_process, *t) for t in tasks]
                try:
                    for f in as_completed(futures):
                        done(f.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise

    counts = np.array([len(s) for s in sizes], dtype=np.int64)
    np.save(out / "pixel_offsets.npy", pixel_offsets)
    np.save(out / "shapes.npy", shapes)
    np.save(out / "counts.npy", counts)
    np.save(out / "sizes.npy", np.concatenate(sizes).astype(np.int64))
    for f in out.iterdir():
        fsync_path(f)
    return {
        "grids": {f"{h}x{w}": asdict(g) for (h, w), g in sorted(grids.items())},
        "image_ids": [ds.image_id(i) for i in range(n)],
        "shapes": shapes.tolist(),
        "counts": counts.tolist(),
        "num_images": n,
        "num_superpixels": int(counts.sum()),
        "purity": pure_sum / pure_n if pure_n else float("nan"),
    }


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (two processes never build in it at once)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_valid(path: Path, content_hash: str) -> SuperpixelCache | None:
    """The cache at ``path`` if complete and built from the same content and parameters."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("hash") != content_hash:
            return None
        return SuperpixelCache(path)
    except (OSError, ValueError, KeyError):
        return None


def _remove_superseded(root: Path, keep: Path, identity: dict[str, Any], params: dict[str, Any]) -> None:
    """Delete the caches of this dataset and parameters that an older CACHE_VERSION built: never
    read again (their key holds the version), they would only hold the disk (37 GB at version 1
    for Cityscapes' training split)."""
    import shutil

    identity = json.loads(json.dumps(identity))  # as a manifest holds it (tuples -> lists)
    for other in root.glob(f"{keep.name.rsplit('-', 1)[0]}-*"):
        try:
            manifest = json.loads((other / "manifest.json").read_text())
        except (OSError, ValueError):
            continue  # not a cache, or another process's: not ours to judge
        old = isinstance(manifest, dict) and manifest.get("version", CACHE_VERSION) < CACHE_VERSION
        if other != keep and old and manifest.get("dataset") == identity and manifest.get("params") == params:
            shutil.rmtree(other, ignore_errors=True)


def cache_params(superpixels: int, space: str, iterations: int, prior: int, histogram_bins: int) -> dict[str, Any]:
    """Validated SEEDS parameters, as recorded in the manifest."""
    if isinstance(superpixels, bool) or not isinstance(superpixels, (int, np.integer)) or superpixels < 1:
        raise FastalError(f"superpixels {superpixels!r}: must be an integer >= 1")
    if space not in SPACES:
        raise FastalError(f"colour space {space!r}: expected one of {', '.join(SPACES)}")
    if iterations < 1 or not 0 <= prior <= 5 or histogram_bins < 1:
        raise FastalError(f"SEEDS: iterations {iterations} (>= 1), prior {prior} (0..5), bins {histogram_bins} (>= 1)")
    return {
        "superpixels": int(superpixels),
        "space": space,
        "iterations": int(iterations),
        "prior": int(prior),
        "histogram_bins": int(histogram_bins),
        "max_levels": MAX_LEVELS,
    }


def build_cache(
    ds: SegDataset,
    superpixels: int = 1000,
    space: str = "lab",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    iterations: int = 4,
    prior: int = 2,
    histogram_bins: int = 5,
) -> SuperpixelCache:
    """Compute the SEEDS superpixels of every image of ``ds``, or reuse a matching cache.

    ``superpixels`` is the requested count per image; the realised count (closest the SEEDS
    grid allows) is in ``cache.manifest["grids"]`` and ``cache.counts``. The cache lives in
    ``cache_dir`` (default :func:`default_cache_root`) under a name from the dataset identity
    (dataset, split, resize, image ids) and the parameters; a cache there whose content
    hash (file contents, parameters, code version) differs is rebuilt. The build runs
    in ``workers`` processes (default: all cores) and is atomic: it appears whole or not at all.
    Workers start with ``forkserver``: a script calling this with ``workers > 1`` needs the
    usual ``if __name__ == "__main__":`` guard.
    """
    params = cache_params(superpixels, space, iterations, prior, histogram_bins)
    if workers is not None and workers < 1:
        raise FastalError(f"workers {workers}: must be >= 1")
    workers = min(workers or len(os.sched_getaffinity(0)), len(ds))
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    key = f"{ds.name}-{ds.split}-{stable_hash({'identity': ds.identity(), 'params': params, 'version': CACHE_VERSION}, 12)}"
    path = root / key
    content_hash = stable_hash({"fingerprint": ds.fingerprint(), "params": params, "version": CACHE_VERSION}, 32)

    cache = _open_valid(path, content_hash)
    if cache is not None:
        cache.reused = True
        return cache
    created = [d for d in (root, *root.parents) if not d.exists()]  # innermost first
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            cache = _open_valid(path, content_hash)  # another process may have built it meanwhile
            if cache is not None:
                cache.reused = True
                return cache
            start = time.perf_counter()
            with atomic_dir(path) as tmp:
                tmp.chmod(0o755)  # mkdtemp makes it private; a cache is shareable like any file
                summary = _build(ds, params, tmp, workers, show_progress)
                manifest = {
                    "hash": content_hash,
                    "version": CACHE_VERSION,
                    "fastal": __version__,
                    "fingerprint": ds.fingerprint(),
                    "dataset": ds.identity(),
                    "params": params,
                    "requested": params["superpixels"],
                    "label_dtype": str(np.load(tmp / "labels.npy", mmap_mode="r").dtype),
                    "build_seconds": round(time.perf_counter() - start, 3),
                    "workers": workers,
                    **summary,
                }
                atomic_write_json(tmp / "manifest.json", manifest)
            _remove_superseded(root, path, ds.identity(), params)
    except BaseException as e:
        # Only empty folders go: leave nothing behind when the first build fails.
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(e, OSError):
            raise FastalError(f"{path}: cannot write the superpixel cache ({e.strerror or e})") from None
        raise
    return SuperpixelCache(path)
