"""The run directory on disk: its file names, its JSON records, the query log, the commit of a
cycle's labels, and the lock and fault-injection points around them.

The layout (see :mod:`fastal.loop` for the order in which a cycle writes it)::

    config.toml          the resolved RunConfig (written once, with the directory)
    pool.npz             RegionPool state: which superpixel was labelled in which cycle
    queries.jsonl        one line per queried superpixel, append-only; rebuilt from pool.npz on resume
    full.json            the fully supervised reference (trained here, or copied from ``full_shared``)
    checkpoints/cycle-K.pt   Trainer state after training cycle K
    timings.json         seconds spent per cycle (the only thing a resumed run may not reproduce)
    clusters.json        per cycle, the clustering strategies' k, clusters_kept and kmeans_fits
    results.json         one record per evaluated cycle
    labels/<image id>.png    masks people returned (`fastal label import`), read in full label mode
    curve.png            mIoU against % of pixels labelled
    selection/cycle-K.parquet   the selection table of cycle K >= 2 (:mod:`fastal.select.table`)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastal.atomic import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    naming_os_errors,
    read_json,
)
from fastal.config import RunConfig, load_config, save_config
from fastal.errors import FastalError
from fastal.oracle import OracleAnswer
from fastal.pool import RegionPool
from fastal.run_setup import PHASE_SELECT, Setup, phase_seed

CONFIG, POOL, QUERIES, FULL, TIMINGS, RESULTS, CURVE, LABELS = (
    "config.toml", "pool.npz", "queries.jsonl", "full.json", "timings.json", "results.json", "curve.png",
    "labels",
)  # fmt: skip
CLUSTERS = "clusters.json"


def crash_point(name: str) -> None:
    """Fault injection for the resume tests: ``FASTAL_CRASH_AT=name`` SIGKILLs the process here."""
    if os.environ.get("FASTAL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path + ".lock"`` (created if need be) for the block; the
    kernel drops it when the process dies. ``wait=False``: FastalError if another process holds it."""
    lock = Path(f"{path}.lock")
    check_writable(lock)
    with naming_os_errors(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a")  # noqa: SIM115 - closed by the with below
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FastalError(f"{lock}: held by another process (is another one running on {path}?)") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def create_run_dir(cfg: RunConfig, run_dir: str | Path) -> Path:
    """A new run directory holding ``config.toml``, created whole or not at all."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        raise FastalError(f"{run_dir}: already exists (use --resume {run_dir} to continue it)")
    with atomic_dir(run_dir) as tmp:
        save_config(cfg, tmp / CONFIG)
        (tmp / "checkpoints").mkdir()
    return run_dir


def open_run(run_dir: str | Path) -> RunConfig:
    """The configuration of an existing run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FastalError(f"{run_dir}: not a fastal run directory (no {CONFIG})")
    return load_config(run_dir / CONFIG)


class RunDir:
    """One run directory as it is on disk: its pool, results and timings, read when opened;
    every change goes back to disk at once, by an atomic write."""

    def __init__(self, setup: Setup, run_dir: str | Path) -> None:
        self.s, self.cfg, self.dir = setup, setup.cfg, Path(run_dir)
        cache = setup.cache
        if (self.dir / POOL).exists():
            self.pool = RegionPool.load(self.dir / POOL, offsets=cache.offsets, sizes=cache.sizes)
        else:
            # Its RNG draws cycle 1's random set, from the seed of that phase.
            self.pool = RegionPool(cache.offsets, cache.sizes, self.cfg.labels,
                                   seed=phase_seed(self.cfg.seed, 1, PHASE_SELECT))
        self.results = self.read_json(RESULTS) or self._empty_results()
        self.timings = self.read_json(TIMINGS) or {}
        self._reconcile_queries()

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON object in file ``name`` of the run directory; None when there is none."""
        path = self.dir / name
        if not path.exists():
            return None
        data = read_json(path)
        if not isinstance(data, dict):
            raise FastalError(f"{path}: expected a JSON object, found {type(data).__name__}")
        return data

    def _empty_results(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "dataset": cfg.dataset,
            "strategy": cfg.strategy,
            "seed": cfg.seed,
            "classes": list(self.s.train.classes),  # names of the class ids in queries and selection tables
            "labels": cfg.labels,
            "backbone": cfg.backbone,
            "num_superpixels": self.s.cache.num_superpixels,
            "num_pixels": self.pool.total_pixels,
            "budgets": cfg.schedule(),  # cumulative % of pixels aimed at, per cycle
            "cycle_superpixels": self.s.cycle_ks,  # planned for cycles 2, 3, ... at the mean size
            # null when the schedule's cycles differ in size
            "superpixels_per_cycle": self.s.cycle_ks[0] if len(set(self.s.cycle_ks)) == 1 else None,
            "full_miou": None,
            "stopped": None,
            "cycles": [],
        }

    def ckpt(self, cycle: int) -> Path:
        return self.dir / "checkpoints" / f"cycle-{cycle}.pt"

    def trained_checkpoint(self) -> Path:
        """The checkpoint of the latest labelled cycle; FastalError while that cycle is not trained
        and evaluated yet (people's labels, a selection, go on the model of the last cycle)."""
        cycle = self.pool.current_cycle
        if cycle != len(self.results["cycles"]):
            raise FastalError(f"{self.dir}: cycle {cycle} is not trained yet; "
                              f"run `fastal run --resume {self.dir}` first")  # fmt: skip
        return self.ckpt(cycle)

    def truth(self, i: int) -> np.ndarray:
        """Labels of training image ``i``: masks people returned (``labels/``) over the dataset's own."""
        from fastal.data.base import read_label

        path = self.dir / LABELS / f"{self.s.train.image_id(i)}.png"
        return read_label(path) if path.exists() else self.s.train[i][1]

    def _query_lines(self, gids: np.ndarray) -> list[str]:
        lines = []
        for rec in self.pool.records(gids):
            rec["image_id"] = self.s.train.image_id(rec["image"])
            lines.append(json.dumps(rec))
        return lines

    def _reconcile_queries(self) -> None:
        """Make queries.jsonl say exactly what the pool state says (the pool is authoritative)."""
        path = self.dir / QUERIES
        want = self._query_lines(self.pool.order)
        have = path.read_text().splitlines() if path.exists() else []
        if have != want:
            atomic_write_text(path, "".join(line + "\n" for line in want))

    def set_timing(self, cycle: int, key: str, seconds: float) -> None:
        self.timings.setdefault(str(cycle), {})[key] = round(seconds, 3)
        atomic_write_json(self.dir / TIMINGS, self.timings)

    def commit(self, answer: OracleAnswer, cycle: int) -> None:
        """Label ``answer`` in ``cycle``: queries.jsonl lines first, then pool.npz (the commit)."""
        self.pool.add(answer, cycle)
        lines = self._query_lines(answer.ids)
        with open(self.dir / QUERIES, "a") as f:
            for j, line in enumerate(lines):
                f.write(line + "\n")
                if j == len(lines) // 2:
                    f.flush()
                    crash_point(f"queries:{cycle}")
            f.flush()
            os.fsync(f.fileno())
        self.pool.save(self.dir / POOL)
        crash_point(f"pool:{cycle}")
