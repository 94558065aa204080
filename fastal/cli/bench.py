"""`fastal bench selection`: selection stages on a synthetic clustered pool, timed per stage."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from fastal.cli.app import bench_app
from fastal.errors import FastalError


def _command_line(ctx: typer.Context) -> str:
    """The command with every option spelled out (also right when called in-process, e.g. by tests)."""
    parts = [ctx.command_path]
    for name, value in ctx.params.items():
        if value is None:
            continue
        flag = "--json" if name == "json_path" else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def synthetic_selection_inputs(
    superpixels: int, dim: int, bank: int, classes: int, seed: int, device: Any
) -> tuple[Any, Any, Any]:
    """(PoolScores, bank features (classes*bank, dim), bank labels) drawn from one class mixture.

    Class means are random unit vectors; bank entries are L2-normalised noisy copies (like the
    model's projection features); pool rows are noisy means (superpixel means are not unit length).
    Entropy and margin are random; every superpixel is unlabelled.
    """
    import numpy as np
    import torch

    from fastal.select import PoolScores

    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1)
    bank_labels = torch.arange(classes).repeat_interleave(bank)
    noise = 0.5 / dim**0.5  # per-coordinate noise: a noise vector of norm ~0.5 around unit means
    bank_feat = torch.nn.functional.normalize(means[bank_labels] + noise * torch.randn(len(bank_labels), dim, generator=g), dim=1)
    pool_labels = torch.randint(classes, (superpixels,), generator=g)
    feats = 0.8 * torch.nn.functional.normalize(means[pool_labels] + noise * torch.randn(superpixels, dim, generator=g), dim=1)
    entropy = torch.rand(superpixels, generator=g) * 100
    margin = torch.rand(superpixels, generator=g)
    scores = PoolScores(
        features=feats.to(device), entropy=entropy.to(device), margin=margin.to(device),
        gids=np.arange(superpixels, dtype=np.int64),
    )  # fmt: skip
    return scores, bank_feat.to(device), bank_labels.to(device)


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
) -> None:
    """Time the selection stages on a synthetic clustered pool (no training)."""
    import time

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from fastal.atomic import atomic_write_json, check_writable
    from fastal.device import resolve_device
    from fastal.machine import machine_info
    from fastal.select import STRATEGIES, resolve_engine, select

    if superpixels < 1 or dim < 1 or bank < 1 or classes < 1:
        raise FastalError("--superpixels, --dim, --bank and --classes must be positive")
    if not 0 < budget_fraction <= 1:
        raise FastalError(f"--budget-fraction {budget_fraction}: must be in (0, 1]")
    if strategy not in STRATEGIES:
        raise FastalError(f"--strategy {strategy!r}: unknown; choose one of {', '.join(STRATEGIES)}")
    if json_path is not None:
        check_writable(json_path)  # before the work, not after it
    dev = resolve_device(device)
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
    sel = run(superpixels, budget)
    stages = {k: v for k, v in sel.timings.items() if k != "total"}
    seconds = sel.timings["total"]

    table = Table(title=f"selection: {strategy}, {superpixels:,} superpixels, budget {budget:,}, {engine_name} on {dev}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("superpixels/s", justify="right")
    for name, s in [*stages.items(), ("total", seconds)]:
        table.add_row(name, f"{s:.3f}", f"{superpixels / s:,.0f}" if s > 0 else "-")
    Console().print(table)

    if json_path is not None:
        atomic_write_json(json_path, {
            "command": _command_line(ctx),
            "strategy": strategy, "engine": engine_name, "device": str(dev),
            "superpixels": superpixels, "dim": dim, "bank": bank, "classes": classes,
            "budget": budget, "seed": seed,
            "seconds": seconds, "superpixels_per_second": superpixels / seconds if seconds > 0 else None,
            "stages": stages,
            "warm": warm, "warmup_seconds": warmup_seconds,
            "machine": machine_info(),
        })  # fmt: skip
