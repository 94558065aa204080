"""The run directory on disk: its file names, its JSON records, the query log, the commit of a
cycle's labels, and the lock and fault-injection points around them.

The layout (see :mod:`fastal.loop` for the order in which a cycle writes it)::

    config.toml          the resolved RunConfig (written once, with the directory)
    run.json             the run's id and the configuration it was created with (its fingerprint):
                         a resume refuses a config.toml edited since, unless told to accept it
                         (and ``first_cycle``: where a sweep's shared cycle 1 was copied from)
    run.lock             the one-writer lock (:func:`fastal.runlock.run_lock`): the pid holding it
    pool.npz             RegionPool state: which superpixel was labelled in which cycle
    queries.jsonl        one line per queried superpixel, append-only; rebuilt from pool.npz on resume
    full.json            the fully supervised reference (trained here, or copied from ``full_shared``)
    checkpoints/cycle-K.pt   Trainer state after training cycle K
    checkpoints/reference-partial.pt   the reference's trainer after its last epoch, while it trains
    timings.json         seconds (and peak memory) per cycle and stage (the only thing a resumed run
                         may not reproduce)
    clusters.json        per cycle, the clustering strategies' k, clusters_kept and kmeans_fits
    epochs.json          per cycle, per epoch: loss, CE, InfoNCE, learning rate (:mod:`fastal.tracking`)
    tensorboard/         with ``log = "tensorboard"``: the event file, rebuilt from the records above
    results.json         one record per evaluated cycle
    labels/<image id>.png    masks people returned (`fastal label import`), read in full label mode
    curve.png            mIoU against % of pixels labelled
    selection/cycle-K.parquet   the selection table of cycle K >= 2 (:mod:`fastal.select.selection_table`)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fastal.atomic import appending, atomic_dir, atomic_write_json, atomic_write_text, read_json
from fastal.config import RunConfig, merge_config, read_toml, save_config, to_dict
from fastal.errors import FastalError, check_path_names
from fastal.oracle import OracleAnswer
from fastal.pool import RegionPool
from fastal.run_setup import PHASE_SELECT, Setup, phase_seed
from fastal.runlock import RUN_LOCK

CONFIG, RUN, POOL, QUERIES, FULL, TIMINGS, RESULTS, CURVE, LABELS = (
    "config.toml", "run.json", "pool.npz", "queries.jsonl", "full.json", "timings.json", "results.json",
    "curve.png", "labels",
)  # fmt: skip
CLUSTERS = "clusters.json"


def crash_point(name: str) -> None:
    """Fault injection for the resume tests: ``FASTAL_CRASH_AT=name`` SIGKILLs the process here."""
    if os.environ.get("FASTAL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def check_new_run_dir(run_dir: str | Path) -> None:
    """FastalError unless a new run directory can be made at ``run_dir`` (nothing is there)."""
    run_dir = Path(run_dir)
    check_path_names(run_dir, written=True)
    if (run_dir / CONFIG).is_file():
        raise FastalError(f"{run_dir}: already exists (use --resume {run_dir} to continue it)")
    if run_dir.is_dir():
        raise FastalError(f"{run_dir}: already exists and is not a fastal run directory; choose another --out")
    if run_dir.exists() or run_dir.is_symlink():
        raise FastalError(f"{run_dir}: a file is there, not a run directory; choose another --out")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FastalError(f"{run_dir}: cannot be made, {parent} is a file, not a directory")
            break


def create_run_dir(cfg: RunConfig, run_dir: str | Path, first: Path | None = None) -> Path:
    """A new run directory holding ``config.toml`` and ``run.json``, created whole or not at all.

    ``first``: a run directory whose evaluated cycle 1 the new run starts from (a sweep's shared
    first cycle: its runs differ only in :data:`fastal.config.LATER_CYCLE_KEYS`); its files are
    copied, except its configuration, lock and logs, results.json describes ``cfg``, and run.json
    says where cycle 1 came from (``first_cycle``, relative to the new run directory).
    """
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir)
    record = {} if first is None else {"first_cycle": os.path.relpath(first, run_dir)}
    with atomic_dir(run_dir, replace=False) as tmp:  # two runs racing for one --out: one gets it
        if first is not None:
            if not (first / RESULTS).is_file():
                raise FastalError(f"{first}: its first cycle is not evaluated yet ({RESULTS} missing)")
            shutil.copytree(first, tmp, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(CONFIG, RUN, RUN_LOCK, ".*", "*.log"))  # fmt: skip
            atomic_write_json(tmp / RESULTS, {**read_json(tmp / RESULTS), **described(cfg)})
            crash_point("first-copy")
        save_config(cfg, tmp / CONFIG)
        atomic_write_json(tmp / RUN, {"run_id": uuid.uuid4().hex, **_fingerprint(cfg), **record})
        (tmp / "checkpoints").mkdir(exist_ok=True)
    return run_dir


def described(cfg: RunConfig) -> dict[str, Any]:
    """What results.json says of the run's configuration alone."""
    return {"dataset": cfg.dataset, "strategy": cfg.strategy, "seed": cfg.seed, "labels": cfg.labels,
            "backbone": cfg.backbone, "budgets": cfg.schedule()}  # budgets: cumulative % of pixels per cycle


