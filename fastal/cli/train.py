"""`fastal train` (fully supervised reference, or a random initial set of superpixels) and
`fastal evaluate` (mIoU and per-class IoU of a checkpoint)."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fastal.cli.app import app


def _iou_table(title: str, classes: tuple[str, ...], metrics: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in zip(classes, metrics["per_class_iou"]):
        table.add_row(name, "-" if math.isnan(iou) else f"{iou:.4f}")
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{metrics['miou']:.4f}")
    return table


def _history_table(history: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="training")
    for name in ("epoch", "loss", "CE", "InfoNCE", "steps", "images/s"):
        table.add_column(name, justify="right")
    for h in history:
        table.add_row(str(h["epoch"]), f"{h['loss']:.4f}", f"{h['ce']:.4f}", f"{h['nce']:.4f}", str(h["steps"]),
                      f"{h['images_per_s']:.1f}")  # fmt: skip
    return table


def _json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a class absent from truth and prediction gets null."""
    return {
        "miou": None if math.isnan(metrics["miou"]) else metrics["miou"],
        "per_class_iou": [None if math.isnan(x) else x for x in metrics["per_class_iou"]],
    }


@app.command()
def train(
    dataset: str = typer.Option("synthetic", help="synthetic, camvid, cityscapes or folder."),
    data_root: Optional[Path] = typer.Option(None, help="Dataset folder (not for synthetic)."),
    backbone: str = typer.Option("resnet18", help="resnet18, resnet34, resnet50, resnet101 or efficientnet_lite0."),
    epochs: int = typer.Option(10, help="Training epochs."),
    batch_size: int = typer.Option(8, help="Images per batch."),
    full: bool = typer.Option(False, "--full", help="Label every pixel: the fully supervised reference."),
    initial: float = typer.Option(5.0, help="Without --full: percent of pixels labelled, as random superpixels."),
    superpixels: int = typer.Option(1000, help="Without --full: SEEDS superpixels per image."),
    scale: Optional[float] = typer.Option(None, help="Resize factor (> 0)."),
    size: Optional[str] = typer.Option(None, help="Resize to HxW, e.g. 120x160."),
    num_images: Optional[int] = typer.Option(None, help="Images of the synthetic train split."),
    amp: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: CUDA when available)."),
    weights: Optional[str] = typer.Option(None, help="Backbone weights: local state_dict file, torchvision name (ResNets) or imagenet (efficientnet_lite0)."),
    seed: int = typer.Option(0, help="Seed of initialisation, shuffling, flips and the initial set."),
    out: Path = typer.Option(Path("runs/train"), help="Output folder: checkpoint.pt, train.json."),
) -> None:
    """Train the segmentation model on labelled pixels, then evaluate its teacher on the val split."""
    import dataclasses

    from rich.console import Console

    from fastal.atomic import atomic_write_json, check_writable
    from fastal.data import load_dataset
    from fastal.data.base import check_labels
    from fastal.device import resolve_device
    from fastal.errors import FastalError
    from fastal.progress import print_table
    from fastal.train import TrainConfig, Trainer, evaluate

    if epochs < 1:  # TrainConfig allows 0 (fit nothing); a command that trains must train
        raise FastalError(f"--epochs {epochs}: must be at least 1")
    check_writable(out, directory=True)  # before the cache and the epochs, not after them
    if seed < 0:  # numpy seeds are non-negative
        raise FastalError(f"--seed {seed}: must be >= 0")
    cfg = TrainConfig(backbone=backbone, weights=weights, epochs=epochs, batch_size=batch_size, amp=amp, seed=seed)
    dev = resolve_device(device)
    if not full and not 0 < initial <= 100:
        raise FastalError(f"--initial {initial}: must be a percentage in (0, 100]")
    train_ds = load_dataset(dataset, root=data_root, split="train", scale=scale, size=size, num_images=num_images)
    val_ds = load_dataset(dataset, root=data_root, split="val", scale=scale, size=size)
    check_labels(val_ds)  # before training: a bad val label would otherwise stop it at the end
    if full:
        samples, labelled = train_ds, 1.0
    else:
        samples, labelled = _initial_set(train_ds, superpixels, initial / 100, seed)
    # `out` is made by the atomic writes, so a run that fails before its first epoch leaves no folder.
    trainer = Trainer(cfg, train_ds.num_classes, dev)
    history = trainer.fit(samples, progress=True, checkpoint=out / "checkpoint.pt")
    teacher = evaluate(trainer.teacher, val_ds, train_ds.num_classes, dev, amp=amp, progress=True)
    student = evaluate(trainer.student, val_ds, train_ds.num_classes, dev, amp=amp, progress=True)
    console = Console()
    print_table(_history_table(history), console)
    print_table(_iou_table(f"{dataset} val, teacher, {backbone}", train_ds.classes, teacher), console)
    atomic_write_json(
        out / "train.json",
        {
            "command": shlex.join(["fastal", *sys.argv[1:]]),
            "dataset": dataset,
            "full": full,
            "labelled_pixel_fraction": labelled,
            "config": dataclasses.asdict(cfg),
            "device": str(dev),
            "history": history,
            "classes": list(train_ds.classes),
            "teacher": _json_metrics(teacher),
            "student": _json_metrics(student),
            **_json_metrics(teacher),
        },
    )
    print(f"checkpoint {out / 'checkpoint.pt'}  teacher mIoU {teacher['miou']:.4f}  student mIoU {student['miou']:.4f}")


