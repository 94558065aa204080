"""The typer applications the command modules register on (apart from ``fastal.cli`` itself,
which imports every command module: a command module importing it would close a circle)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from fastal.machine import portable_path

app = typer.Typer(
    name="fastal",
    help="Fast superpixel active learning for semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks: kernels, selection throughput.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def command_of(ctx: typer.Context) -> str:
    """The command behind a result file, every option that was set spelled out (right also when
    the command runs in-process, e.g. under tests), paths as :func:`fastal.machine.portable_path`
    records them."""
    parts = ["fastal", *ctx.command_path.split()[1:]]
    for name, value in ctx.params.items():
        if value is None:
            continue
        flag = "--json" if name == "json_path" else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, portable_path(value) if isinstance(value, Path) else str(value)]
    return shlex.join(parts)


# The arguments of this invocation (set by fastal.cli.main): `fastal run --nproc N` starts the same
# command in N processes.
invocation: list[str] = []
