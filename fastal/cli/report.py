"""`fastal report`: strategies side by side over seeds, as a table, a plot and JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from fastal.cli.app import app


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (each with results.json)."),
    out: Path = typer.Option(Path("report.png"), "--out", help="Plot of mIoU vs % pixels labelled."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the numbers as JSON here."),
) -> None:
    """Group runs by strategy; mean ± std of mIoU over seeds at each cycle."""
    from fastal.progress import console
    from fastal.report import write_report

    write_report(run_dirs, out, json_path)
    console.print(f"plot: {out}" + (f", json: {json_path}" if json_path else ""))