def _initial_set(ds: Any, superpixels: int, fraction: float, seed: int) -> tuple[Any, float]:
    """Training samples labelled on random superpixels covering ``fraction`` of the pixels."""
    import numpy as np

    from fastal.data.superpixels import build_cache
    from fastal.oracle import SimulatedOracle
    from fastal.pool import LabelledSamples, RegionPool, random_initial

    cache = build_cache(ds, superpixels=superpixels)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="dominant", seed=seed)
    oracle = SimulatedOracle(ds, cache, mode="dominant")
    pool.add(oracle.query(random_initial(pool, fraction, np.random.default_rng(seed))), cycle=1)
    return LabelledSamples(ds, cache, pool, oracle.truth), pool.labelled_pixel_fraction


@app.command("evaluate")
def evaluate_command(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by fastal train or fastal run."),
    dataset: str = typer.Option("synthetic", help="synthetic, camvid, cityscapes or folder."),
    data_root: Optional[Path] = typer.Option(None, help="Dataset folder (not for synthetic)."),
    split: str = typer.Option("val", help="Split to evaluate."),
    scale: Optional[float] = typer.Option(None, help="Resize factor (> 0), as in training."),
    size: Optional[str] = typer.Option(None, help="Resize to HxW, as in training."),
    model: str = typer.Option("teacher", help="teacher (EMA) or student."),
    batch_size: int = typer.Option(4, help="Images per batch."),
    amp: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write miou and per_class_iou here."),
) -> None:
    """mIoU and per-class IoU of a checkpoint's model on a dataset split."""
    from rich.console import Console

    from fastal.atomic import atomic_write_json, check_file, check_writable
    from fastal.data import load_dataset
    from fastal.device import resolve_device
    from fastal.errors import FastalError
    from fastal.progress import print_table
    from fastal.train import Trainer, evaluate

    if model not in ("teacher", "student"):
        raise FastalError(f"--model {model!r}: use teacher or student")
    if batch_size < 1:
        raise FastalError(f"--batch-size {batch_size}: must be at least 1")
    dev = resolve_device(device)
    check_file(checkpoint, "--checkpoint")
    if json_path is not None:
        check_writable(json_path)  # before the work, not after it
    ds = load_dataset(dataset, root=data_root, split=split, scale=scale, size=size)
    trainer = Trainer.load(checkpoint, dev, num_classes=ds.num_classes)
    net = trainer.teacher if model == "teacher" else trainer.student
    metrics = evaluate(net, ds, ds.num_classes, dev, batch_size=batch_size, amp=amp, progress=True)
    print_table(_iou_table(f"{dataset} {split}, {model}, {checkpoint.name}", ds.classes, metrics), Console())
    if json_path is not None:
        atomic_write_json(
            json_path,
            {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "model": model,
             "classes": list(ds.classes), **_json_metrics(metrics)},
        )  # fmt: skip
