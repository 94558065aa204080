"""`fastal sweep`: a grid of runs (strategies x seeds x any config key) as Dask tasks."""

from __future__ import annotations

from pathlib import Path

import typer

from fastal.cli.app import app


@app.command()
def sweep(
    sweep_file: Path | None = typer.Argument(
        None, help="Sweep file: a base config, the axes to cross, the keys set on every run."
    ),
    out: Path | None = typer.Option(None, "--out", help="Sweep directory (default sweeps/<sweep file name>)."),
    scheduler: str = typer.Option(
        "local", help="local: a Dask LocalCluster started here; or a running scheduler's address (tcp://HOST:PORT)."
    ),
    workers: int | None = typer.Option(
        None, help="Worker processes of the local cluster (default: one per core; with GPUs, one per GPU)."
    ),
    threads_per_worker: int | None = typer.Option(
        None, "--threads-per-worker", help="torch threads of each run (default: cores / workers locally, else 1)."
    ),
    resume: Path | None = typer.Option(None, "--resume", help="Run what is left of the sweep in this directory."),
) -> None:
    """Run every combination of a sweep file's axes, one Dask task per run (exit 1 if any failed)."""
    from fastal.cli.run import resumable
    from fastal.errors import FastalError
    from fastal.sweep import load_sweep, open_sweep_dir, run_sweep
    from fastal.sweep.driver import check_local_cluster
    from fastal.sweep.spec import SPEC

    if resume is not None:
        if sweep_file is not None or out is not None:
            raise FastalError(f"--resume continues {resume} with its own sweep.json; drop "
                              f"{'the sweep file' if sweep_file is not None else '--out'}")
        out, spec = resume, open_sweep_dir(resume, None)
    elif sweep_file is None:
        raise FastalError("give a sweep file (or --resume DIR)")
    else:
        spec = load_sweep(sweep_file)
        out = out or Path("sweeps") / sweep_file.stem
    # Everything that can be checked is, before the sweep directory is made.
    check_local_cluster(spec.runs(), scheduler, workers, threads_per_worker)
    if resume is None:
        spec = open_sweep_dir(out, spec)
    with resumable(out, "sweep", SPEC):
        outcome = run_sweep(spec, out, scheduler=scheduler, workers=workers, threads=threads_per_worker)
    if outcome.failed:
        raise typer.Exit(1)
