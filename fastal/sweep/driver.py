"""The sweep's driver: the runs left to do as Dask tasks, their references (and shared first
cycles) as tasks they wait for,
a progress display, failures reported one line each, and cycles.parquet kept up to date.

``scheduler="local"`` starts a ``distributed.LocalCluster`` for the sweep (one run per worker
process, ``threads`` torch threads each; on a CUDA machine with dask-cuda installed, a
``dask_cuda.LocalCUDACluster`` with one worker per GPU); an address submits to a running
cluster. A worker lost in the middle of a task (killed, out of memory, its node gone) is
replaced by its nanny, and the scheduler runs the task again elsewhere, up to
``distributed.scheduler.allowed-failures`` times (default 3); the task resumes its directory.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from fastal.atomic import atomic_write_json, read_json
from fastal.errors import FastalError
from fastal.progress import console, progress
from fastal.sweep.spec import FIRST, REFERENCES, RUNS, RunSpec, Sweep
from fastal.sweep.cycles import TABLE, is_finished, is_started, read_results, write_cycles
from fastal.sweep.tasks import TOPIC, first_cycle_task, reference_task, run_task

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
THREADS = "threads.json"  # DIR/threads.json: {"torch_threads_per_run": N}, kept from the sweep's first start
ADDRESS = re.compile(r"([a-z][a-z0-9+]*://)?\S+:\d+|[a-z][a-z0-9+]*://\S+")  # tcp://HOST:PORT, HOST:PORT, ...


@dataclass
class Outcome:
    runs: int
    finished: list[str] = field(default_factory=list)  # run names
    failed: dict[str, str] = field(default_factory=dict)  # run name -> its error line


def cuda_cluster_available() -> bool:
    """A CUDA device and dask-cuda: the local cluster is then one worker per GPU."""
    try:
        import dask_cuda  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@contextlib.contextmanager
def connect(scheduler: str, workers: int | None, threads: int | None) -> Iterator[tuple[Any, int, bool]]:
    """A Dask client on a cluster started here (``"local"``) or at an address; yields
    (client, torch threads per run, whether the workers are one per GPU)."""
    import dask
    from distributed import Client, LocalCluster

    check_options(scheduler, workers, threads)
    if scheduler != "local":
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as e:
            raise FastalError(f"--scheduler {scheduler}: cannot connect ({e})") from None
        with client:
            yield client, threads or 1, False
        return
    cores = len(os.sched_getaffinity(0))
    # Dask's nanny sets its workers' variables (distributed.nanny.pre-spawn-environ: OMP_NUM_THREADS=1,
    # ...) in this process's environment before it spawns them: a caller's later subprocesses would
    # run at 1 thread. They are put back when the cluster closes.
    names = {*THREAD_VARS, *dask.config.get("distributed.nanny.pre-spawn-environ", {})}
    kept = {v: os.environ.get(v) for v in names}
    try:
        # Workers must be able to start processes (the superpixel cache is built in a process pool).
        with dask.config.set({"distributed.worker.daemon": False}):
            if cuda_cluster_available():
                import torch
                from dask_cuda import LocalCUDACluster

                t = threads or max(1, cores // torch.cuda.device_count())
                cluster = LocalCUDACluster(n_workers=workers, threads_per_worker=1, resources={"GPU": 1},
                                           dashboard_address=None)  # fmt: skip
                gpu = True
            else:
                n = workers or cores
                t = threads or max(1, cores // n)
                # One task per worker (threads_per_worker=1); the run inside it uses t threads.
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                       env={v: str(t) for v in THREAD_VARS})  # fmt: skip
                gpu = False
            with cluster, Client(cluster) as client:
                yield client, t, gpu
    finally:
        restore_environ(kept)


def restore_environ(kept: dict[str, str | None]) -> None:
    """Put the environment variables of ``kept`` back as they were (None: unset)."""
    for name, value in kept.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def check_options(scheduler: str, workers: int | None, threads: int | None) -> None:
    """The cluster options, checked before the sweep directory is made or a cluster started."""
    if workers is not None and workers < 1:
        raise FastalError(f"--workers {workers}: must be >= 1")
    if threads is not None and threads < 1:
        raise FastalError(f"--threads-per-worker {threads}: must be >= 1")
    if scheduler != "local" and not ADDRESS.fullmatch(scheduler):
        raise FastalError(f"--scheduler {scheduler}: expected local, or a running scheduler's address "
                          f"(tcp://HOST:PORT)")  # fmt: skip
    if scheduler != "local" and workers is not None:
        raise FastalError(f"--workers starts a local cluster; the cluster at {scheduler} has its own workers")


def check_placeable(runs: list[RunSpec], resources: list[dict[str, float]], where: str, gpu_cluster: bool) -> None:
    """FastalError when a run needs a worker resource (``GPU``) that no worker has (``resources``:
    each worker's): Dask would keep its task waiting for one, silently, for ever."""
    need = next((r for r in runs if wants_gpu(r, gpu_cluster)), None)
    if need is not None and not any(res.get("GPU", 0) >= 1 for res in resources):
        raise FastalError(f"{need.name}: device = {need.cfg.device!r} needs a worker with a GPU (Dask resource "
                          f"GPU), and {where} has none; use device = \"cpu\" or a cluster with GPU workers")


def check_local_cluster(runs: list[RunSpec], scheduler: str, workers: int | None, threads: int | None) -> None:
    """What can be known before a cluster starts: the options, and (a local cluster) whether its
    workers can run every run."""
    check_options(scheduler, workers, threads)
    if scheduler == "local" and not cuda_cluster_available():
        check_placeable(runs, [], "this machine (no CUDA device with dask-cuda)", False)


def wants_gpu(run: RunSpec, gpu_cluster: bool) -> bool:
    """Runs on CUDA ask for a worker resource ``GPU``: one per process of the run (``nproc``)."""
    return run.cfg.device.startswith("cuda") or (gpu_cluster and run.cfg.device == "auto")


def error_line(exc: BaseException) -> str:
    """One line for a task's exception: FastalError's message, else its type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FastalError):
        return text
    if type(exc).__name__ == "KilledWorker":
        return f"its worker died every time it ran ({text.split('. ')[0]})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def say(text: str) -> None:
    """One line on the console (markup allowed; a line is never wrapped: logs are grepped)."""
    console.print(text, highlight=False, soft_wrap=True)


def submit(client: Any, todo: list[RunSpec], out: Path, threads: int,
           gpu: bool) -> tuple[dict[str, Any], dict[str, Any], dict[Any, RunSpec]]:  # fmt: skip
    """One task per reference still missing, one per shared first cycle still missing that a new
    run needs (after its reference), one per run (after its reference's and first cycle's tasks).
    Returns ({reference name: future}, {first cycle name: future}, {future: run}).

    Free workers take the runs in the grid's order, each run's reference and first cycle just
    before it: a sweep stopped half-way leaves whole leading points of its first axis (all
    strategies of the first seeds when seed is listed first), not every reference and no run."""
    token = uuid.uuid4().hex[:8]  # a fresh key per submission: a long-lived scheduler may remember old ones
    order = {r.name: -2 * i for i, r in enumerate(todo)}  # Dask's priority: higher runs first
    refs: dict[str, Any] = {}
    for run in todo:
        if run.reference is None or run.reference in refs or Path(str(run.cfg.full_shared)).is_file():
            continue
        refs[run.reference] = client.submit(
            reference_task, f"reference {run.reference}", run.cfg, str(out / REFERENCES / run.reference), threads,
            key=f"fastal-reference-{run.reference}-{token}", priority=order[run.name] + 1,
            resources={"GPU": 1} if wants_gpu(run, gpu) else None)  # fmt: skip
    # A run that has a directory goes on from its own cycles; a new one starts from its first cycle.
    starts = {r.name: str(out / FIRST / r.first) for r in todo
              if r.first is not None and not (out / RUNS / r.name).exists()}  # fmt: skip
    firsts: dict[str, Any] = {}
    for run in todo:
        if run.name not in starts or run.first in firsts or is_started(Path(starts[run.name])):
            continue
        firsts[run.first] = client.submit(
            first_cycle_task, f"first {run.first}", run.cfg, starts[run.name], threads, refs.get(run.reference),
            key=f"fastal-first-{run.first}-{token}", priority=order[run.name] + 1,
            resources={"GPU": 1} if wants_gpu(run, gpu) else None)  # fmt: skip
    runs = {
        client.submit(run_task, run.name, run.cfg, str(out / RUNS / run.name), threads, refs.get(run.reference),
                      firsts.get(run.first, starts[run.name]) if run.name in starts else None, key=f"fastal-run-{run.name}-{token}",
                      priority=order[run.name], resources={"GPU": run.cfg.nproc} if wants_gpu(run, gpu) else None): run
        for run in todo
    }  # fmt: skip
    return refs, firsts, runs


@dataclass
class Tracker:
    """What the driver knows of the tasks: started (Dask events), cycles evaluated (results.json
    of the running runs), ended (their futures)."""

    out: Path
    outcome: Outcome
    refs: dict[str, Any]  # reference name -> future
    firsts: dict[str, Any]  # shared first cycle's name -> future
    runs: dict[Any, RunSpec]  # future -> run
    running: dict[str, int] = field(default_factory=dict)  # run name -> cycles evaluated when last looked at
    starts: dict[str, int] = field(default_factory=dict)  # task name -> times started (> 1: a worker was lost)
    latest: str = ""

    def started(self, msg: dict[str, Any]) -> None:
        name = msg["run"]
        self.starts[name] = self.starts.get(name, 0) + 1
        say(f"{name}: started{' again (a worker was lost)' if self.starts[name] > 1 else ''} on {msg['worker']}")
        if not name.startswith(("reference ", "first ")):
            self.running.setdefault(name, 0)

    def look(self) -> None:
        for name, seen in list(self.running.items()):
            res = read_results(self.out / RUNS / name)
            if res is not None and len(res["cycles"]) > seen:
                c = res["cycles"][-1]
                self.latest = f"{name} cycle {c['cycle']} mIoU {c['miou']:.3f}"
                say(f"{name}: cycle {c['cycle']}, mIoU {c['miou']:.4f} at {100 * c['labelled_pixel_fraction']:.2f} % "
                    f"of pixels")  # fmt: skip
                self.running[name] = len(res["cycles"])

    def ended(self, fut: Any) -> None:
        if fut not in self.runs:
            name = next(f"{what} {n}" for what, tasks in (("reference", self.refs), ("first", self.firsts))
                        for n, f in tasks.items() if f is fut)  # fmt: skip
            if fut.status == "error":
                say(f"[bold red]{name}: failed:[/] {escape(error_line(fut.exception()))}")
            return
        run = self.runs[fut]
        self.running.pop(run.name, None)
        if fut.status == "finished":
            last = fut.result()["cycles"][-1]
            self.outcome.finished.append(run.name)
            pct = 100 * last["labelled_pixel_fraction"]
            say(f"{run.name}: finished, mIoU {last['miou']:.4f} at {pct:.2f} % of pixels")
            return
        needed = {"reference": self.refs.get(run.reference), "first cycle": self.firsts.get(run.first)}
        failed = next(((what, f) for what, f in needed.items() if f is not None and f.status == "error"), None)
        if failed is not None:
            line = f"not run: its {failed[0]} failed ({error_line(failed[1].exception())})"
        else:
            line = error_line(fut.exception())
        self.outcome.failed[run.name] = line
        say(f"[bold red]{run.name}: failed:[/] {escape(line)}")

    def description(self) -> str:
        text = f"runs: {len(self.running)} running, {len(self.outcome.failed)} failed"
        return text + (f"; latest {self.latest}" if self.latest else "")


def kept_threads(out: Path, threads: int | None) -> int | None:
    """The torch threads per run for a sweep in ``out``: those its runs were started with (results
    on a CPU depend on the count, so a resumed sweep keeps it whatever ``--workers`` gives), else
    ``threads``. A ``threads`` other than the kept count is refused."""
    path = out / THREADS
    if not path.is_file():
        return threads
    kept = read_json(path)
    n = kept.get("torch_threads_per_run") if isinstance(kept, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FastalError(f"{path}: expected {{\"torch_threads_per_run\": N}} with N >= 1, found {str(kept)[:80]}")
    if threads is not None and threads != n:
        raise FastalError(f"--threads-per-worker {threads}: this sweep's runs were started with {n} torch threads "
                          f"each ({path}), and results on a CPU depend on the count; leave the option out, or use "
                          "another --out")  # fmt: skip
    return n


def run_sweep(sweep: Sweep, out: Path, scheduler: str = "local", workers: int | None = None,
              threads: int | None = None, poll: float = 0.5) -> Outcome:  # fmt: skip
    """Run every run of ``sweep`` under ``out`` that has not finished (``out`` already made by
    :func:`fastal.sweep.spec.open_sweep_dir`); returns what finished and what failed."""
    from distributed import as_completed

    out = out.absolute()
    runs = sweep.runs(out)
    todo = [r for r in runs if not is_finished(out / RUNS / r.name)]
    outcome = Outcome(len(runs), finished=[r.name for r in runs if r not in todo])
    threads = kept_threads(out, threads)
    check_local_cluster(todo, scheduler, workers, threads)
    say(f"sweep {out}: {len(runs)} runs, {len(outcome.finished)} finished before, {len(todo)} to run")
    if todo:
        with connect(scheduler, workers, threads) as (client, t, gpu):
            resources = [w.get("resources", {}) for w in client.scheduler_info()["workers"].values()]
            if resources:  # none yet (batch jobs still queued): the tasks wait for workers, as Dask's do
                check_placeable(todo, resources, f"the cluster at {client.scheduler.address}", gpu)
            say(f"Dask scheduler {client.scheduler.address}; {t} torch threads per run")
            if not (out / THREADS).is_file():
                atomic_write_json(out / THREADS, {"torch_threads_per_run": t})
            events: queue.SimpleQueue = queue.SimpleQueue()
            client.subscribe_topic(TOPIC, lambda event: events.put(event[1]))  # event: (time, message)
            track = Tracker(out, outcome, *submit(client, todo, out, t, gpu))
            done = as_completed([*track.refs.values(), *track.firsts.values(), *track.runs])
            with progress() as bar:
                task = bar.add_task("runs", total=len(runs), completed=len(outcome.finished))
                while not done.is_empty():
                    while not events.empty():
                        track.started(events.get())
                    track.look()
                    for fut in done.next_batch(block=False):
                        track.ended(fut)
                        if fut in track.runs:
                            write_cycles(out, runs)
                    bar.update(task, completed=len(outcome.finished), description=track.description())
                    time.sleep(poll)
    write_cycles(out, runs)
    say(f"{len(outcome.finished)}/{len(runs)} runs finished; {out / TABLE}")
    for name, line in outcome.failed.items():
        say(f"[bold red]failed:[/] {name}: {escape(line)}")
    return outcome
