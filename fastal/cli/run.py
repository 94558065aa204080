"""`fastal run`: the active-learning experiment, new or resumed."""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import typer

from fastal.cli.app import app, invocation


@app.command()
def run(
    config: Path | None = typer.Argument(None, help="TOML run configuration (see configs/); options override it."),
    dataset: str | None = typer.Option(None, help="synthetic | camvid | cityscapes | folder"),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder."),
    strategy: str | None = typer.Option(None, help="Selection strategy (contrastive, random, entropy, ...)."),
    initial: float | None = typer.Option(None, "--initial", help="% of pixels labelled at random first."),
    budget_per_cycle: float | None = typer.Option(None, "--budget-per-cycle", help="% of pixels per cycle."),
    cycles: int | None = typer.Option(None, help="Selection cycles after the initial set."),
    budgets: str | None = typer.Option(
        None, help="Cumulative % of pixels at each evaluated cycle, e.g. 1,2,4,8 "
        "(instead of --initial, --budget-per-cycle, --cycles)."
    ),
    epochs: int | None = typer.Option(None, help="Training epochs per cycle."),
    backbone: str | None = typer.Option(None, help="resnet18 | resnet34 | resnet50 | resnet101 | efficientnet_lite0"),
    labels: str | None = typer.Option(None, help="full | dominant: what the oracle reveals."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    seed: int | None = typer.Option(None, help="Seed of every random choice."),
    superpixels: int | None = typer.Option(None, help="SEEDS superpixels per image."),
    scale: float | None = typer.Option(None, help="Resize factor of the images."),
    engine: str | None = typer.Option(None, help="auto | torch | cuml: UMAP/KMeans backend."),
    retrain: str | None = typer.Option(None, help="finetune | scratch: how each cycle trains."),
    full_reference: bool | None = typer.Option(
        None, "--full-reference/--no-full-reference", help="Train a fully supervised reference first."
    ),
    full_shared: str | None = typer.Option(
        None, "--full-shared", help="Reference JSON shared by runs: reused when it exists (checked), else written."
    ),
    target_ratio: float | None = typer.Option(
        None, "--target-ratio", help="Stop at this fraction of the fully supervised mIoU."
    ),
    log: str | None = typer.Option(None, "--log", help="none | tensorboard: event files in RUN_DIR/tensorboard/."),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory (default runs/<dataset>-<strategy>-seed<S>-<time>-<random>)."
    ),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory."),
    accept_config_change: bool = typer.Option(
        False, "--accept-config-change", help="With --resume: continue under an edited config.toml (recorded in results.json)."
    ),
    nproc: int | None = typer.Option(
        None, "--nproc", help="Processes (GPUs) on this node, instead of the config's nproc: starts them under "
        "torchrun (docs/multi-gpu.md)."
    ),
) -> None:
    """Run the active-learning experiment (no arguments: the built-in synthetic dataset; minutes on 2 CPU cores)."""
    from fastal import distributed
    from fastal.config import load_config
    from fastal.errors import FastalError
    from fastal.loop import run_experiment
    from fastal.rundir import open_run

    overrides = {
        "dataset": dataset, "data_root": data_root, "strategy": strategy, "initial": initial,
        "budget_per_cycle": budget_per_cycle, "cycles": cycles, "budgets": parse_budgets(budgets),
        "epochs": epochs, "backbone": backbone, "labels": labels, "device": device, "seed": seed,
        "superpixels": superpixels, "scale": scale, "engine": engine, "retrain": retrain,
        "full_reference": full_reference, "full_shared": full_shared, "target_ratio": target_ratio,
        "log": log,
    }  # fmt: skip
    if resume is not None:
        given = [k for k, v in overrides.items() if v is not None] + (["config"] if config else [])
        if given or out is not None:
            extra = given[0] if given else "out"
            raise FastalError(f"--resume continues {resume} with its own config.toml; drop --{extra.replace('_', '-')}")
        resumed = open_run(resume)
        if launches(nproc, resumed.nproc):
            raise typer.Exit(distributed.launch(nproc or resumed.nproc, without_nproc(invocation)))
        with distributed.session(resumed.device), resumable(resume):
            run_experiment(None, resume, resume=True, accept_config_change=accept_config_change)
        return
    if accept_config_change:
        raise FastalError("--accept-config-change goes with --resume RUN_DIR (a new run has nothing to change)")
    cfg = load_config(config, overrides)
    if out is None:
        # The time alone is not unique: two runs started in the same second would share it.
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        out = Path("runs") / f"{cfg.dataset}-{cfg.strategy}-seed{cfg.seed}-{stamp}"
    if launches(nproc, cfg.nproc):  # the processes get the one --out decided here
        raise typer.Exit(distributed.launch(nproc or cfg.nproc, [*without_nproc(invocation), "--out", str(out)]))
    with distributed.session(cfg.device), resumable(out):
        run_experiment(cfg, out)


@contextlib.contextmanager
def resumable(directory: Path, command: str = "run", marker: str = "config.toml") -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM in the block: say how to continue (`fastal COMMAND --resume
    DIRECTORY`, once ``DIRECTORY/marker`` is there), exit 128 + the signal's number. SIGTERM is
    raised as KeyboardInterrupt, so atomic writes under way remove their temp files."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt as e:
        from fastal.progress import console

        sig = signal.SIGTERM if e.args == ("SIGTERM",) else signal.SIGINT
        then = (f"continue with `fastal {command} --resume {directory}`" if (directory / marker).is_file()
                else f"the {command} directory was not made yet")  # fmt: skip
        console.print(f"stopped by {sig.name}: {then}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + sig) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def launches(option: int | None, configured: int) -> bool:
    """Whether this command starts the run's processes (torchrun's launcher): asked by ``--nproc``
    or by the config's ``nproc`` > 1, and not already one of them."""
    from fastal import distributed

    return (option is not None or configured > 1) and distributed.launch_env() is None


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N``: what each of the processes runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def parse_budgets(text: str | None) -> list[float] | None:
    """``"1,2,4,8"`` -> ``[1.0, 2.0, 4.0, 8.0]`` (the config checks the values)."""
    if text is None:
        return None
    from fastal.errors import FastalError

    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise FastalError(f"--budgets {text!r}: expected comma-separated percentages, e.g. 1,2,4,8") from None
