"""Benchmark fastal.kernels against the plain-torch reference at CamVid and Cityscapes sizes.

    python benchmarks/bench_kernels.py --device cpu --json benchmarks/results/kernels_cpu.json
    python benchmarks/bench_kernels.py --device cuda --dtypes float32 bfloat16 --json benchmarks/results/kernels_cuda.json

Superpixels are Voronoi cells of random seeds (compact, like SEEDS), numbered globally across the
batch. Each case times the kernel and the reference (warm-up, then the median of ``--repeats``
runs; wall time and, on the CPU, process CPU time, which shows how much other load took the
cores). "Bytes" is the minimum traffic of the operation (read the inputs once, write the output
once), the same for both sides, so GB/s compares against the machine's copy bandwidth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

SIZES = {  # name: (H, W, superpixels per image, classes); features D = 128 at stride 8
    "camvid": (360, 480, 700, 11),
    "cityscapes": (512, 1024, 2000, 19),
}
FEATURE_DIM = 128
STRIDE = 8
SEGMENT_DIM = 32  # channels of the [N, D] segment-op input (per-pixel rows)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def voronoi_superpixels(batch: int, height: int, width: int, count: int, seed: int = 0) -> torch.Tensor:
    """(B, H, W) int64 global ids: image b's cells are numbered b*count .. (b+1)*count - 1."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    pixels = np.stack(np.mgrid[0:height, 0:width], -1).reshape(-1, 2)
    maps = []
    for b in range(batch):
        seeds = rng.uniform((0, 0), (height, width), (count, 2))
        maps.append(cKDTree(seeds).query(pixels)[1].reshape(height, width) + b * count)
    return torch.from_numpy(np.stack(maps)).long()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # device-to-host sync: the timed work has finished


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def copy_bandwidth(device: torch.device) -> float:
    """Measured device copy bandwidth in GB/s (read + write of a 256 MiB tensor)."""
    src = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds, _ = timed(lambda: dst.copy_(src), device, 2, 9)
    return 2 * src.numel() * 4 / seconds / 1e9


def cases(
    device: torch.device, size: str, batch: int, dtype: torch.dtype
) -> Iterator[tuple[str, str, tuple[torch.Tensor, torch.Tensor, int], int]]:
    """Yield (kernel, description, args, bytes) for one size, batch and map dtype."""
    height, width, count, classes = SIZES[size]
    h, w = -(-height // STRIDE), -(-width // STRIDE)
    sp = voronoi_superpixels(batch, height, width, count).to(device)
    num = batch * count
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(batch, FEATURE_DIM, h, w, generator=gen).to(device, dtype)
    logits = (3 * torch.randn(batch, classes, h, w, generator=gen)).to(device, dtype)
    n = sp.numel()
    seg = sp.reshape(-1)
    values = torch.randn(n, SEGMENT_DIM, generator=gen).to(device, dtype)
    scores = torch.randn(n, generator=gen).to(device, dtype)
    elt = torch.finfo(dtype).bits // 8
    yield "superpixel_mean_features", f"feat {list(feat.shape)}", (feat, sp, num), 8 * n + elt * feat.numel() + 4 * num * FEATURE_DIM
    yield "superpixel_entropy_sum", f"logits {list(logits.shape)}", (logits, sp, num), 8 * n + elt * logits.numel() + 4 * num
    yield "segment_sum", f"values {list(values.shape)}", (values, seg, num), (elt * SEGMENT_DIM + 8) * n + 4 * num * SEGMENT_DIM
    yield "segment_mean", f"values {list(values.shape)}", (values, seg, num), (elt * SEGMENT_DIM + 8) * n + 4 * num * SEGMENT_DIM
    yield "segment_sum", f"values {list(scores.shape)}", (scores, seg, num), (elt + 8) * n + 4 * num
    yield "segment_argmax", f"scores {list(scores.shape)}", (scores, seg, num), (elt + 8) * n + 8 * num


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write results here (benchmarks/results/kernels_<device>.json)")
    args = parser.parse_args(argv)

    import numba
    from rich.table import Table

    import fastal.kernels as kernels
    from fastal.atomic import atomic_write_json
    from fastal.device import resolve_device
    from fastal.kernels import reference
    from fastal.machine import command_line, machine_info
    from fastal.progress import console, progress

    device = resolve_device(args.device)
    load_before = os.getloadavg()
    bandwidth = copy_bandwidth(device)
    results = []
    plan = [(s, b, d) for s in args.sizes for b in args.batch for d in args.dtypes]
    with progress() as bar:
        task = bar.add_task("kernels", total=len(plan) * 6)
        for size, batch, dtype_name in plan:
            for name, what, inputs, nbytes in cases(device, size, batch, DTYPES[dtype_name]):
                fast = getattr(kernels, name)
                slow = getattr(reference, name)
                fast_s, fast_cpu = timed(lambda: fast(*inputs), device, args.warmup, args.repeats)
                ref_s, ref_cpu = timed(lambda: slow(*inputs), device, args.warmup, args.repeats)
                results.append(
                    {
                        "kernel": name,
                        "size": size,
                        "batch": batch,
                        "dtype": dtype_name,
                        "input": what,
                        "num_segments": inputs[2],
                        "bytes": nbytes,
                        "fastal_ms": fast_s * 1e3,
                        "reference_ms": ref_s * 1e3,
                        "fastal_cpu_ms": fast_cpu * 1e3,
                        "reference_cpu_ms": ref_cpu * 1e3,
                        "fastal_GBps": nbytes / fast_s / 1e9,
                        "reference_GBps": nbytes / ref_s / 1e9,
                        "speedup": ref_s / fast_s,
                    }
                )
                bar.advance(task)

    table = Table(title=f"fastal.kernels vs torch reference on {device} (copy bandwidth {bandwidth:.1f} GB/s)")
    for column in ("kernel", "size", "B", "dtype", "input", "fastal ms", "ref ms", "GB/s", "speed-up"):
        table.add_column(column, justify="left" if column in ("kernel", "size", "input", "dtype") else "right")
    for r in results:
        table.add_row(
            r["kernel"], r["size"], str(r["batch"]), r["dtype"], r["input"], f"{r['fastal_ms']:.2f}",
            f"{r['reference_ms']:.2f}", f"{r['fastal_GBps']:.2f}", f"{r['speedup']:.1f}x",
        )
    console.print(table)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "benchmark": "kernels",
                "command": command_line([Path(sys.executable).name, *sys.argv]),
                "device": str(device),
                "machine": machine_info(),
                "numba_threads": numba.get_num_threads(),
                "numba_threading_layer": numba.threading_layer() if device.type == "cpu" else None,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "copy_bandwidth_GBps": bandwidth,
                "settings": {
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    "stride": STRIDE,
                    "feature_dim": FEATURE_DIM,
                    "segment_dim": SEGMENT_DIM,
                    "superpixels": "Voronoi cells of uniform random seeds, global ids across the batch",
                    "bytes": "minimum traffic: inputs read once, output written once",
                },
                "results": results,
            },
        )
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
