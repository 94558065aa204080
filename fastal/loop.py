"""The active-learning experiment: initial random set, then cycles of select -> query -> train -> evaluate.

The run directory is the one source of truth::

    config.toml          the resolved RunConfig (written once, with the directory)
    pool.npz             RegionPool state: which superpixel was labelled in which cycle
    queries.jsonl        one line per queried superpixel, append-only; rebuilt from pool.npz on resume
    full.json            the fully supervised reference (trained here, or copied from ``full_shared``)
    checkpoints/cycle-K.pt   Trainer state after training cycle K
    timings.json         seconds spent per cycle (the only thing a resumed run may not reproduce)
    results.json         one record per evaluated cycle
    labels/<image id>.png    masks people returned (`fastal label import`), read in full label mode
    curve.png            mIoU against % of pixels labelled

Cycle K commits three times, each by an atomic write that a later phase only reads:

1. selection: queries.jsonl lines appended, then ``pool.npz`` saved with the cycle's ids
   (the pool is authoritative: jsonl lines of a cycle the pool lacks are dropped on resume);
2. training: ``checkpoints/cycle-K.pt``;
3. evaluation: ``results.json`` gains cycle K, ``curve.png`` redrawn.

Resume looks at what exists and redoes the first missing phase. Every phase is seeded from
``(seed, cycle, phase)`` and reads its inputs (checkpoint K-1, the pool) from disk even in an
uninterrupted run, so a phase redone after a kill computes what it computed the first time:
on CPU a resumed run ends with the same labelled set and results as an uninterrupted one.

The budget schedule (``RunConfig.schedule()``) gives the cumulative % of pixels at each
evaluated cycle, and every cycle spends pixels, not a count of regions: cycle 1 draws random
superpixels up to the first entry's pixel fraction; cycle K > 1 asks the strategy for as many
superpixels as the missing pixels make at the unlabelled pool's mean size, and keeps the
shortest prefix of its ranked picks that reaches entry K (:func:`fastal.pool.take_until`).
A strategy that prefers large regions (summed entropy does) thus labels fewer of them rather
than more pixels. When its picks fall short (smaller than the mean), it is asked again for the
rest, the picks so far counted as labelled, so every strategy ends a cycle at its target. The
planned counts (``cycle_superpixels``, ``round((entry K - entry K-1) / 100 * num_superpixels)``)
only check the schedule against the pool.

A fully supervised reference does not depend on the strategy, the schedule or the superpixels:
runs that differ only in those share one through ``full_shared`` (a JSON path). The first run
that needs it trains it, under a lock, and writes it there; the others wait for the lock, check
that it was trained the way they would train it (data fingerprints, backbone, training settings,
seed, device) and copy it into their own ``full.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from fastal.progress import console

CONFIG, POOL, QUERIES, FULL, TIMINGS, RESULTS, CURVE, LABELS = (
    "config.toml", "pool.npz", "queries.jsonl", "full.json", "timings.json", "results.json", "curve.png",
    "labels",
)  # fmt: skip
PHASE_SELECT, PHASE_TRAIN, PHASE_EVAL = 0, 1, 2


def crash_point(name: str) -> None:
    """Fault injection for the resume tests: ``FASTAL_CRASH_AT=name`` SIGKILLs the process here."""
    if os.environ.get("FASTAL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def score_amp(amp: str) -> bool | None:
    """The run's ``amp`` setting as pool scoring takes it (None = its device default)."""
    return None if amp == "auto" else amp != "fp32"


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