def _fingerprint(cfg: RunConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    return {"config_sha256": hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest(), "config": d}


def run_record(run_dir: str | Path) -> dict[str, Any]:
    """``run.json``: the run's id and the configuration it was made with. Its absence is refused
    like any damage: a record made anew from config.toml would let an edit through unchecked."""
    path = Path(run_dir) / RUN
    if not path.exists():
        raise FastalError(f"{path}: missing; it holds the run's id and the configuration the run was made with, "
                          f"which config.toml is checked against: restore it, or `fastal run --resume {run_dir} "
                          f"--accept-config-change` makes a new record from config.toml as it is (noted in "
                          f"{RESULTS})")  # fmt: skip
    rec = read_json(path)
    if not (isinstance(rec, dict) and isinstance(rec.get("config"), dict) and isinstance(rec.get("run_id"), str)):
        raise FastalError(f"{path}: expected the run's record (run_id, config) written by fastal run")
    return rec


def config_changes(run_dir: str | Path, cfg: RunConfig) -> dict[str, list[Any]]:
    """Keys whose value in ``cfg`` (config.toml now) differs from the run's creation: key -> [was, is].
    A key fastal added since the run was made counts as unchanged while it has its default."""
    rec = run_record(run_dir)
    if rec.get("config_sha256") == _fingerprint(cfg)["config_sha256"]:
        return {}
    was, now, defaults = rec["config"], to_dict(cfg), to_dict(RunConfig())
    return {k: [was.get(k, defaults.get(k)), now.get(k)] for k in sorted(set(was) | set(now))
            if was.get(k, defaults.get(k)) != now.get(k)}  # fmt: skip


def checked_config(run_dir: str | Path, accept_change: bool = False) -> tuple[RunConfig, dict[str, list[Any]]]:
    """The run's configuration and its changes since the run began (:func:`config_changes`);
    FastalError naming the changed keys unless ``accept_change`` (which also accepts a lost
    run.json: the change is then ``{"run.json": [None, "made anew"]}``, the configuration before unknown)."""
    cfg = open_run(run_dir)
    if accept_change and not (Path(run_dir) / RUN).exists():
        return cfg, {RUN: [None, "made anew"]}
    changes = config_changes(run_dir, cfg)
    if changes and not accept_change:
        raise FastalError(f"{Path(run_dir) / CONFIG}: changed since the run began ({', '.join(changes)}); undo "
                          f"it, or `fastal run --resume {run_dir} --accept-config-change` records the change")
    return cfg, changes


def accept_config(run_dir: str | Path, cfg: RunConfig) -> None:
    """From now on ``cfg`` is the configuration the run is checked against (a lost run.json: under a new id)."""
    rec = run_record(run_dir) if (Path(run_dir) / RUN).exists() else {"run_id": uuid.uuid4().hex}
    atomic_write_json(Path(run_dir) / RUN, {**rec, **_fingerprint(cfg)})  # keeps the rest (first_cycle)


def open_run(run_dir: str | Path) -> RunConfig:
    """The configuration of an existing run directory.

    A key its config.toml lacks takes the value that matches how the run was made: a run written
    before ``cluster_budget`` existed cut its picks to the pixels, which is ``"prefix"`` (the
    default, ``"fit"``, would change the selection rule in the middle of the run).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FastalError(f"{run_dir}: not a fastal run directory (no {CONFIG})")
    values = read_toml(run_dir / CONFIG)
    values.setdefault("cluster_budget", "prefix")
    return merge_config(values, None, str(run_dir / CONFIG))


def checkpoint_path(run_dir: str | Path, cycle: int) -> Path:
    """The trainer saved after training cycle ``cycle`` of the run in ``run_dir``."""
    return Path(run_dir) / "checkpoints" / f"cycle-{cycle}.pt"


def labels_of(setup: Setup, run_dir: str | Path, i: int) -> np.ndarray:
    """Labels of training image ``i`` of the run in ``run_dir``: the mask people returned
    (``labels/``) where there is one, else the dataset's own (read only: any rank may call it)."""
    from fastal.data.base import read_label

    path = Path(run_dir) / LABELS / f"{setup.train.image_id(i)}.png"
    return read_label(path) if path.exists() else setup.train.label(i)


class RunDir:
    """One run directory as it is on disk: its pool, results and timings, read when opened;
    every change goes back to disk at once, by an atomic write."""

    def __init__(self, setup: Setup, run_dir: str | Path) -> None:
        """Open the run (its writer holds :func:`fastal.runlock.run_lock`), check its files against
        each other (:meth:`_check_state`) and rebuild the query log from the pool."""
        self.setup, self.cfg, self.dir = setup, setup.cfg, Path(run_dir)
        cache = setup.cache
        if (self.dir / POOL).exists():
            # Not rebuilt from queries.jsonl when damaged: the log lacks the pool's RNG state and
            # valid-pixel counts, and holds uncommitted lines after a kill. A damaged pool.npz is refused.
            self.pool = RegionPool.load(self.dir / POOL, offsets=cache.offsets, sizes=cache.sizes)
        else:
            # Its RNG draws cycle 1's random set, from the seed of that phase.
            self.pool = RegionPool(cache.offsets, cache.sizes, self.cfg.labels,
                                   seed=phase_seed(self.cfg.seed, 1, PHASE_SELECT))
        self.results = self._read_results() or self.empty_results()
        self.timings = self.read_json(TIMINGS) or {}
        self._check_state()
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

    def _read_results(self) -> dict[str, Any] | None:
        """results.json; None when it is missing or emptied (no bytes, or ``{}``): what that
        allows is for :meth:`_check_state` to say."""
        path = self.dir / RESULTS
        if path.exists() and path.stat().st_size == 0:
            return None
        res = self.read_json(RESULTS)
        if not res:
            return None
        cycles = res.get("cycles")
        if not isinstance(cycles, list) or not all(isinstance(c, dict) for c in cycles):
            raise FastalError(f"{path}: expected a list of cycle records under 'cycles'")
        return res

    def _check_state(self) -> None:
        """Refuse (one line) a run directory whose pool.npz, results.json and checkpoints disagree.

        What a kill can leave is accepted: the pool one cycle ahead of results.json (a selection or
        an import not trained yet, or trained and not evaluated), no results.json before cycle 1 is
        evaluated. queries.jsonl is rebuilt from the pool (:meth:`_reconcile_queries`), a
        missing checkpoint of the cycle being trained is retrained, and results.json missing before
        its first cycle is rebuilt by evaluating that cycle: the state determines all of these. The
        mIoU of an evaluated cycle is not: its model is gone (only the latest checkpoint is kept),
        so a results.json that lost cycles the pool went past is refused, never recomputed.
        """
        pool, cycles = self.pool, self.results["cycles"]
        res, done, labelled = self.dir / RESULTS, len(cycles), pool.current_cycle
        if pool.num_labelled and pool.label_mode != self.cfg.labels:
            raise FastalError(f"{self.dir / POOL}: labelled in {pool.label_mode!r} mode, "
                              f"{self.dir / CONFIG} says labels = {self.cfg.labels!r}")  # fmt: skip
        for k, c in enumerate(cycles, start=1):
            if c.get("cycle") != k:
                raise FastalError(f"{res}: cycle record {k} says cycle {c.get('cycle')!r}")
            want = int(pool.labelled_through(k).sum())
            if c.get("labelled_superpixels") != want:
                raise FastalError(f"{res}: cycle {k} counts {c.get('labelled_superpixels')!r} labelled "
                                  f"superpixels, {self.dir / POOL} {want}; restore the pair written together")
        if labelled < done:
            raise FastalError(f"{self.dir / POOL}: labels cycles 1..{labelled}, but {res} evaluated cycles "
                              f"1..{done}; restore the pool.npz written with it")  # fmt: skip
        if labelled > done + 1:
            what = "is missing or empty" if not done else f"evaluated only cycles 1..{done}"
            raise FastalError(f"{res}: {what}, but {self.dir / POOL} labels cycles 1..{labelled}; the mIoU of "
                              f"cycles {done + 1}..{labelled - 1} cannot be rebuilt without their models: restore "
                              f"{RESULTS} or start a new run")  # fmt: skip
        trained = sorted(int(p.stem.removeprefix("cycle-")) for p in (self.dir / "checkpoints").glob("cycle-*.pt")
                         if p.stem.removeprefix("cycle-").isdigit())  # fmt: skip
        if trained and trained[-1] > labelled:
            raise FastalError(f"{self.ckpt(trained[-1])}: a model of cycle {trained[-1]}, but {self.dir / POOL} "
                              f"labels only cycles 1..{labelled}; restore the pool.npz written with it")
        needed = done and not (self.results.get("stopped") and labelled == done)
        if needed and done not in trained and done + 1 not in trained:
            raise FastalError(f"{self.ckpt(done)}: missing; cycle {done + 1} needs the model of cycle {done}, "
                              f"which cannot be rebuilt without retraining cycles 1..{done}")

    def empty_results(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            **described(cfg),
            "classes": list(self.setup.train.classes),  # names of the class ids in queries and selection tables
            "num_superpixels": self.setup.cache.num_superpixels,
            "num_pixels": self.pool.total_pixels,
            "cycle_superpixels": self.setup.cycle_ks,  # planned for cycles 2, 3, ... at the mean size
            # null when the schedule's cycles differ in size
            "superpixels_per_cycle": self.setup.cycle_ks[0] if len(set(self.setup.cycle_ks)) == 1 else None,
            "full_miou": None,
            "stopped": None,
            "cycles": [],
        }

    def ckpt(self, cycle: int) -> Path:
        return checkpoint_path(self.dir, cycle)

    def reference_partial(self) -> Path:
        """The fully supervised reference's trainer after its last finished epoch (until it is done)."""
        return self.dir / "checkpoints" / "reference-partial.pt"

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
        return labels_of(self.setup, self.dir, i)

    def _query_lines(self, gids: np.ndarray) -> list[str]:
        lines = []
        for rec in self.pool.records(gids):
            rec["image_id"] = self.setup.train.image_id(rec["image"])
            lines.append(json.dumps(rec))
        return lines

    def _reconcile_queries(self) -> None:
        """Make queries.jsonl say exactly what the pool state says (the pool is authoritative)."""
        path = self.dir / QUERIES
        want = self._query_lines(self.pool.order)
        have = path.read_text().splitlines() if path.exists() else []
        if have != want:
            atomic_write_text(path, "".join(line + "\n" for line in want))

    def set_timing(self, cycle: int, key: str, seconds: float, stages: dict[str, Any] | None = None) -> None:
        """Record ``key``'s seconds of ``cycle`` and, merged into the cycle's, ``stages``
        (:func:`fastal.stages.measured`'s records)."""
        record = self.timings.setdefault(str(cycle), {})
        record[key] = round(seconds, 3)
        record["stages"] = {**record.get("stages", {}), **(stages or {})}
        atomic_write_json(self.dir / TIMINGS, self.timings)

    def commit(self, answer: OracleAnswer, cycle: int) -> None:
        """Label ``answer`` in ``cycle``: queries.jsonl lines first, then pool.npz (the commit)."""
        self.pool.add(answer, cycle)
        lines = self._query_lines(answer.ids)
        with appending(self.dir / QUERIES) as f:  # a full disk: one line; the pool is not committed
            for j, line in enumerate(lines):
                f.write(line + "\n")
                if j == len(lines) // 2:
                    f.flush()
                    crash_point(f"queries:{cycle}")
        self.pool.save(self.dir / POOL)
        crash_point(f"pool:{cycle}")
