"""The typer applications the command modules register on (apart from ``fastal.cli`` itself,
which imports every command module: a command module importing it would close a circle)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fastal",
    help="Fast superpixel active learning for semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks: kernels, selection throughput.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# The arguments of this invocation (set by fastal.cli.main): `fastal run --nproc N` starts the same
# command in N processes.
invocation: list[str] = []
