"""The `fastal` command line: one module per command, assembled here.

Every command raises :class:`fastal.errors.FastalError` for bad input; :func:`main` turns
it into one line on stderr and exit code 2 (click does the same for unknown options).
"""

from __future__ import annotations

import sys

from rich.markup import escape

from fastal.cli import bench, generate, prepare, query, report, run, sweep, train  # noqa: F401 - each registers its commands
from fastal.cli.app import app, bench_app
from fastal.errors import FastalError
from fastal.progress import console

__all__ = ["app", "bench_app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m fastal``."""
    try:
        app(args=argv, prog_name="fastal")
    except FastalError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
