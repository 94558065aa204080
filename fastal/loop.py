"""The active-learning experiment: initial random set, then cycles of select -> query -> train -> evaluate.

The run directory (:mod:`fastal.rundir`) is the one source of truth. Cycle K commits three
times, each by an atomic write that a later phase only reads:

1. selection: ``selection/cycle-K.parquet`` written (cycles K >= 2, unless ``selection_table =
   "none"``), queries.jsonl lines appended, then ``pool.npz`` saved with the cycle's ids (the pool
   is authoritative: jsonl lines of a cycle the pool lacks are dropped on resume, and a table of
   such a cycle is rewritten, the same, when the cycle is redone);
2. training: ``checkpoints/cycle-K.pt``;
3. evaluation: ``results.json`` gains cycle K, ``curve.png`` redrawn.

Resume looks at what exists and redoes the first missing phase. Every phase is seeded from
``(seed, cycle, phase)``, and a phase that needs a model loads checkpoint K-1 from disk even in
an uninterrupted run; the pool, results and timings are held in memory and written at once at
every change. So a phase redone after a kill computes what it computed the first time: on CPU
a resumed run ends with the same labelled set and results as an uninterrupted one.

The budget schedule (``RunConfig.schedule()``) gives the cumulative % of pixels at each
evaluated cycle, and every cycle spends pixels, not a count of regions: cycle 1 draws random
superpixels up to the first entry's pixel fraction; cycle K > 1 ranks the unlabelled pool with
the run's strategy and keeps regions worth the missing pixels (the policy:
:mod:`fastal.select.pixel_budget`). A cycle that ends below its target (``cluster_budget =
"fit"``) leaves the difference to the next cycle's (cumulative) target; k and the share of
clusters kept go into results.json. The planned counts (``cycle_superpixels``, ``round((entry K
- entry K-1) / 100 * num_superpixels)``) only check the schedule against the pool.

The fully supervised reference, and its sharing between runs, is :mod:`fastal.reference`.
"""

from __future__ import annotations

import functools
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastal import distributed
from fastal.atomic import atomic_write_json, check_writable
from fastal.config import RunConfig, to_dict
from fastal.machine import machine_info
from fastal.progress import console, print_table
from fastal.reference import check_reference, reference_key, shared_reference
from fastal.run_setup import PHASE_EVAL, PHASE_SELECT, PHASE_TRAIN, Setup, check_before_training, phase_seed, prepare
from fastal.rundir import (
    CLUSTERS,
    CURVE,
    FULL,
    POOL,
    RESULTS,
    RunDir,
    accept_config,
    check_new_run_dir,
    checked_config,
    checkpoint_path,
    crash_point,
    create_run_dir,
    labels_of,
    open_run,
)
from fastal.run_ranks import check_world, collective, follow, leading, share_setup
from fastal.runlock import run_lock
from fastal.stages import measured, overall_peak_gb
from fastal.tracking import EPOCHS, check_backend, epoch_records, write_tensorboard

if TYPE_CHECKING:
    from fastal.select.pixel_budget import Ranking


def seed_everything(seed: int, cycle: int, phase: int) -> int:
    """Seed Python, numpy and torch from ``(seed, cycle, phase)``; returns the derived seed."""
    import torch

    s = phase_seed(seed, cycle, phase)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def rank_unlabelled(setup: Setup, checkpoint: str | Path, labelled: np.ndarray, seed: int,
                    budget: int | None = None, pixels: float | None = None,
                    stages: dict[str, Any] | None = None) -> Ranking:
    """Score the unlabelled pool with the teacher of ``checkpoint`` and choose from it with the
    run's strategy (:func:`fastal.select.pixel_budget.rank`): ``budget`` superpixels (`fastal
    select`), or regions worth ``pixels`` (a cycle of the loop). ``labelled``: bool mask over
    global ids (not modified). The scoring is shared among the ranks of a run across processes.
    ``stages`` receives the seconds and peak memory of "load" (the teacher), "score" and "select"
    (:mod:`fastal.stages`; rank 0's)."""
    from fastal.select.pixel_budget import rank

    cfg, stages = setup.cfg, {} if stages is None else stages
    images = np.unique(setup.cache.image_of(np.flatnonzero(~labelled)))
    scores, bank = collective(score_teacher, setup, str(checkpoint), images, stages)
    with measured(stages, "select"):
        return rank(scores, bank, labelled, seed, strategy=cfg.strategy, engine=cfg.engine,
                    umap=cfg.umap_params(), clusters=cfg.clusters, cluster_budget=cfg.cluster_budget,
                    knobs=cfg.strategy_knobs(), sizes=None if pixels is None else setup.cache.sizes,
                    budget=budget, pixels=pixels)  # fmt: skip


