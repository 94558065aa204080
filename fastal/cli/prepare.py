"""`fastal prepare`: compute or reuse the superpixel cache of a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fastal.cli.app import app, command_of
from fastal.machine import portable_path


@app.command()
def prepare(
    ctx: typer.Context,
    dataset: str = typer.Option("synthetic", help="synthetic, camvid, cityscapes or folder."),
    data_root: Optional[Path] = typer.Option(None, help="Dataset folder (not for synthetic)."),
    split: str = typer.Option("train", help="Split to prepare."),
    scale: Optional[float] = typer.Option(None, help="Resize factor (> 0)."),
    size: Optional[str] = typer.Option(None, help="Resize to HxW, e.g. 180x240."),
    superpixels: int = typer.Option(1000, help="Requested superpixels per image."),
    space: str = typer.Option("lab", help="Colour space SEEDS works in: lab or hsv."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images."),
    seed: int = typer.Option(0, help="Seed of the synthetic dataset."),
    num_images: Optional[int] = typer.Option(None, help="Images of the synthetic split."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names (folder)."),
    cache: Optional[Path] = typer.Option(None, help="Cache root (default: $FASTAL_CACHE/superpixels, else ~/.cache/fastal/superpixels)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: all cores)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the summary here as JSON."),
) -> None:
    """Compute (or reuse) the SEEDS superpixel cache of a dataset split and summarise it."""
    import resource
    import time

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from fastal.atomic import atomic_write_json, check_writable
    from fastal.progress import print_table
    from fastal.data import load_dataset
    from fastal.data.superpixels import build_cache

    from fastal.errors import FastalError

    if seed < 0:  # numpy seeds are non-negative
        raise FastalError(f"--seed {seed}: must be >= 0")
    if json_path is not None:
        check_writable(json_path)  # before the work, not after it
    start = time.perf_counter()
    ds = load_dataset(
        dataset,
        root=data_root,
        split=split,
        scale=scale,
        size=size,
        limit=limit,
        seed=seed,
        num_images=num_images,
        classes=[c.strip() for c in classes.split(",")] if classes else None,
    )
    sp = build_cache(ds, superpixels=superpixels, space=space, cache_dir=cache, workers=workers)
    seconds = time.perf_counter() - start

    pixels = int(sp.sizes.sum())
    cache_bytes = sum(f.stat().st_size for f in sp.path.iterdir())
    summary = {
        "dataset": ds.name,
        "split": ds.split,
        "images": sp.num_images,
        "superpixels": sp.num_superpixels,
        "superpixels_per_image": sp.num_superpixels / sp.num_images,
        "superpixels_requested": superpixels,
        "grids": sp.manifest["grids"],
        "mean_size": pixels / sp.num_superpixels,
        "seconds": round(seconds, 3),
        "build_seconds": sp.manifest["build_seconds"],
        "purity": sp.purity,
        "reused": sp.reused,
        "workers": sp.manifest["workers"],
        "params": sp.manifest["params"],
        "scale": ds.scale,
        "size": list(ds.size) if ds.size else None,
        "image_shapes": sorted({f"{h}x{w}" for h, w in sp.shapes.tolist()}),
        "cache": portable_path(sp.path),
        "cache_bytes_per_pixel": round(cache_bytes / pixels, 4),
        # This process's and its workers' (the SEEDS processes') highest resident memory.
        "peak_rss_gb": {who: round(resource.getrusage(w).ru_maxrss / 2**20, 3)
                        for who, w in (("main", resource.RUSAGE_SELF), ("worker", resource.RUSAGE_CHILDREN))},
    }

    table = Table(title=f"superpixels of {ds.name}/{ds.split}", show_header=False)
    grids = ", ".join(f"{hw}: {g['realised']}" for hw, g in sp.manifest["grids"].items())
    rows = [
        ("images", f"{sp.num_images} ({', '.join(summary['image_shapes'])})"),
        ("superpixels", f"{sp.num_superpixels} (requested {superpixels}/image, SEEDS grid {grids})"),
        ("per image", f"{summary['superpixels_per_image']:.1f} mean, {int(np.min(sp.counts))}..{int(np.max(sp.counts))}"),
        ("mean size", f"{summary['mean_size']:.1f} px"),
        ("purity", f"{sp.purity:.4f}"),
        ("seconds", f"{seconds:.2f}" + (" (reused)" if sp.reused else f" (built with {sp.manifest['workers']} workers)")),
        ("reused", "yes" if sp.reused else "no"),
        ("cache", f"{sp.path} ({summary['cache_bytes_per_pixel']:.2f} bytes a pixel)"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    print_table(table, Console())

    if json_path is not None:
        from fastal.machine import machine_info

        summary["command"] = command_of(ctx)
        summary["machine"] = machine_info()
        atomic_write_json(json_path, summary)
