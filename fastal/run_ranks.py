"""The processes of one run under torchrun: rank 0 runs the experiment as a single process does
(it alone reads and writes the run directory, holds its lock and decides every phase); ranks
1..N-1 hold no state of the run and write nothing: they follow rank 0 into the collective steps
(training, scoring the pool, evaluating), each a module-level function that every rank calls with
the same arguments (:func:`collective`).

Rank 0 sends, by broadcast: the run's configuration once it is checked (the others prepare the same
data, the superpixel cache being built by then), then one message per collective step, then the
end. A FastalError on rank 0 ends the others cleanly; a rank that dies takes the job down
(torchrun's behaviour), and ``fastal run --resume`` continues from the last commit, with any
number of processes. The ranks read checkpoints and the pool from the run directory, so on several
nodes it must be on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from fastal import distributed
from fastal.config import RunConfig


def follow() -> None:
    """Ranks 1..N-1: take rank 0's messages until the run ends."""
    from fastal.run_setup import prepare

    setup = None
    while (message := distributed.broadcast(None)) is not None:
        kind, payload = message
        if kind == "setup":
            setup = prepare(payload)
            if setup.device.type == "cpu":  # as rank 0's loop does: a phase redone must compute the same
                torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            module, name, args = payload
            getattr(importlib.import_module(module), name)(setup, *args)


@contextlib.contextmanager
def leading() -> Iterator[None]:
    """Rank 0's side of :func:`follow` around the run: the others are released at its end,
    whether it finished or failed."""
    try:
        yield
    finally:
        if distributed.is_distributed():
            distributed.broadcast(None)


def share_setup(cfg: RunConfig) -> None:
    """Rank 0: the other ranks prepare the data of ``cfg`` (checked, its cache built)."""
    if distributed.is_distributed():
        distributed.broadcast(("setup", cfg))


def check_world(setup: Any, world: int | None = None) -> None:
    """FastalError (before anything is written) unless ``world`` processes (default: this job's)
    can share the run of ``setup``: no more processes than the images the first cycle labels (its
    random draw, made here as the run will make it), and a batch that splits evenly among them."""
    from fastal.pool import RegionPool, random_initial
    from fastal.run_setup import PHASE_SELECT, phase_seed

    world, cfg, cache = world or distributed.world_size(), setup.cfg, setup.cache
    if world == 1:
        return
    # The pool of a new run directory (rundir.RunDir) and cycle 1's draw from it (loop's select).
    pool = RegionPool(cache.offsets, cache.sizes, cfg.labels, seed=phase_seed(cfg.seed, 1, PHASE_SELECT))
    images = np.unique(cache.image_of(random_initial(pool, cfg.schedule()[0] / 100)))
    distributed.check_world_size(world, cfg.batch_size, images.size)


def collective(fn: Callable[..., Any], setup: Any, *args: Any) -> Any:
    """Rank 0: ``fn(setup, *args)`` on every rank (each with its own setup); rank 0's result.
    ``fn`` is a module-level function, ``args`` picklable."""
    if distributed.is_distributed():
        distributed.broadcast(("call", (fn.__module__, fn.__qualname__, args)))
    return fn(setup, *args)
