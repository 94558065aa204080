"""`fastal bench selection` and `fastal bench scoring`: selection stages on a synthetic clustered
pool, and the teacher's pass plus pooling over a pool of images, timed per stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from fastal.cli.app import bench_app, command_of
from fastal.errors import FastalError


def print_stages(title: str, stages: dict[str, float], total: float, count: int, rate: str, digits: int) -> None:
    """A table of seconds per stage and the total, with ``count`` items per second (``rate``)."""
    from rich.console import Console
    from rich.table import Table

    from fastal.progress import print_table

    table = Table(title=title)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column(rate, justify="right")
    for name, sec in [*stages.items(), ("total", total)]:
        table.add_row(name, f"{sec:.3f}", f"{count / sec:,.{digits}f}" if sec > 0 else "-")
    print_table(table, Console())


def check_fits(superpixels: int, dim: int, device: Any) -> None:
    """FastalError, before anything is allocated, when the synthetic pool's features alone
    (float32, ``dim`` + 2 scores each) exceed the device's memory."""
    import torch

    need = superpixels * (dim + 2) * 4
    if device.type == "cuda":
        have, where = torch.cuda.mem_get_info(device)[1], f"{device}'s memory"
    else:
        have, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's memory"
    if need > have:
        raise FastalError(f"--superpixels {superpixels}: the pool's features alone take {need / 2**30:,.0f} GiB, "
                          f"more than {where} ({have / 2**30:,.0f} GiB)")


