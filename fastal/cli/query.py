"""People as the oracle: `fastal select` writes one round of queries, `fastal label import` reads
the masks back (the round directory's layout: :mod:`fastal.labelling.query_round`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import typer

from fastal.cli.app import app

label_app = typer.Typer(help="Labels from people: import returned masks into a run.", no_args_is_help=True)
app.add_typer(label_app, name="label")


@app.command("select")
def select_cmd(
    out: Path = typer.Option(..., "--out", help="Round directory to create (queries, overlays, masks/)."),
    budget: int = typer.Option(..., "--budget", help="Superpixels to query."),
    run: Path | None = typer.Option(None, "--run", help="Run directory: its config, pool and latest checkpoint."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Trainer checkpoint (without --run)."),
    dataset: str | None = typer.Option(None, help="Dataset (without --run)."),
    data_root: str | None = typer.Option(None, "--data-root"),
    scale: float | None = typer.Option(None),
    superpixels: int | None = typer.Option(None),
    strategy: str | None = typer.Option(None),
    engine: str | None = typer.Option(None),
    device: str | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    fmt: str = typer.Option("masks", "--format", help="masks | cvat | label-studio: also a task for that tool."),
    prefill: bool = typer.Option(False, "--prefill", help="Label the tool's regions with the model's classes."),
) -> None:
    """One round for people: which superpixels to label next, as JSON/CSV and outlined PNGs (and a
    CVAT or Label Studio task)."""
    from fastal.atomic import check_file
    from fastal.config import load_config
    from fastal.errors import FastalError
    from fastal.labelling.exports import check_classes, check_format, predicted_classes
    from fastal.loop import rank_unlabelled
    from fastal.progress import console
    from fastal.labelling.query_round import query_rows, write_round
    from fastal.run_setup import prepare
    from fastal.rundir import RunDir, open_run, run_record
    from fastal.runlock import run_lock

    overrides = {"dataset": dataset, "data_root": data_root, "scale": scale, "superpixels": superpixels,
                 "strategy": strategy, "engine": engine, "device": device, "seed": seed}  # fmt: skip
    # Checked before the superpixel cache is built: that can take minutes.
    check_format(fmt, prefill)
    if checkpoint is not None:
        check_file(checkpoint, "--checkpoint")
    if out.exists():
        raise FastalError(f"--out {out}: already exists")
    if run is None and checkpoint is None:
        raise FastalError("select: give --run RUN_DIR, or --checkpoint PATH with --dataset")
    if run is not None:
        open_run(run)  # checks it is a run directory, before its lock file is made in it
        # The run's pool is over its own data and superpixels, and its round is stamped with its id:
        # neither other data nor another run's model can select it.
        fixed = next((k for k in ("dataset", "data_root", "scale", "superpixels") if overrides[k] is not None), None)
        if fixed is not None:
            raise FastalError(f"--{fixed.replace('_', '-')}: the run {run} fixes it (its config.toml); drop it, "
                              f"or select from a checkpoint without --run")  # fmt: skip
        if checkpoint is not None and checkpoint.resolve().parent != (run / "checkpoints").resolve():
            raise FastalError(f"--checkpoint {checkpoint}: not a model of the run {run} (its own are in "
                              f"{run / 'checkpoints'}); the round would carry the run's id. Drop --run to select "
                              f"with another model")  # fmt: skip
    # The run's writer lock: its pool and checkpoints must not change while they are read.
    with run_lock(run) if run is not None else contextlib.nullcontext():
        if run is not None:
            cfg = load_config(run / "config.toml", overrides)
            setup = prepare(cfg)
            r = RunDir(setup, run)
            latest = r.trained_checkpoint()  # also refuses a run whose latest cycle is not trained yet
            if checkpoint is None and not latest.is_file():
                raise FastalError(f"{latest}: missing; it is the run's latest model, which `fastal select --run` "
                                  f"selects with (or give --checkpoint, another model of the run)")  # fmt: skip
            checkpoint = checkpoint or latest
            labelled = r.pool.labelled_mask
            run_id = run_record(run)["run_id"]
        else:
            cfg = load_config(None, overrides)
            setup = prepare(cfg)
            labelled = np.zeros(setup.cache.num_superpixels, dtype=bool)
            run_id = None
        check_file(checkpoint, "--checkpoint")
        free = int((~labelled).sum())
        if free == 0:
            raise FastalError(f"{run}: every superpixel of the pool is labelled; there is nothing left to select")
        if not 1 <= budget <= free:
            raise FastalError(f"--budget {budget}: must lie in 1..{free} (unlabelled superpixels in the pool)")
        check_classes(fmt, setup.train.classes)
        ranking = rank_unlabelled(setup, checkpoint, labelled, cfg.seed, budget=budget)
        rows = query_rows(setup.cache, setup.train, ranking.ids)
        predicted = predicted_classes(checkpoint, setup.train, setup.cache, rows, setup.device) if prefill else None
    table = ranking.table(setup.cache, keep=cfg.selection_table)  # None for "none"
    meta = {"dataset": cfg.dataset, "fingerprint": setup.train.fingerprint(), "classes": list(setup.train.classes),
            "superpixels": cfg.superpixels, "num_superpixels": setup.cache.num_superpixels,
            "strategy": cfg.strategy, "checkpoint": str(checkpoint), "run": None if run is None else str(run),
            "run_id": run_id, "budget": budget}  # fmt: skip
    write_round(out, meta, rows, setup.train, setup.cache, table, fmt, predicted)
    where = {"masks": f"put label PNGs in {out}/masks/", "cvat": f"label {out}/cvat/task.zip in CVAT",
             "label-studio": f"label {out}/label-studio/tasks.json in Label Studio"}[fmt]  # fmt: skip
    then = f"`fastal label import {out} --run RUN_DIR{'' if fmt == 'masks' else ' --from EXPORT'}`"
    console.print(f"{len(rows)} superpixels in {len({r['image'] for r in rows})} images -> {out}/queries.csv, "
                  f"{out}/overlays/; {where} and run {then}")


@label_app.command("import")
def import_cmd(
    round_dir: Path = typer.Argument(..., help="Round directory written by `fastal select`, with masks/ filled."),
    run: Path = typer.Option(..., "--run", help="Run directory whose pool receives the labels."),
    export: Path | None = typer.Option(None, "--from", help="A CVAT or Label Studio export of the round "
                                       "(zip, folder, annotations.xml or JSON) instead of masks/."),
) -> None:
    """Feed returned masks into a run's pool as its next cycle; `fastal run --resume RUN` then trains on them."""
    from fastal.progress import console
    from fastal.labelling.query_round import import_masks

    cycle, n = import_masks(round_dir, run, export)
    console.print(f"cycle {cycle}: {n} superpixels labelled; continue with `fastal run --resume {run}`")