def score_teacher(setup: Setup, checkpoint: str, images: np.ndarray,
                  stages: dict[str, Any]) -> tuple[Any, Any] | None:
    """(Collective, :mod:`fastal.run_ranks`.) The pool's scores of ``images`` by the teacher of
    ``checkpoint``, the images shared among the ranks, and its memory bank's features; None on
    ranks other than 0. ``stages`` gets "load" and "score" (only rank 0's copy is kept)."""
    from fastal.select.scoring import score_pool_sharded
    from fastal.train import Trainer

    with measured(stages, "load"):
        trainer = Trainer.load(checkpoint, setup.device, num_classes=setup.train.num_classes)
    with measured(stages, "score"):
        scores = score_pool_sharded(trainer.teacher, setup.train, setup.cache, images, setup.device,
                                    amp=setup.cfg.amp, region_entropy=setup.cfg.region_entropy)
    return None if scores is None else (scores, trainer.bank.features())


def _new_trainer(setup: Setup, seed: int) -> Any:
    from fastal.train import TrainConfig, Trainer

    return Trainer(TrainConfig.from_run(setup.cfg, seed), setup.train.num_classes, setup.device)


def _evaluate(setup: Setup, trainer: Any) -> dict[str, Any]:
    from fastal.train import evaluate

    m = evaluate(trainer.teacher, setup.val, setup.train.num_classes, setup.device, amp=setup.cfg.amp)
    # A class absent from truth and prediction has no IoU: null in JSON, not NaN.
    return {"miou": float(m["miou"]),
            "per_class_iou": [None if math.isnan(x) else float(x) for x in m["per_class_iou"]]}


# ---- phases -------------------------------------------------------------------------------------
def full_reference(run: RunDir) -> None:
    """Train on every pixel once (or take the shared reference); its mIoU is the line the curve aims at."""
    cfg = run.cfg
    if not cfg.full_reference or (run.dir / FULL).exists():
        return
    console.rule("fully supervised reference")
    train = lambda: _train_reference(run)  # noqa: E731
    ref = train() if cfg.full_shared is None else shared_reference(Path(cfg.full_shared), run.setup, train)
    atomic_write_json(run.dir / FULL, ref)
    run.reference_partial().unlink(missing_ok=True)


def _train_reference(run: RunDir) -> dict[str, Any]:
    """Train the reference (every rank of the run, :func:`train_reference`) and say where."""
    return {**collective(train_reference, run.setup, str(run.reference_partial())), "run": str(run.dir)}


def train_reference(setup: Setup, partial: str) -> dict[str, Any]:
    """(Collective.) Train the reference, saving the trainer after every epoch: a killed reference
    (a lost sweep worker) goes on from its last finished epoch, to the same model (the trainer's RNG
    states and the (seed, epoch) batch order are in the checkpoint)."""
    from fastal.train import Trainer

    seed = seed_everything(setup.cfg.seed, 0, PHASE_TRAIN)
    if Path(partial).exists():
        trainer = Trainer.load(partial, setup.device, num_classes=setup.train.num_classes)
        console.print(f"reference: going on after epoch {trainer.epoch} ({partial})")
    else:
        trainer = _new_trainer(setup, seed)
    trainer.fit(setup.train, setup.cfg.reference_epochs() - trainer.epoch, progress=True, checkpoint=partial)
    seconds = trainer.train_seconds
    seed_everything(setup.cfg.seed, 0, PHASE_EVAL)
    m = _evaluate(setup, trainer)
    console.print(f"fully supervised mIoU {m['miou']:.4f} ({seconds:.1f} s)")
    return {"miou": m["miou"], "per_class_iou": m["per_class_iou"], "train_seconds": round(seconds, 3),
            "trained_with": reference_key(setup)}  # fmt: skip


