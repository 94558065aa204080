"""What a Dask worker runs for a sweep: one fully supervised reference, one shared first cycle
(a run stopped after cycle 1), or one run.

All are idempotent, so a task lost with its worker is simply run again: a reference already
written is returned; a run continues from its directory (``fastal run --resume``), and a
finished one only reads its results. A lock beside each directory (``<dir>.lock``, released by
the kernel when a process dies) keeps a retried task from writing next to a zombie of the first.
Console output goes to ``<dir>/sweep.log``.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastal.config import RunConfig

TOPIC = "fastal-sweep"  # Dask event topic: {"run": name, "event": "started", "worker": address, "pid": pid}
LOG = "sweep.log"
CLASSES = "classes.json"  # the class names of a run's dataset, for cycles.parquet's columns


class _LazyLog(io.TextIOBase):
    """A log file in a directory that may not exist yet (a new run creates its directory only
    after checking its data): text is held until the directory appears, and goes to
    ``<directory>.log`` beside it if it never does (a run that failed before it had one)."""

    def __init__(self, path: Path) -> None:
        self.path, self.held, self.file = path, [], None

    def write(self, text: str) -> int:
        if self.file is None and self.path.parent.is_dir():
            self.file = open(self.path, "a")  # noqa: SIM115 - closed by close()
            self.file.write("".join(self.held))
        if self.file is None:
            self.held.append(text)
        else:
            self.file.write(text)
            self.file.flush()
        return len(text)

    def close(self) -> None:
        if self.file is None and self.held:
            self.path.parent.with_name(f"{self.path.parent.name}.log").write_text("".join(self.held))
        if self.file is not None:
            self.file.close()
        super().close()


@contextlib.contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """fastal's console writes to ``path`` for the block (a worker runs one task at a time)."""
    from fastal.progress import console

    log, before = _LazyLog(path), console.file
    console.file = log
    try:
        yield
    except BaseException:
        log.write(traceback.format_exc())
        raise
    finally:
        console.file = before
        log.close()


def use_threads(threads: int) -> None:
    """torch and numba use ``threads`` threads: on a CPU, results depend on the count."""
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def announce(name: str) -> None:
    """Log where the task runs, and tell the sweep's driver (a Dask event) that it started."""
    from fastal.progress import console

    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # called outside a Dask worker
        worker = None
    address = worker.address if worker is not None else "this process"
    console.print(f"{name}: started on {address} (pid {os.getpid()})", highlight=False)
    if worker is not None:
        worker.log_event(TOPIC, {"run": name, "event": "started", "worker": address, "pid": os.getpid()})


def check_not_daemon() -> None:
    """Building a superpixel cache starts processes, which a daemonic Dask worker may not."""
    import multiprocessing

    from fastal.errors import FastalError

    if multiprocessing.current_process().daemon:
        raise FastalError("this Dask worker is a daemonic process and cannot start the processes fastal needs; "
                          "start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False")


def reference_task(name: str, cfg: RunConfig, directory: str, threads: int) -> str:
    """Train the fully supervised reference of ``cfg`` once, into ``cfg.full_shared``; returns that path.

    It is trained the way a run sharing it would train it (``fastal.loop.full_reference``),
    in a directory of its own (config.toml, full.json, sweep.log).
    """
    import torch

    from fastal.loop import full_reference
    from fastal.run_setup import check_before_training, prepare
    from fastal.rundir import CONFIG, RunDir, create_run_dir
    from fastal.runlock import file_lock

    shared, path = Path(str(cfg.full_shared)), Path(directory)
    if shared.is_file():
        return str(shared)
    use_threads(threads)
    with file_lock(path), logged_to(path / LOG):
        announce(name)
        check_not_daemon()
        setup = prepare(cfg)
        if not (path / CONFIG).is_file():
            check_before_training(setup)
            create_run_dir(cfg, path)
        if setup.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)  # as fastal.loop.run_experiment does
        full_reference(RunDir(setup, path))
    return str(shared)


def first_cycle_task(name: str, cfg: RunConfig, directory: str, threads: int, reference: str | None = None) -> str:
    """Cycle 1 of ``cfg``, once for the runs that share it (``share_first_cycle``): a run stopped
    after that cycle, in ``directory``; returns ``directory``, for :func:`run_task`'s ``first``."""
    run_task(name, cfg, directory, threads, reference, stop_after=1)
    return directory


def run_task(name: str, cfg: RunConfig, run_dir: str, threads: int, reference: str | None = None,
             first: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """One run of a sweep: new, or resumed from ``run_dir``; returns its results.json dict.

    ``reference`` is the path :func:`reference_task` returned: passing its future makes Dask
    start the run once its reference exists. ``first``: the first cycle the run starts from when
    new (:func:`first_cycle_task`'s directory, or its future); a run directory that exists goes
    on from its own. ``stop_after``: :func:`fastal.loop.run_experiment`'s.
    """
    from fastal.atomic import atomic_write_json
    from fastal.loop import new_run_dir, run_experiment
    from fastal.run_setup import prepare
    from fastal.rundir import CONFIG, open_run
    from fastal.runlock import file_lock

    path = Path(run_dir)
    use_threads(threads)
    with file_lock(path), logged_to(path / LOG):
        announce(name)
        check_not_daemon()
        resume = (path / CONFIG).is_file()
        setup = prepare(open_run(path) if resume else cfg)
        if first is not None and not resume:
            new_run_dir(cfg, path, setup, first=Path(first))  # whole or absent: made aside, renamed
            resume = True
        if setup.cfg.nproc > 1:
            results = run_processes(setup, path, resume)
        else:
            results = run_experiment(cfg, path, resume=resume, setup=setup, stop_after=stop_after)
        atomic_write_json(path / CLASSES, list(setup.train.classes))
    return results


def run_processes(setup: Any, path: Path, resume: bool) -> dict[str, Any]:
    """The run of ``setup`` in ``nproc`` processes of this worker, started as `fastal run --nproc`
    starts them (torchrun's launcher, one node): the run directory is made and checked here, the
    processes resume it. Returns its results.json dict."""
    from fastal import distributed
    from fastal.atomic import read_json
    from fastal.errors import FastalError
    from fastal.loop import new_run_dir
    from fastal.rundir import RESULTS

    n = setup.cfg.nproc
    if not resume:
        new_run_dir(setup.cfg, path, setup, world=n)
    code = distributed.launch(n, ["run", "--resume", str(path)])
    if code:
        raise FastalError(f"{path}: the run's {n} processes failed (exit {code}; their messages are in this "
                          "worker's output); `fastal sweep --resume` continues it")  # fmt: skip
    return read_json(path / RESULTS)
