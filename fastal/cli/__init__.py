"""The `fastal` command line: one module per command, assembled here.

Every command raises :class:`fastal.errors.FastalError` for bad input; :func:`main` turns
it into one line on stderr and exit code 2 (click does the same for unknown options).
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from fastal.errors import FastalError
from fastal.progress import console

app = typer.Typer(
    name="fastal",
    help="Fast superpixel active learning for semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks: kernels, selection throughput.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Each module registers its commands on `app` / `bench_app` when imported.
from fastal.cli import bench  # noqa: E402,F401
from fastal.cli import prepare  # noqa: E402,F401
from fastal.cli import query  # noqa: E402,F401
from fastal.cli import report  # noqa: E402,F401
from fastal.cli import run  # noqa: E402,F401
from fastal.cli import sweep  # noqa: E402,F401
from fastal.cli import train  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m fastal``."""
    try:
        app(args=argv, prog_name="fastal")
    except FastalError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
