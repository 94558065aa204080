"""One run across several processes (one per GPU), launched by ``torchrun``: the launch
environment, the process group, and the few collectives a run needs on top of DDP.

``torchrun --nproc-per-node N -m fastal run ...`` (or ``fastal run --nproc N``) starts N copies
of the command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; :func:`start`
reads them and joins the process group: NCCL for CUDA tensors (each process on ``cuda:LOCAL_RANK``)
with gloo beside it for host objects, gloo alone on CPU. Without WORLD_SIZE nothing changes: one
process, as before.

The splits, all decided from (number of items, rank, world size) only, so every rank agrees without
talking:

- scoring and evaluation: :func:`shard`, a contiguous, disjoint share of the images, no padding (a
  padded share would score or count an image twice); rank 0 concatenates the rows in rank order
  (:func:`gather_rows`), which is pool order, and confusion matrices are summed (exact integers);
- training: torch's DistributedSampler (padding allowed there), seeded per epoch by the trainer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fastal.errors import FastalError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun tells a process about the job it is part of."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The torchrun environment of this process; None when it was not started by torchrun (no
    WORLD_SIZE). FastalError naming the variable when one is missing or not a valid number."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    missing = [k for k in ENV_KEYS if not environ.get(k)]
    if missing:
        raise FastalError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with torchrun")
    values: dict[str, int] = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            values[key] = int(environ[key])
        except ValueError:
            raise FastalError(f"{key}={environ[key]!r}: not an integer (start the processes with torchrun)") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise FastalError(f"RANK={values['RANK']}, LOCAL_RANK={values['LOCAL_RANK']}, WORLD_SIZE={values['WORLD_SIZE']}: "
                          "need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")  # fmt: skip
    return LaunchEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], environ["MASTER_ADDR"],
                     values["MASTER_PORT"])  # fmt: skip


def rank_device(name: str | None, env: LaunchEnv) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when the run's device is auto/cuda and CUDA is there,
    else the CPU. A device naming one GPU (``cuda:1``) is refused: each process takes its own."""
    from fastal.device import resolve_device

    device = resolve_device(name)
    if device.type == "cpu":
        return device
    if name not in (None, "auto", "cuda"):
        raise FastalError(f"device = {name!r} with {env.world_size} processes: each process uses cuda:LOCAL_RANK; "
                          "set device = \"cuda\" (or \"auto\") and choose the GPUs with CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise FastalError(f"LOCAL_RANK {env.local_rank}: this node has {count} visible GPU(s); "
                          f"start at most {count} processes per node (--nproc-per-node)")  # fmt: skip
    return torch.device("cuda", env.local_rank)


_DEVICE: torch.device | None = None  # this rank's device while it is in a job


def start(device: str | None) -> torch.device | None:
    """Join the torchrun job this process belongs to; returns this rank's device, or None when the
    process was not started by torchrun (then nothing is initialised).

    FastalError (before anything is written) for CUDA without NCCL, and when the ranks did not all
    get the same kind of device (some CPU, some GPU)."""
    env = launch_env()
    if env is None:
        return None
    if is_initialised():
        return current_device()
    dev = rank_device(device, env)
    if dev.type == "cuda":
        if not dist.is_nccl_available():
            raise FastalError("CUDA run across processes needs NCCL, and this torch build has none "
                              "(install a CUDA build of torch, or set device = \"cpu\" to use gloo)")
        torch.cuda.set_device(dev)
        # gloo beside NCCL: the objects the ranks exchange (commands, row counts) live on the host.
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    global _DEVICE
    _DEVICE = dev
    kinds = torch.zeros(env.world_size, dtype=torch.int64)
    kinds[env.rank] = int(dev.type == "cuda")
    dist.all_reduce(kinds)  # a host tensor: gloo in both process-group kinds
    if kinds.min() != kinds.max():
        stop()
        gpus = ", ".join(str(r) for r in torch.flatnonzero(kinds).tolist())
        raise FastalError(f"mismatched devices: ranks {gpus} have a GPU, the others run on the CPU; "
                          "give every process the same kind of device (set device = \"cpu\" or \"cuda\")")
    return dev


