"""`fastal report`: strategies side by side over seeds, as a table, a plot and JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from fastal.cli.app import app, command_of


@app.command()
def report(
    ctx: typer.Context,
    run_dirs: list[Path] = typer.Argument(
        ..., help="Run directories (each with results.json), or sweep directories (several: paired side by side)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Plot of mIoU vs % pixels labelled (default: DIR/report.png for one sweep, else ./report.png)."
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Also write the numbers as JSON here, with the command and the machine."
    ),
    baseline: str | None = typer.Option(
        None, help="Sweep directories: the strategy the others are paired with (default random, else the first)."
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Sweep directories: print the tables as markdown."),
) -> None:
    """Group runs by strategy; mean ± std of mIoU over seeds at each cycle. Given sweep directories
    (`fastal sweep`), per strategy and budget, with paired differences to a baseline, the selection
    seconds per cycle and the share of the picks per class (bars beside the plot: report-classes.png);
    a strategy a later sweep shares with an earlier one is named "<strategy> @ <sweep name>"."""
    from fastal.errors import FastalError, check_path_names
    from fastal.sweep.report import is_sweep_dir, sweep_report
    from fastal.progress import console
    from fastal.run_report import write_report

    for d in run_dirs:
        check_path_names(d)
    sweeps = [is_sweep_dir(d) for d in run_dirs]
    if all(sweeps):
        out = out or (run_dirs[0] / "report.png" if len(run_dirs) == 1 else Path("report.png"))
        sweep_report(run_dirs, out, json_path, baseline, markdown, command_of(ctx))
    elif any(sweeps):
        other, sweep = run_dirs[sweeps.index(False)], run_dirs[sweeps.index(True)]
        raise FastalError(f"{other}: not a sweep directory (no sweep.json), unlike {sweep}; report sweeps and runs apart")
    elif baseline is not None or markdown:
        raise FastalError(f"--{'baseline' if baseline else 'markdown'}: only for sweep directories (fastal sweep)")
    else:
        out = out or Path("report.png")
        write_report(run_dirs, out, json_path, command_of(ctx))
    console.print(f"plot: {out}" + (f", json: {json_path}" if json_path else ""))
