"""One look for every progress bar fastal shows."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def print_table(table: Any, to: Console | None = None) -> None:
    """Print a rich table whole. On a terminal it fits the window, as rich does; elsewhere (a pipe,
    a file, a sweep run's log) rich would cut it to 80 columns ("regio…"): it gets the width it needs."""
    to = to or console
    if to.is_terminal:
        to.print(table)
        return
    need = Measurement.get(to, to.options.update(width=10_000), table).maximum
    Console(file=to.file, width=max(to.width, need), color_system=None, highlight=False).print(table)


def progress(transient: bool = False) -> Progress:
    """A rich progress bar on stderr: description, bar, n/total, elapsed, remaining.

    Off when stderr is not a terminal: in logs a bar is noise, and rich would leave a blank
    line in front of an error message.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    )