def seed_everything(seed: int, cycle: int, phase: int) -> int:
    """Seed Python, numpy and torch from ``(seed, cycle, phase)``; returns the derived seed."""
    import torch

    s = int(np.random.SeedSequence([seed, cycle, phase]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def reference_key(setup: Setup) -> dict[str, Any]:
    """Everything a fully supervised reference's training depends on."""
    cfg = setup.cfg
    return {"train": setup.train.fingerprint(), "val": setup.val.fingerprint(), "backbone": cfg.backbone,
            "weights": cfg.weights, "epochs": cfg.reference_epochs(), "batch_size": cfg.batch_size,
            "lr": cfg.lr, "amp": cfg.amp, "seed": cfg.seed, "device": setup.device.type}  # fmt: skip


def check_reference(path: Path, setup: Setup) -> dict[str, Any]:
    """The shared reference at ``path``, if it was trained the way ``setup``'s run would train it."""
    ref = read_json(path)
    have = ref.get("trained_with") if isinstance(ref, dict) else None
    if not isinstance(have, dict) or not isinstance(ref.get("miou"), float):
        raise FastalError(f"{path}: not a fully supervised reference written by fastal run "
                          f"(no 'miou' or 'trained_with'); delete it to train it again")
    for key, want in reference_key(setup).items():
        if have.get(key) != want:
            what = (f"on other {key} data (dataset, scale, images or files differ)" if key in ("train", "val")
                    else f"with {key} = {have.get(key)!r}, this run has {want!r}")  # fmt: skip
            raise FastalError(f"{path}: this shared reference was trained {what}; full_shared serves runs "
                              f"that differ only in strategy, budgets, labels or superpixels")
    return ref


@dataclass
class Setup:
    """Data and derived sizes of a run; built (and checked) before the run directory exists."""

    cfg: RunConfig
    train: Any  # SegDataset
    val: Any
    cache: Any  # SuperpixelCache
    device: Any  # torch.device
    initial_k: int  # superpixels the initial set takes on average (it is drawn up to a % of pixels)
    cycle_ks: list[int]  # superpixels queried by cycles 2, 3, ..., last_cycle

    @property
    def last_cycle(self) -> int:
        return 1 + len(self.cycle_ks)


def _dataset_args(cfg: RunConfig, split: str, count: int) -> dict[str, Any]:
    args: dict[str, Any] = {"root": cfg.data_root, "split": split, "scale": cfg.scale}
    if cfg.dataset == "synthetic":
        args.update(seed=cfg.data_seed, num_images=count or None)
        if cfg.scale is None:
            args["size"] = tuple(cfg.image_size)
    elif count:
        args["limit"] = count
    return args


def prepare(cfg: RunConfig) -> Setup:
    """Load both splits, build or reuse the superpixel cache, check the budget against the pool."""
    from fastal.data import load_dataset
    from fastal.data.superpixels import build_cache
    from fastal.device import resolve_device
    from fastal.model import BACKBONES
    from fastal.select import STRATEGIES

    if cfg.strategy not in STRATEGIES:
        raise FastalError(f"strategy {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if cfg.backbone not in BACKBONES:
        raise FastalError(f"backbone {cfg.backbone!r}: choose one of {', '.join(BACKBONES)}")
    device = resolve_device(cfg.device)
    train = load_dataset(cfg.dataset, **_dataset_args(cfg, "train", cfg.train_images))
    val = load_dataset(cfg.dataset, **_dataset_args(cfg, "val", cfg.val_images))
    if train.num_classes != val.num_classes:
        raise FastalError(f"{cfg.dataset}: train has {train.num_classes} classes, val {val.num_classes}")
    cache = build_cache(train, superpixels=cfg.superpixels, cache_dir=cfg.cache_dir)
    n = cache.num_superpixels
    sched = cfg.schedule()
    initial_k = max(1, round(sched[0] / 100 * n))
    cycle_ks = [max(1, round((b - a) / 100 * n)) for a, b in zip(sched, sched[1:])]
    need = initial_k + sum(cycle_ks)
    if need > n:
        cycles = (f"{len(cycle_ks)} cycles x {cycle_ks[0]}" if len(set(cycle_ks)) == 1
                  else f"cycles of {' + '.join(map(str, cycle_ks))}")  # fmt: skip
        raise FastalError(
            f"budget larger than the pool: {initial_k} initial + {cycles} = "
            f"{need} superpixels, the pool has {n} ({len(train)} images)"
        )
    return Setup(cfg, train, val, cache, device, initial_k, cycle_ks)


def check_before_training(setup: Setup) -> None:
    """What a new run would otherwise only find out cycles in: bad validation labels, backbone
    weights that do not load, and a selection engine the device cannot run."""
    from fastal.data.base import check_labels
    from fastal.model.network import build_model
    from fastal.select.engines import resolve_engine

    check_labels(setup.val)
    if setup.cfg.weights is not None:
        build_model(setup.cfg.backbone, setup.train.num_classes, setup.cfg.weights)
    resolve_engine(setup.cfg.engine, setup.device)


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


class Run:
    """One run directory and the objects a cycle needs; every method reads state from disk."""

    def __init__(self, setup: Setup, run_dir: Path) -> None:
        from fastal.oracle import SimulatedOracle
        from fastal.pool import RegionPool

        self.s, self.cfg, self.dir = setup, setup.cfg, Path(run_dir)
        self.oracle = SimulatedOracle(setup.train, setup.cache, mode=self.cfg.labels)
        if (self.dir / POOL).exists():
            self.pool = RegionPool.load(self.dir / POOL)
            if not np.array_equal(self.pool.sizes, setup.cache.sizes):
                raise FastalError(f"{self.dir / POOL}: describes other superpixels than the cache "
                                  f"{setup.cache.path} ({self.pool.num_superpixels} vs {setup.cache.num_superpixels})")
        else:
            self.pool = RegionPool(setup.cache.offsets, setup.cache.sizes, self.cfg.labels, seed=self.cfg.seed)
        self.results = self._read_json(RESULTS) or self._empty_results()
        self.timings = self._read_json(TIMINGS) or {}
        self._reconcile_queries()

    # ---- files --------------------------------------------------------------------------
    def _read_json(self, name: str) -> dict[str, Any] | None:
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

    def _set_timing(self, cycle: int, key: str, seconds: float) -> None:
        self.timings.setdefault(str(cycle), {})[key] = round(seconds, 3)
        atomic_write_json(self.dir / TIMINGS, self.timings)

    # ---- phases -------------------------------------------------------------------------
    def full_reference(self) -> None:
        """Train on every pixel once (or take the shared reference); its mIoU is the line the curve aims at."""
        if not self.cfg.full_reference or (self.dir / FULL).exists():
            return
        console.rule("fully supervised reference")
        if self.cfg.full_shared is None:
            ref = self._train_reference()
        else:
            shared = Path(self.cfg.full_shared)
            with file_lock(shared):  # one run trains it; runs waiting here then read it
                if shared.exists():
                    ref = check_reference(shared, self.s)
                    console.print(f"fully supervised mIoU {ref['miou']:.4f} (shared reference {shared})")
                else:
                    ref = self._train_reference()
                    atomic_write_json(shared, ref)
            ref = {**ref, "shared": str(shared)}
        atomic_write_json(self.dir / FULL, ref)

    def _train_reference(self) -> dict[str, Any]:
        seed = seed_everything(self.cfg.seed, 0, PHASE_TRAIN)
        t0 = time.perf_counter()
        trainer = self._new_trainer(seed)
        trainer.fit(self.s.train, self.cfg.reference_epochs(), progress=True)
        seconds = time.perf_counter() - t0
        seed_everything(self.cfg.seed, 0, PHASE_EVAL)
        m = self._evaluate(trainer)
        console.print(f"fully supervised mIoU {m['miou']:.4f} ({seconds:.1f} s)")
        return {"miou": m["miou"], "per_class_iou": m["per_class_iou"], "train_seconds": round(seconds, 3),
                "run": str(self.dir), "trained_with": reference_key(self.s)}

    def select(self, cycle: int) -> None:
        """Choose cycle ``cycle``'s superpixels, ask the oracle, commit to queries.jsonl + pool.npz."""
        from fastal.pool import random_initial

        seed = seed_everything(self.cfg.seed, cycle, PHASE_SELECT)
        t0 = time.perf_counter()
        if cycle == 1:
            rng = np.random.default_rng(seed)
            ids = np.sort(random_initial(self.pool, self.cfg.schedule()[0] / 100, rng))
        else:
            ids = self._select_with_model(cycle, seed)
        seconds = time.perf_counter() - t0
        self.commit(self.oracle.query(ids), cycle)
        self._set_timing(cycle, "select_seconds", seconds)

    def commit(self, answer: Any, cycle: int) -> None:
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

    def _select_with_model(self, cycle: int, seed: int) -> np.ndarray:
        from fastal.pool import take_until
        from fastal.select import score_pool, select
        from fastal.train import Trainer

        trainer = Trainer.load(self.ckpt(cycle - 1), self.s.device)
        images = np.unique(self.s.cache.image_of(self.pool.unlabelled_ids()))
        scores = score_pool(trainer.teacher, self.s.train, self.s.cache, images, self.s.device,
                            amp=score_amp(self.cfg.amp), region_entropy=self.cfg.region_entropy)
        bank_features, bank_labels = trainer.bank.features(), trainer.bank.labels()
        sizes, taken = self.pool.sizes, self.pool.labelled_mask.copy()
        missing = self.cfg.schedule()[cycle - 1] / 100 * self.pool.total_pixels - self.pool.labelled_pixels
        chosen: list[np.ndarray] = []
        for round_ in range(taken.size):  # each round takes >= 1 region: it ends
            free = sizes[~taken]
            k = int(np.clip(round(max(missing, 0.0) / free.mean()), 1, free.size))
            sel = select(self.cfg.strategy, scores, bank_features, bank_labels, budget=k, labelled_mask=taken,
                         seed=seed + round_, engine=self.cfg.engine, clusters=self.cfg.clusters)
            # At least one region: the last cycle's overshoot can exceed a tiny step of the schedule.
            ids = take_until(sizes, sel.ids, missing) if missing > 0 else sel.ids[:1]
            chosen.append(ids)
            taken[ids] = True
            missing -= sizes[ids].sum()
            if missing <= 0 or taken.all():
                break
        return np.concatenate(chosen)

    def train(self, cycle: int) -> None:
        """Train on the labelled pixels (from checkpoint ``cycle - 1`` or anew); commit the checkpoint."""
        from fastal.train import Trainer

        seed = seed_everything(self.cfg.seed, cycle, PHASE_TRAIN)
        t0 = time.perf_counter()
        if cycle > 1 and self.cfg.retrain == "finetune":
            trainer = Trainer.load(self.ckpt(cycle - 1), self.s.device)
        else:
            trainer = self._new_trainer(seed)
        trainer.fit(LabelledSamples(self.s.train, self.s.cache, self.pool, self.truth), self.cfg.epochs,
                    progress=True)
        seconds = time.perf_counter() - t0
        crash_point(f"trained:{cycle}")
        trainer.save(self.ckpt(cycle))  # atomic
        crash_point(f"ckpt:{cycle}")
        self._set_timing(cycle, "train_seconds", seconds)

    def evaluate(self, cycle: int) -> dict[str, Any]:
        """Evaluate checkpoint ``cycle`` on the validation split; commit results.json and curve.png."""
        from fastal.report import curve_for_results
        from fastal.train import Trainer

        seed_everything(self.cfg.seed, cycle, PHASE_EVAL)
        m = self._evaluate(Trainer.load(self.ckpt(cycle), self.s.device))
        labelled = (self.pool.state > 0) & (self.pool.state <= cycle)  # a later import may exist
        t = self.timings.get(str(cycle), {})
        sched = self.cfg.schedule()
        rec = {
            "cycle": cycle,
            "budget_pct": sched[cycle - 1] if cycle <= len(sched) else None,  # null: a cycle people added
            "labelled_superpixels": int(labelled.sum()),
            "labelled_pixel_fraction": float(self.pool.sizes[labelled].sum() / self.pool.total_pixels),
            "cost_clicks": int(self.pool.clicks[labelled].sum()),
            "miou": m["miou"],
            "per_class_iou": m["per_class_iou"],
            "train_seconds": t.get("train_seconds"),
            "select_seconds": t.get("select_seconds"),
        }
        full = self._read_json(FULL)
        self.results["full_miou"] = None if full is None else full["miou"]
        self.results["cycles"].append(rec)
        self.results["stopped"] = self._stop_reason(cycle, m["miou"])
        atomic_write_json(self.dir / RESULTS, self.results)
        curve_for_results(self.results, self.dir / CURVE)
        if not self.cfg.keep_checkpoints and cycle > 1:
            self.ckpt(cycle - 1).unlink(missing_ok=True)
        return rec

    def _stop_reason(self, cycle: int, miou: float) -> str | None:
        full = self.results["full_miou"]
        if self.cfg.target_ratio is not None and full is not None and miou >= self.cfg.target_ratio * full:
            return "target"
        if cycle >= self.s.last_cycle or self.pool.num_labelled == self.pool.num_superpixels:
            return "budget"
        return None

    # ---- helpers ------------------------------------------------------------------------
    def truth(self, i: int) -> np.ndarray:
        """Labels of training image ``i``: masks people returned (``labels/``) over the dataset's own."""
        from fastal.data.base import read_label

        path = self.dir / LABELS / f"{self.s.train.image_id(i)}.png"
        return read_label(path) if path.exists() else self.s.train[i][1]

    def _new_trainer(self, seed: int) -> Any:
        from fastal.train import TrainConfig, Trainer

        cfg = self.cfg
        tc = TrainConfig(backbone=cfg.backbone, weights=cfg.weights, batch_size=cfg.batch_size, lr=cfg.lr,
                         epochs=cfg.epochs, amp=cfg.amp, seed=seed)
        return Trainer(tc, self.s.train.num_classes, self.s.device)

    def _evaluate(self, trainer: Any) -> dict[str, Any]:
        from fastal.train import evaluate

        m = evaluate(trainer.teacher, self.s.val, self.s.train.num_classes, self.s.device, amp=self.cfg.amp)
        # A class absent from truth and prediction has no IoU: null in JSON, not NaN.
        return {"miou": float(m["miou"]),
                "per_class_iou": [None if math.isnan(x) else float(x) for x in m["per_class_iou"]]}


class LabelledSamples:
    """Training samples of the images with labelled superpixels: (image, sparse label map).

    ``truth(i)`` gives image ``i``'s full labels; only full label mode reads it.
    """

    def __init__(self, ds: Any, cache: Any, pool: Any, truth: Callable[[int], np.ndarray]) -> None:
        self.ds, self.cache, self.pool, self.truth = ds, cache, pool, truth
        self.images = pool.labelled_images()  # (n,) image indices

    def __len__(self) -> int:
        return int(self.images.size)

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        i = int(self.images[j])
        image, _ = self.ds[i]
        truth = self.truth(i) if self.pool.label_mode == "full" else None
        return image, self.pool.label_map(i, self.cache.local(i), truth)


def cycle_table(results: dict[str, Any]):
    """The rich table of the cycles so far."""
    from rich.table import Table

    full = results.get("full_miou")
    table = Table(title=f"{results['dataset']} / {results['strategy']} / seed {results['seed']}"
                  + (f"  (fully supervised mIoU {full:.4f})" if full is not None else ""))
    for col in ("cycle", "regions", "% pixels", "clicks", "mIoU", "of full", "train s", "select s"):
        table.add_column(col, justify="right")
    for c in results["cycles"]:
        table.add_row(
            str(c["cycle"]), str(c["labelled_superpixels"]), f"{100 * c['labelled_pixel_fraction']:.2f}",
            str(c["cost_clicks"]), f"{c['miou']:.4f}", "" if full is None else f"{c['miou'] / full:.1%}",
            "" if c["train_seconds"] is None else f"{c['train_seconds']:.1f}",
            "" if c["select_seconds"] is None else f"{c['select_seconds']:.1f}",
        )  # fmt: skip
    return table


def run_experiment(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False,
                   setup: Setup | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the experiment in ``run_dir``; returns results.json's dict.

    A new run validates everything (config, data, budget against the pool) before the
    directory is created; a resumed run takes its configuration from ``run_dir/config.toml``
    (``cfg`` is then ignored). ``setup`` reuses data already prepared for ``cfg``.
    """
    import torch

    run_dir = Path(run_dir)
    if resume:
        cfg = open_run(run_dir)
    setup = setup or prepare(cfg)
    if not resume:
        shared = Path(cfg.full_shared) if cfg.full_reference and cfg.full_shared else None
        if shared is not None and shared.exists():
            check_reference(shared, setup)  # refused before the run directory exists
        elif shared is not None:
            check_writable(shared)  # it will be written there, and its lock beside it
        check_before_training(setup)
        create_run_dir(cfg, run_dir)
    if setup.device.type == "cpu":
        # Deterministic kernels where torch has them; a resumed run must redo a phase bit for bit.
        torch.use_deterministic_algorithms(True, warn_only=True)
    run = Run(setup, run_dir)
    if run.results["cycles"]:
        from fastal.report import curve_for_results

        curve_for_results(run.results, run_dir / CURVE)  # a kill may have come between results and curve
    run.full_reference()
    cycle = len(run.results["cycles"]) + 1
    while True:
        if run.pool.current_cycle < cycle:
            # A stopped run still trains on what `fastal label import` added after it stopped.
            if run.results["stopped"]:
                break
            console.rule(f"cycle {cycle}")
            run.select(cycle)
        else:
            console.rule(f"cycle {cycle}")
        if not run.ckpt(cycle).exists():
            run.train(cycle)
        run.evaluate(cycle)
        console.print(cycle_table(run.results))
        cycle += 1
    console.print(f"run directory: {run_dir} (results.json, curve.png)")
    return run.results


def check_round(q: Any, qpath: Path, num_images: int) -> None:
    """FastalError unless ``q`` (a round's queries.json) holds a non-empty list ``queries`` of
    objects with integer ``superpixel``, ``local`` and an ``image`` index below ``num_images``."""
    rows = q.get("queries") if isinstance(q, dict) else None
    if not isinstance(rows, list) or not rows:
        raise FastalError(f"{qpath}: expected a JSON object with a non-empty list \"queries\"")
    for r in rows:
        if not isinstance(r, dict) or not all(type(r.get(k)) is int for k in ("superpixel", "image", "local")):
            raise FastalError(f"{qpath}: query {r!r} lacks an integer superpixel, image or local")
        if not 0 <= r["image"] < num_images:
            raise FastalError(f"{qpath}: query {r!r}: image {r['image']} is not in 0..{num_images - 1}")


def import_masks(round_dir: str | Path, run_dir: str | Path) -> tuple[int, int]:
    """Label the superpixels of a `fastal select` round from the masks people put in ``round_dir/masks``.

    They become the run's next cycle; in full label mode the masks are also kept under
    ``run_dir/labels`` for training. Returns (cycle, superpixels labelled).
    """
    import cv2

    from fastal.atomic import atomic_write_bytes
    from fastal.data.base import read_label
    from fastal.oracle import MaskOracle

    round_dir, run_dir = Path(round_dir), Path(run_dir)
    qpath = round_dir / "queries.json"
    q = read_json(qpath, f"is {round_dir} a round written by `fastal select`?")
    cfg = open_run(run_dir)
    setup = prepare(cfg)
    ds, cache = setup.train, setup.cache
    check_round(q, qpath, len(ds))
    if q.get("fingerprint") != ds.fingerprint():
        raise FastalError(f"{qpath}: the round was selected on other data than the run {run_dir} uses")
    run = Run(setup, run_dir)
    if run.pool.current_cycle != len(run.results["cycles"]):
        raise FastalError(f"{run_dir}: cycle {run.pool.current_cycle} is not trained yet; "
                          f"run `fastal run --resume {run_dir}` first")
    gids = np.array([r["superpixel"] for r in q["queries"]], dtype=np.int64)
    images = sorted({r["image"] for r in q["queries"]})
    masks = {}
    for i in images:
        path = round_dir / "masks" / f"{ds.image_id(i)}.png"
        if not path.exists():
            raise FastalError(f"{path}: missing (a mask is needed for every image of queries.csv)")
        m = read_label(path)
        if m.shape != tuple(ds.image_shape(i)):
            raise FastalError(f"{path}: mask is {m.shape[0]}x{m.shape[1]}, the image is "
                              f"{ds.image_shape(i)[0]}x{ds.image_shape(i)[1]}")
        bad = (m >= ds.num_classes) & (m != 255)
        if bad.any():
            raise FastalError(f"{path}: value {int(m[bad][0])} is no class (0..{ds.num_classes - 1}, 255 = none)")
        masks[i] = m
    answer = MaskOracle(masks, cache, ds.num_classes, mode=cfg.labels).query(gids)
    if cfg.labels == "full":
        # Keep the returned pixels inside the queried superpixels; training reads them from labels/.
        for i in images:
            sp = np.asarray(cache.local(i))
            mine = [r["local"] for r in q["queries"] if r["image"] == i]
            merged = np.where(np.isin(sp, mine), masks[i], run.truth(i)).astype(np.uint8)
            _, png = cv2.imencode(".png", merged)
            atomic_write_bytes(run_dir / LABELS / f"{ds.image_id(i)}.png", png.tobytes())
    cycle = run.pool.current_cycle + 1
    run.commit(answer, cycle)
    return cycle, int(gids.size)
