"""`fastal prepare`: compute or reuse the superpixel cache of a dataset split."""

from __future__ import annotations

from fastal.cli import app


@app.command()
def prepare() -> None:
    """Compute (or reuse) the SEEDS superpixel cache of a dataset split."""
    from fastal.errors import FastalError

    raise FastalError("prepare: not built yet")