def current_device() -> torch.device:
    """The device :func:`start` gave this rank (the CPU outside a job)."""
    return _DEVICE if _DEVICE is not None else torch.device("cpu")


def stop() -> None:
    """Leave the process group (when one was joined)."""
    global _DEVICE
    if is_initialised():
        dist.destroy_process_group()
    _DEVICE = None


@contextlib.contextmanager
def session(device: str | None) -> Iterator[torch.device | None]:
    """:func:`start` ... :func:`stop` around a block."""
    try:
        yield start(device)
    finally:
        stop()


def is_initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the job; 1 outside one."""
    return dist.get_world_size() if is_initialised() else 1


def rank() -> int:
    """This process's rank; 0 outside a job (the process that writes the run directory)."""
    return dist.get_rank() if is_initialised() else 0


def is_distributed() -> bool:
    """True inside a job of more than one process: training, scoring and evaluation are collective."""
    return world_size() > 1


def check_world_size(world: int, batch_size: int, labelled_images: int) -> None:
    """FastalError unless ``world`` processes can share the training: each needs a labelled image
    of its own (``labelled_images``: the fewest the run will train on) and an equal share of the batch."""
    if world > labelled_images:
        raise FastalError(f"{world} processes but the first cycle labels only {labelled_images} images: each process "
                          f"needs one to train on; start at most {labelled_images} processes or raise `initial`")
    if batch_size % world:
        raise FastalError(f"batch_size = {batch_size} is not a multiple of the {world} processes: the batch "
                          "is split evenly across them (choose a multiple)")


def shard(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """The contiguous share of ``n`` items of rank ``rank_`` (default: this process) among ``world``:
    the first ``n % world`` ranks take one more; the shares are disjoint, in rank order, cover
    0..n-1 and repeat nothing (empty for ranks beyond ``n``)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    lo = rank_ * base + min(rank_, extra)
    return range(lo, lo + base + (rank_ < extra))


def _row_counts(rows: torch.Tensor) -> list[int]:
    counts = torch.zeros(world_size(), dtype=torch.int64, device=rows.device)
    counts[rank()] = rows.shape[0]
    dist.all_reduce(counts)
    return counts.tolist()


def _padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    pad = rows.new_zeros((size - rows.shape[0], *rows.shape[1:]))
    return torch.cat([rows, pad]).contiguous()


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (n_r, ...) concatenated in rank order, on every rank (n_r may differ;
    the trailing shape and dtype must not)."""
    if not is_distributed():
        return rows
    counts = _row_counts(rows)
    parts = [rows.new_empty((max(counts), *rows.shape[1:])) for _ in counts]
    dist.all_gather(parts, _padded(rows, max(counts)))
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def gather_rows(rows: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
    """Every rank's ``rows`` concatenated in rank order on rank ``dst`` (None on the others): the
    pool's score rows without a copy of the whole pool on every rank."""
    if not is_distributed():
        return rows
    counts = _row_counts(rows)
    mine = _padded(rows, max(counts))
    parts = [torch.empty_like(mine) for _ in counts] if rank() == dst else None
    dist.gather(mine, parts, dst=dst)
    return None if parts is None else torch.cat([p[:c] for p, c in zip(parts, counts)])


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (integer sums are exact: confusion matrices)."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))  # host objects go by gloo
    return box[0]


def launch(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc-per-node nproc -m fastal ARGV...`` from this process, by
    torch's elastic launcher (one node). Returns the exit code: 0; 2 when a process ended with a
    FastalError (it printed the message); 1 for any other failure (named in one line here)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from fastal.progress import console

    if nproc < 1:
        raise FastalError(f"--nproc {nproc}: must be at least 1")
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "fastal", *argv])
    # The launcher logs a failure in a paragraph; the failed process has said why in one line.
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        if any(f.exitcode == 2 for f in e.failures.values()):
            return 2
        rank_, failure = min(e.failures.items())
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        console.print(f"process {rank_} of {nproc} failed ({how}); the job was stopped", highlight=False)
        return 1
    finally:
        elastic.setLevel(level)
    return 0