def select_phase(run: RunDir, cycle: int) -> None:
    """Choose cycle ``cycle``'s superpixels, ask the oracle, commit to queries.jsonl + pool.npz."""
    from fastal.oracle import SimulatedOracle
    from fastal.pool import random_initial

    cfg, pool, stages = run.cfg, run.pool, {}
    seed = seed_everything(cfg.seed, cycle, PHASE_SELECT)
    t0 = time.perf_counter()
    if cycle == 1:  # the pool's RNG is seeded with this phase's seed (RunDir)
        with measured(stages, "select"):
            ids, ranking = np.sort(random_initial(pool, cfg.schedule()[0] / 100)), None
    else:
        missing = cfg.schedule()[cycle - 1] / 100 * pool.total_pixels - pool.labelled_pixels
        ranking = rank_unlabelled(run.setup, run.ckpt(cycle - 1), pool.labelled_mask, seed, pixels=missing,
                                  stages=stages)
        ids, sel = ranking.ids, ranking.selection
        for stage, stage_seconds in sel.timings.items():  # per stage, for the run's TensorBoard log
            run.set_timing(cycle, f"stage_{stage}", stage_seconds)
        if sel.k is not None:  # before the commit: a resumed run finds it with the cycle's labels
            stats = {"k": sel.k, "clusters_kept": sel.clusters_kept(), "kmeans_fits": sel.kmeans_fits}
            atomic_write_json(run.dir / CLUSTERS, {**(run.read_json(CLUSTERS) or {}), str(cycle): stats})
    seconds = time.perf_counter() - t0
    oracle = SimulatedOracle(run.setup.train, run.setup.cache, mode=cfg.labels)
    with measured(stages, "oracle"):
        answer = oracle.query(ids)
    if ranking is not None:
        with measured(stages, "write"):  # the selection table and the embedding plot
            _write_selection(run, cycle, ranking, answer.classes, oracle)
    with measured(stages, "commit"):  # queries.jsonl and pool.npz
        run.commit(answer, cycle)
    run.set_timing(cycle, "select_seconds", seconds, stages)


def _write_selection(run: RunDir, cycle: int, ranking: Ranking, classes: np.ndarray, oracle: Any) -> None:
    """``selection/cycle-K.parquet`` (and, when the run asks, ``embedding-cycle-K.png``) unless the
    run says ``selection_table = "none"``; before the pool commit: a cycle redone after a kill
    rewrites the same table."""
    from fastal.run_report import embedding_sample, plot_embedding
    from fastal.select.selection_table import cycle_table_path, write_table

    table = ranking.table(run.setup.cache, classes, run.cfg.selection_table)
    if table is None:  # selection_table = "none"
        return
    path = cycle_table_path(run.dir, cycle)
    write_table(table, path)
    seed = phase_seed(run.cfg.seed, cycle, PHASE_SELECT)
    sample = embedding_sample(table, seed=seed) if run.cfg.selection_plot else None
    if sample is not None:  # None: the strategy has no embedding
        # Colours from the ground truth of the drawn regions (a simulation can look; the table cannot):
        # the picks' is in the table already, the others' is read from their few images.
        truth = sample["class"].to_numpy().copy()
        others = sample["rank"].to_numpy() < 0
        truth[others] = oracle.query(sample["superpixel"].to_numpy()[others]).classes
        plot_embedding(sample, truth, run.setup.train.classes, path.with_name(f"embedding-cycle-{cycle}.png"),
                       title=f"cycle {cycle}: {run.cfg.strategy}")
    crash_point(f"table:{cycle}")


def train_phase(run: RunDir, cycle: int) -> None:
    """Train on the labelled pixels (from checkpoint ``cycle - 1`` or anew); commit the checkpoint."""
    t0, stages = time.perf_counter(), {}
    with measured(stages, "train"):
        trainer, history = collective(train_cycle, run.setup, str(run.dir), cycle)
    seconds = time.perf_counter() - t0
    # Before the checkpoint: a cycle whose checkpoint exists has its epochs recorded (a redo rewrites them).
    epochs = epoch_records(history, trainer.optimizer.param_groups[0]["lr"])
    atomic_write_json(run.dir / EPOCHS, {**(run.read_json(EPOCHS) or {}), str(cycle): epochs})
    crash_point(f"trained:{cycle}")
    trainer.save(run.ckpt(cycle))  # atomic
    crash_point(f"ckpt:{cycle}")
    run.set_timing(cycle, "train_seconds", seconds, stages)
    run.set_timing(cycle, "world_size", distributed.world_size())  # not a time: what a resume may change too


