"""The `fastal` command line: one module per command, assembled here.

Every command raises :class:`fastal.errors.FastalError` for bad input; :func:`main` turns
it into one line on stderr and exit code 2 (click does the same for unknown options). An
OSError about a path that no check caught first takes the same way (:func:`fastal.errors.path_error`).
"""

from __future__ import annotations

import sys

from rich.markup import escape

from fastal.cli import bench, generate, prepare, query, report, run, sweep, train  # noqa: F401 - each registers its commands
from fastal.cli.app import app, bench_app, invocation
from fastal.errors import FastalError, path_error
from fastal.progress import console

__all__ = ["app", "bench_app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m fastal``."""
    invocation[:] = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        try:
            app(args=argv, prog_name="fastal")
        except OSError as e:
            if e.filename is None:  # not about a path: a bug, shown with its traceback
                raise
            raise path_error(e, "cannot use ") from None
    except FastalError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
