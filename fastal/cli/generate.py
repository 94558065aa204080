"""`fastal generate cityscapes`: a synthetic tree in Cityscapes' layout (runs at its size)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fastal.cli.app import app

generate_app = typer.Typer(help="Write synthetic datasets in a real dataset's layout.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")


@generate_app.command()
def cityscapes(
    out: Path = typer.Option(..., help="Folder to write (new, empty, or an interrupted generation to finish)."),
    train: int = typer.Option(2975, help="Training images."),
    val: int = typer.Option(500, help="Validation images."),
    size: str = typer.Option("1024x2048", help="Image size HxW."),
    seed: int = typer.Option(0, help="Seed: the tree is a pure function of seed, counts and size."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: all cores)."),
) -> None:
    """Synthetic street scenes as leftImg8bit/ + gtFine/ labelIds: `--dataset cityscapes --data-root OUT` reads them."""
    from fastal.data.base import parse_size
    from fastal.data.generate_cityscapes import generate_cityscapes
    from fastal.progress import console

    hw = parse_size(size)
    generate_cityscapes(out, train=train, val=val, size=hw, seed=seed, workers=workers)
    console.print(f"cityscapes tree: {out} ({train} train, {val} val, {hw[0]}x{hw[1]})")