def train_cycle(setup: Setup, run_dir: str, cycle: int) -> tuple[Any, list[dict[str, float]]]:
    """(Collective.) Cycle ``cycle``'s trainer, trained on the labelled pixels of the committed
    pool.npz of ``run_dir`` (from checkpoint ``cycle - 1`` or anew), and its epochs' records;
    rank 0 saves it."""
    from fastal.pool import LabelledSamples, RegionPool
    from fastal.train import Trainer

    cfg = setup.cfg
    seed = seed_everything(cfg.seed, cycle, PHASE_TRAIN)
    if cycle > 1 and cfg.retrain == "finetune":
        trainer = Trainer.load(checkpoint_path(run_dir, cycle - 1), setup.device)
        if cfg.bank_lifetime == "cycle":
            # The bank checkpoint K-1 holds served cycle K's selection; cycle K trains with a new one.
            trainer.bank.clear()
    else:
        trainer = _new_trainer(setup, seed)
    pool = RegionPool.load(Path(run_dir) / POOL, offsets=setup.cache.offsets, sizes=setup.cache.sizes)
    truth = functools.partial(labels_of, setup, run_dir)
    return trainer, trainer.fit(LabelledSamples(setup.train, setup.cache, pool, truth), cfg.epochs, progress=True)


def evaluate_phase(run: RunDir, cycle: int) -> dict[str, Any]:
    """Evaluate checkpoint ``cycle`` on the validation split; commit results.json and curve.png."""
    from fastal.run_report import curve_for_results

    cfg, pool = run.cfg, run.pool
    t = run.timings.get(str(cycle), {})
    stages = dict(t.get("stages", {}))
    with measured(stages, "evaluate"):
        m = collective(evaluate_checkpoint, run.setup, str(run.ckpt(cycle)), cycle)
    labelled = pool.labelled_through(cycle)  # a later import may exist
    clusters = (run.read_json(CLUSTERS) or {}).get(str(cycle), {})
    sched = cfg.schedule()
    rec = {
        "cycle": cycle,
        "budget_pct": sched[cycle - 1] if cycle <= len(sched) else None,  # null: a cycle people added
        "labelled_superpixels": int(labelled.sum()),
        "labelled_pixel_fraction": float(pool.sizes[labelled].sum() / pool.total_pixels),
        "cost_clicks": int(pool.clicks[labelled].sum()),
        # The selection's final KMeans fit (null for other strategies and cycle 1).
        "k": clusters.get("k"),
        "clusters_kept": clusters.get("clusters_kept"),
        "kmeans_fits": clusters.get("kmeans_fits"),
        "miou": m["miou"],
        "per_class_iou": m["per_class_iou"],
        "world_size": t.get("world_size", 1),  # processes that trained the cycle's model
        "train_seconds": t.get("train_seconds"),
        "select_seconds": t.get("select_seconds"),
        # Per stage of the cycle, seconds and this process's peak resident memory (fastal.stages);
        # a stage redone after a kill reports its last run.
        "stages": stages,
        "peak_rss_gb": overall_peak_gb(stages),
        "machine": machine_info(),  # this process's: a run resumed elsewhere records each machine's cycles
    }
    full = run.read_json(FULL)
    run.results["full_miou"] = None if full is None else full["miou"]
    run.results["cycles"].append(rec)
    run.results["stopped"] = _stop_reason(run, cycle, m["miou"])
    atomic_write_json(run.dir / RESULTS, run.results)
    curve_for_results(run.results, run.dir / CURVE)
    if cfg.log == "tensorboard":
        write_tensorboard(run.dir, to_dict(cfg))
    if not cfg.keep_checkpoints and cycle > 1:
        run.ckpt(cycle - 1).unlink(missing_ok=True)
    return rec


def evaluate_checkpoint(setup: Setup, checkpoint: str, cycle: int) -> dict[str, Any]:
    """(Collective.) mIoU and per-class IoU of checkpoint ``checkpoint`` (cycle ``cycle``'s) on the
    validation split, shared among the ranks."""
    from fastal.train import Trainer

    seed_everything(setup.cfg.seed, cycle, PHASE_EVAL)
    return _evaluate(setup, Trainer.load(checkpoint, setup.device))


def _stop_reason(run: RunDir, cycle: int, miou: float) -> str | None:
    full, target = run.results["full_miou"], run.cfg.target_ratio
    if target is not None and full is not None and miou >= target * full:
        return "target"
    if cycle >= run.setup.last_cycle or run.pool.num_labelled == run.pool.num_superpixels:
        return "budget"
    return None


