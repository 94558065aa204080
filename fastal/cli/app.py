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
    the command runs in-process, e.g. under tests), arguments in their place, paths as
    :func:`fastal.machine.portable_path` records them."""
    parts = ["fastal", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]  # a list: an argument or option given several times
        words = [portable_path(v) if isinstance(v, Path) else str(v) for v in values]
        if param.param_type_name == "argument":  # typer carries its own click: no isinstance
            parts += words
        elif isinstance(value, bool):  # a flag; one without a "--no-" spelling left out when off (its default)
            parts += (param.opts if value else param.secondary_opts)[:1]
        else:
            flag = max(param.opts, key=len)  # the long spelling
            parts += [w for word in words for w in (flag, word)]
    return shlex.join(parts)


# The arguments of this invocation (set by fastal.cli.main): `fastal run --nproc N` starts the same
# command in N processes.
invocation: list[str] = []