@bench_app.command("selection")
def selection(
    ctx: typer.Context,
    superpixels: int = typer.Option(..., help="Pool size (superpixels)."),
    dim: int = typer.Option(128, help="Feature dimension."),
    bank: int = typer.Option(1000, help="Memory-bank entries per class."),
    classes: int = typer.Option(11, help="Number of classes."),
    budget_fraction: float = typer.Option(0.01, help="Budget as a fraction of the pool."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    engine: str = typer.Option("auto", help="auto, torch or cuml."),
    strategy: str = typer.Option("contrastive", help="Selection strategy."),
    seed: int = typer.Option(0, help="Seed of the data and the selection."),
    warm: bool = typer.Option(True, help="Run a small selection first so compilation is not timed."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
    profile: Optional[Path] = typer.Option(
        None, help="Write a torch.profiler Chrome trace (trace.json, opens in Perfetto) with one range per stage here."
    ),
) -> None:
    """Time the selection stages on a synthetic clustered pool (no training)."""
    import time

    import numpy as np

    from fastal.atomic import atomic_write_json, check_writable
    from fastal.device import resolve_device
    from fastal.machine import machine_info
    from fastal.select import STRATEGIES, resolve_engine, select
    from fastal.testing import synthetic_selection_inputs

    if superpixels < 1 or dim < 1 or bank < 1 or classes < 1:
        raise FastalError("--superpixels, --dim, --bank and --classes must be positive")
    if not 0 < budget_fraction <= 1:
        raise FastalError(f"--budget-fraction {budget_fraction}: must be in (0, 1]")
    if strategy not in STRATEGIES:
        raise FastalError(f"--strategy {strategy!r}: unknown; choose one of {', '.join(STRATEGIES)}")
    if json_path is not None:
        check_writable(json_path)  # before the work, not after it
    if profile is not None:
        check_writable(profile, directory=True)  # a folder: trace.json goes in it
    dev = resolve_device(device)
    check_fits(superpixels, dim, dev)
    engine_name = resolve_engine(engine, dev)
    budget = max(1, round(budget_fraction * superpixels))

    def run(n: int, k: int) -> Any:
        scores, bank_f, _ = synthetic_selection_inputs(n, dim, bank, classes, seed, dev)
        return select(strategy, scores, bank_f, budget=k, labelled_mask=np.zeros(n, bool),
                      seed=seed, engine=engine_name)

    warmup_seconds = None
    if warm:
        t0 = time.perf_counter()
        n_warm = min(superpixels, 5000)
        run(n_warm, max(1, round(budget_fraction * n_warm)))
        warmup_seconds = time.perf_counter() - t0
    if profile is None:
        sel = run(superpixels, budget)
    else:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:  # each stage is a named range (Candidates.stage)
            sel = run(superpixels, budget)
        profile.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(profile / "trace.json"))
    peaks = sel.peak_memory_mib if profile is not None else None
    stages = {k: v for k, v in sel.timings.items() if k != "total"}
    seconds = sel.timings["total"]

    print_stages(f"selection: {strategy}, {superpixels:,} superpixels, budget {budget:,}, {engine_name} on {dev}",
                 stages, seconds, superpixels, "superpixels/s", digits=0)

    if json_path is not None:
        atomic_write_json(json_path, {
            "command": command_of(ctx),
            "strategy": strategy, "engine": engine_name, "device": str(dev),
            "superpixels": superpixels, "dim": dim, "bank": bank, "classes": classes,
            "budget": budget, "seed": seed,
            "seconds": seconds, "superpixels_per_second": superpixels / seconds if seconds > 0 else None,
            "stages": stages,
            "warm": warm, "warmup_seconds": warmup_seconds,
            "profiled": profile is not None, "peak_memory_mib": peaks,
            "machine": machine_info(),
        })  # fmt: skip


def _seeds_available() -> bool:
    try:
        import cv2

        return hasattr(cv2, "ximgproc")
    except ImportError:
        return False


@bench_app.command("scoring")
def scoring(
    ctx: typer.Context,
    dataset: str = typer.Option("synthetic", help="synthetic, camvid, cityscapes or folder."),
    data_root: Optional[Path] = typer.Option(None, help="Dataset folder (not for synthetic)."),
    images: int = typer.Option(64, help="Images to score (synthetic: a few distinct ones, repeated)."),
    size: str = typer.Option("1024x2048", help="Image size HxW (images are resized to it)."),
    backbone: str = typer.Option("resnet50", help="Backbone of the segmentation network."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    amp: str = typer.Option("auto", help="auto (bf16 on CUDA, off on CPU), bf16, fp16 or fp32."),
    batch_size: int = typer.Option(4, help="Images per forward pass."),
    regions: int = typer.Option(2000, help="Regions per image (about; Cityscapes' SEEDS gives ~2,000)."),
    superpixels: str = typer.Option("auto", help="seeds, grid (a regular grid), or auto: SEEDS where OpenCV contrib is installed."),
    distinct: int = typer.Option(8, help="Synthetic only: distinct images generated once and repeated."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
) -> None:
    """Time the teacher's pass plus pooling over a pool of images: load / forward / pool."""
    import time

    import numpy as np
    import torch

    from fastal.atomic import atomic_write_json
    from fastal.data import load_dataset
    from fastal.data.base import parse_size
    from fastal.data.superpixels import seeds_grid, seeds_superpixels
    from fastal.device import resolve_device
    from fastal.kernels import superpixel_mean_features, superpixel_prediction_stats
    from fastal.machine import machine_info
    from fastal.model.network import build_model
    from fastal.model.precision import autocast, resolve_amp, to_tensor_batch
    from fastal.testing import grid_regions

    if images < 1 or batch_size < 1 or regions < 1 or distinct < 1:
        raise FastalError("--images, --batch-size, --regions and --distinct must be positive")
    if superpixels not in ("auto", "seeds", "grid"):
        raise FastalError(f"--superpixels {superpixels!r}: choose auto, seeds or grid")
    if superpixels == "seeds" and not _seeds_available():
        raise FastalError("--superpixels seeds needs OpenCV contrib (cv2.ximgproc); use grid")
    kind = ("seeds" if _seeds_available() else "grid") if superpixels == "auto" else superpixels
    hw = parse_size(size)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    amp_dtype = resolve_amp(amp, dev)
    if dataset == "synthetic":
        ds = load_dataset("synthetic", size=hw, num_images=min(distinct, images))
    else:
        ds = load_dataset(dataset, root=data_root, size=hw)
    grid = grid_regions(*hw, regions).to(dev)
    model = build_model(backbone, ds.num_classes).to(dev).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    drawn: dict[int, tuple[Any, Any]] = {}

    def image_and_regions(i: int) -> tuple[Any, Any]:
        """uint8 (H, W, 3) host image and (H, W) int64 region ids on the device; synthetic ones drawn once."""
        if i in drawn:
            return drawn[i]
        image = np.ascontiguousarray(ds[i][0])
        sp = grid if kind == "grid" else torch.from_numpy(seeds_superpixels(image, seeds_grid(*hw, regions))[0]).to(dev).long()
        image_t = torch.from_numpy(image).pin_memory() if cuda else torch.from_numpy(image)
        if dataset == "synthetic":
            drawn[i] = (image_t, sp)
        return image_t, sp

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    stages = {"load": 0.0, "forward": 0.0, "pool": 0.0}
    counted = [0]

    def one_batch(start: int, b: int, timed: bool) -> None:
        t0 = time.perf_counter()
        pairs = [image_and_regions((start + j) % len(ds)) for j in range(b)]
        x = to_tensor_batch(torch.stack([p[0] for p in pairs]), dev, channels_last=cuda)
        counts = [int(p[1].max()) + 1 for p in pairs] if kind == "seeds" else [int(grid.max()) + 1] * b
        shift = np.concatenate([[0], np.cumsum(counts)])
        sp = torch.stack([p[1] + int(shift[j]) for j, p in enumerate(pairs)])  # (B, H, W) batch-local ids
        n_sp = int(shift[-1])
        sync()
        t1 = time.perf_counter()
        with torch.inference_mode(), autocast(dev, amp_dtype):
            logits, emb = model(x)
        sync()
        t2 = time.perf_counter()
        with torch.inference_mode():  # what score_pool does per batch
            superpixel_mean_features(emb.float(), sp, n_sp)
            superpixel_prediction_stats(logits.float(), sp, n_sp)
            probs = superpixel_mean_features(torch.softmax(logits.float(), 1), sp, n_sp)
            torch.topk(probs, 2, dim=1)  # the margin
        sync()
        t3 = time.perf_counter()
        if timed:
            stages["load"] += t1 - t0
            stages["forward"] += t2 - t1
            stages["pool"] += t3 - t2
            counted[0] += n_sp

    one_batch(0, min(batch_size, images), timed=False)  # warm-up: kernels compile, cuDNN picks algorithms
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for start in range(0, images, batch_size):
        one_batch(start, min(batch_size, images - start), timed=True)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None

    print_stages(f"scoring: {images:,} images {hw[0]}x{hw[1]}, {backbone}, amp {amp}, {kind} regions, {dev}",
                 stages, seconds, images, "images/s", digits=2)
    if json_path is not None:
        atomic_write_json(json_path, {
            "command": command_of(ctx),
            "dataset": dataset, "images": images, "size": list(hw), "backbone": backbone, "device": str(dev),
            "amp": amp, "batch_size": batch_size, "superpixels": kind, "superpixels_scored": counted[0],
            "distinct_images": len(ds) if dataset == "synthetic" else None,
            "seconds": seconds, "images_per_second": images / seconds,
            "superpixels_per_second": counted[0] / seconds,
            "stages": stages, "peak_memory_mib": peak,
            "note": "stages are separated by device synchronisations (they do not overlap); the network's "
                    "weights are random (throughput only)",
            "machine": machine_info(),
        })  # fmt: skip
