"""Superpixel cache: per-image load of the CSR order, cache version 1 (stored uint32 ``order``)
against version 2 (a counting sort of the stored label map), warm and cold page cache.

Version 1's ``order.npy`` is written beside the version-2 cache as version 1 wrote it (a stable
argsort of each image's labels, uint32), so both read the same images. "cold": the files' pages
are dropped (``posix_fadvise DONTNEED``) before every read, so the read goes to the disk.

    python benchmarks/bench_cache_load.py --dataset cityscapes --data-root /work/data-scale/cityscapes \
        --limit 24 --superpixels 2000 --out benchmarks/results/cache_load_cityscapes.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastal.atomic import atomic_write_json
from fastal.data import load_dataset
from fastal.data.superpixels import build_cache
from fastal.machine import command_line, machine_info


def drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def v1_csr(order: np.ndarray, cache, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Version 1's ``SuperpixelCache.csr``."""
    perm = order[int(cache.pixel_offsets[i]) : int(cache.pixel_offsets[i + 1])].astype(np.int64)
    sizes = cache.sizes[cache.offsets[i] : cache.offsets[i + 1]]
    return perm, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--size", default=None, help="HxW (synthetic: default 1024x2048)")
    p.add_argument("--superpixels", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.dataset == "synthetic":
        ds = load_dataset("synthetic", num_images=a.limit, size=a.size or "1024x2048")
    else:
        ds = load_dataset(a.dataset, root=a.data_root, limit=a.limit, size=a.size)
    cache = build_cache(ds, superpixels=a.superpixels, workers=a.workers)
    labels_path = cache.path / "labels.npy"
    order_path = a.out.with_suffix(".order.npy")  # version 1's file, outside the cache
    order = np.lib.format.open_memmap(order_path, mode="w+", dtype=np.uint32, shape=(int(cache.pixel_offsets[-1]),))
    for i in range(cache.num_images):
        order[cache.pixel_offsets[i] : cache.pixel_offsets[i + 1]] = np.argsort(cache.local(i).ravel(), kind="stable")
    order.flush()
    del order
    cache.csr(0)  # numba compiles (or loads its cache) once, not inside a timing
    times: dict[str, list[float]] = {k: [] for k in ("v1_warm", "v2_warm", "v1_cold", "v2_cold")}
    for _ in range(a.repeats):
        for cold in (False, True):
            for version in ("v1", "v2"):
                for i in range(cache.num_images):
                    path = order_path if version == "v1" else labels_path
                    if cold:
                        drop_pages(path)
                    # Opened fresh each time, as a worker would: the memory map is part of the cost.
                    t = time.perf_counter()
                    if version == "v1":
                        v1_csr(np.load(order_path, mmap_mode="r"), cache, i)
                    else:
                        type(cache)(cache.path).csr(i)
                    times[f"{version}_{'cold' if cold else 'warm'}"].append(time.perf_counter() - t)
    order_path.unlink()
    ms = {k: round(1000 * float(np.median(v)), 3) for k, v in times.items()}
    pixels = int(cache.pixel_offsets[-1])
    disk = sum(f.stat().st_size for f in cache.path.iterdir())
    result = {
        "images": cache.num_images,
        "image_shapes": sorted({f"{h}x{w}" for h, w in cache.shapes.tolist()}),
        "superpixels": cache.num_superpixels,
        "median_ms_per_image": ms,
        "v2_over_v1": {k: round(ms[f"v2_{k}"] / ms[f"v1_{k}"], 3) for k in ("warm", "cold")},
        "cache_bytes_per_pixel": {"v2": round(disk / pixels, 4), "v1": round((disk + 4 * pixels + 128) / pixels, 4)},
        "note": "v1: np.load(order.npy, mmap) slice .astype(int64) + indptr; v2: SuperpixelCache(path).csr(i) "
        "(counting sort of the uint16 labels); cold: posix_fadvise DONTNEED on the file before each read",
        "command": command_line(["python", *sys.argv]),
        "machine": machine_info(),
    }
    atomic_write_json(a.out, result)
    print(result["median_ms_per_image"], result["v2_over_v1"], result["cache_bytes_per_pixel"])


if __name__ == "__main__":
    main()