def run_experiment(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False,
                   setup: Setup | None = None, accept_config_change: bool = False,
                   stop_after: int | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) the experiment in ``run_dir``; returns results.json's dict.

    A new run validates everything (config, data, budget against the pool) before the
    directory is created; a resumed run takes its configuration from ``run_dir/config.toml``
    (``cfg`` is then ignored), refused when it differs from the run's creation unless
    ``accept_config_change`` (the change is recorded in results.json). ``setup`` reuses data
    already prepared for ``cfg``. ``stop_after``: return once that cycle is evaluated, leaving the
    run as a kill there would (a sweep's shared first cycle; a resume goes on from it). The
    process is the run directory's one writer while this runs: another gets
    :class:`fastal.errors.RunDirLocked` before anything is touched.
    """
    if distributed.rank() > 0:  # one of several processes (torchrun): rank 0 runs the experiment
        follow()
        return {}
    with leading():
        return _run_or_resume(cfg, Path(run_dir), resume, setup, accept_config_change, stop_after)


def _run_or_resume(cfg: RunConfig | None, run_dir: Path, resume: bool, setup: Setup | None,
                   accept_config_change: bool, stop_after: int | None) -> dict[str, Any]:
    if resume:
        open_run(run_dir)  # a run directory, before its lock file is made in it
        with run_lock(run_dir):
            cfg, changes = checked_config(run_dir, accept_config_change)
            check_backend(cfg.log)
            setup = setup or prepare(cfg)
            check_world(setup)
            return _run(run_dir, setup, changes, stop_after)
    setup = new_run_dir(cfg, run_dir, setup)
    with run_lock(run_dir):
        return _run(run_dir, setup, {}, stop_after)


def new_run_dir(cfg: RunConfig, run_dir: Path, setup: Setup | None = None, world: int | None = None,
                first: Path | None = None) -> Setup:
    """Check everything a new run can be checked for (config, data, budget against the pool, the
    shared reference, ``world`` processes: default, this job's), then create its directory (from
    the first cycle in ``first``: :func:`fastal.rundir.create_run_dir`); returns the prepared data.
    FastalError with nothing written when a check fails."""
    check_new_run_dir(run_dir)  # before the data is prepared: that can take minutes
    check_backend(cfg.log)
    shared = Path(cfg.full_shared) if cfg.full_reference and cfg.full_shared else None
    if shared is not None:
        check_writable(shared)  # read there, or written there (and its lock beside it)
    setup = setup or prepare(cfg)
    check_world(setup, world)
    if shared is not None and shared.exists():
        check_reference(shared, setup)  # refused before the run directory exists
    check_before_training(setup)
    create_run_dir(cfg, run_dir, first)
    return setup


def _record_config_change(run: RunDir, changes: dict[str, list[Any]]) -> None:
    """An accepted change of config.toml: results.json's description of the run follows it (and
    says from which cycle on), a stop is decided again under it, and run.json holds it from now."""
    res = run.results
    fresh = run.empty_results()
    res.update({k: v for k, v in fresh.items() if k not in ("full_miou", "stopped", "cycles", "num_pixels")})
    res.setdefault("config_changes", []).append({"from_cycle": len(res["cycles"]) + 1, "changed": changes})
    if res["cycles"]:
        last = res["cycles"][-1]
        res["stopped"] = _stop_reason(run, last["cycle"], last["miou"])
    atomic_write_json(run.dir / RESULTS, res)
    accept_config(run.dir, run.cfg)
    console.print(f"config change accepted and recorded in {run.dir / RESULTS}: {', '.join(changes)}")


def _run(run_dir: Path, setup: Setup, changes: dict[str, list[Any]], stop_after: int | None) -> dict[str, Any]:
    """The cycles of the run in ``run_dir``, from where its files say it stands (lock held)."""
    import torch

    from fastal.run_report import curve_for_results, cycle_table

    if setup.device.type == "cpu":
        # Deterministic kernels where torch has them; a resumed run must redo a phase bit for bit.
        torch.use_deterministic_algorithms(True, warn_only=True)
    share_setup(setup.cfg)
    run = RunDir(setup, run_dir)
    run.results["setup"] = setup.stages  # this process's: written with the next cycle's results
    if changes:
        _record_config_change(run, changes)
    if run.results["cycles"]:
        curve_for_results(run.results, run_dir / CURVE)  # a kill may have come between results and curve
        if run.cfg.log == "tensorboard":  # ... or between results and its TensorBoard log
            write_tensorboard(run_dir, to_dict(run.cfg))
    full_reference(run)
    cycle = len(run.results["cycles"]) + 1
    while stop_after is None or cycle <= stop_after:
        if run.pool.current_cycle < cycle:
            # A stopped run still trains on what `fastal label import` added after it stopped.
            if run.results["stopped"]:
                break
            console.rule(f"cycle {cycle}")
            select_phase(run, cycle)
        else:
            console.rule(f"cycle {cycle}")
        if not run.ckpt(cycle).exists():
            train_phase(run, cycle)
        evaluate_phase(run, cycle)
        print_table(cycle_table(run.results))
        cycle += 1
    console.print(f"run directory: {run_dir} (results.json, curve.png)")
    return run.results
