"""Probes of signal: does the contrastive part of the method (projection head, memory bank, UMAP
fitted on the bank) carry class information that entropy sampling lacks?

    python experiments/probe_selection.py RUN_DIR [--cycles latest|all|1,3] [--name NAME]
    python experiments/probe_selection.py --checkpoint CKPT --dataset synthetic [--budget-pct 2]
    python experiments/probe_selection.py --checkpoint CKPT --config configs/al_camvid_cpu.toml --data-root DIR

For each checkpoint (cycle K of a run: its teacher, its bank, the labelled set of cycles 1..K;
or a bare checkpoint on a dataset, nothing labelled), on the unlabelled pool:

(a) overlap: the ids that ``contrastive``, ``entropy`` and ``kmeans-entropy`` choose for the next
    cycle's pixel budget, through the loop's own path (:func:`fastal.loop.rank_unlabelled`, seeded
    as the loop seeds cycle K+1), and the Jaccard index of every pair. ``matches_run``: whether the
    run's own strategy reproduced the ids the run queried in cycle K+1.
(b) class structure of four per-region representations of the unlabelled regions, against each
    region's dominant ground-truth class (the simulated oracle in dominant mode; regions that are
    all ignore are left out): ``umap`` = the region features embedded by a UMAP fitted on the bank
    (as ``contrastive`` does); ``raw`` = the 128-D region means of the teacher's projection;
    ``fresh_head`` = the same with a newly initialised projection head on the teacher's trunk;
    ``softmax`` = the region mean of the teacher's softmax. Per representation: purity and NMI of
    KMeans (the method's engine, k = the budget in regions) and their values with the classes
    shuffled (chance level); ``knn_bank`` = accuracy of a 15-NN classifier fitted on the bank's
    rows (pixel features, labelled by their queue's class) in that representation (raw: as
    stored; umap: the bank placed by the same UMAP transform; not defined for fresh_head and
    softmax, the bank holds only the trained head's features); ``knn_labelled`` = accuracy of a
    15-NN classifier fitted on the labelled regions (dominant classes) in that representation.
    Both are evaluated on the unlabelled regions' dominant classes; ``majority`` is the accuracy
    of always answering the most frequent class.
(c) per class: bank entries and their age in bank pushes (one per training step) at the
    checkpoint; InfoNCE anchors per batch, counted by the training step itself
    (``Trainer.train_step``'s ``anchors_per_class``) over ``--anchor-batches`` steps replayed on a
    copy of the checkpoint with the labelled set of cycle K (nothing is saved); labelled and
    unlabelled regions per dominant class and each strategy's picks per class.

Prints a rich table per checkpoint and writes benchmarks/results/probe_<name>.json (machine and
command recorded).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("contrastive", "entropy", "kmeans-entropy")
REPRESENTATIONS = ("umap", "raw", "fresh_head", "softmax")
NEIGHBOURS = 15
SHUFFLES = 5  # class permutations averaged for the chance level of purity and NMI


class Representations(torch.nn.Module):
    """``(logits, [trained emb | fresh-head emb | softmax])``: one :func:`score_pool` pass pools
    all three per-pixel maps per region with the same kernels (bilinear upsampling, region mean)."""

    def __init__(self, teacher: torch.nn.Module, fresh: torch.nn.Module) -> None:
        super().__init__()
        self.teacher, self.fresh = teacher, fresh

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, emb = self.teacher(x)  # (B, C, h, w), (B, D, h, w)
        _, fresh = self.fresh(x)  # (B, D, h, w)
        return logits, torch.cat([emb.float(), fresh.float(), torch.softmax(logits.float(), 1)], 1)


def fresh_head_model(teacher: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``teacher`` (same trunk and classifier weights) with a newly initialised projection head."""
    from fastal.model.network import ProjectionHead

    fresh = copy.deepcopy(teacher)
    torch.manual_seed(seed)
    head = ProjectionHead(teacher.projector[0].in_channels, teacher.projector[-1].out_channels)
    fresh.projector = head.to(next(teacher.parameters()).device)
    return fresh.eval()


def pool_at(pool: Any, cycle: int) -> Any:
    """A copy of ``pool`` holding only what cycles 1..``cycle`` labelled."""
    from fastal.pool import RegionPool

    d = pool.state_dict()
    later = d["state"] > cycle
    d["order"] = d["order"][~later[d["order"]]]
    for name in ("state", "clicks", "noisy", "valid"):
        d[name][later] = 0
    d["classes"][later] = -1
    return RegionPool.from_state_dict(d)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b) if a | b else 1.0


def purity(classes: np.ndarray, clusters: np.ndarray) -> float:
    """Share of points in their cluster's most frequent class."""
    from sklearn.metrics.cluster import contingency_matrix

    return float(contingency_matrix(classes, clusters).max(0).sum() / classes.size)


def knn_accuracy(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> float | None:
    """Accuracy on (x_eval, y_eval) of a ``NEIGHBOURS``-NN classifier fitted on (x_fit, y_fit)."""
    from sklearn.neighbors import KNeighborsClassifier

    if y_fit.size == 0 or y_eval.size == 0:
        return None
    knn = KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, y_fit.size)).fit(x_fit, y_fit)
    return float(knn.score(x_eval, y_eval))


def structure(x: torch.Tensor, classes: np.ndarray, k: int, engine: str, seed: int) -> dict[str, float]:
    """Purity and NMI of KMeans (k clusters, the method's engine) of ``x`` against ``classes``
    (-1 = no class, clustered but not scored), and both with the classes shuffled."""
    from sklearn.metrics import normalized_mutual_info_score

    from fastal.select.engines import make_kmeans

    clusters = make_kmeans(engine, k, seed).fit_predict(x).cpu().numpy()
    keep = classes >= 0
    y, c = classes[keep], clusters[keep]
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(y) for _ in range(SHUFFLES)]
    return {
        "purity": purity(y, c),
        "nmi": float(normalized_mutual_info_score(y, c)),
        "purity_shuffled": float(np.mean([purity(s, c) for s in shuffled])),
        "nmi_shuffled": float(np.mean([normalized_mutual_info_score(s, c) for s in shuffled])),
    }


def anchors_per_batch(checkpoint: Path, setup: Any, samples: Any, batches: int) -> np.ndarray | None:
    """Mean InfoNCE anchors per class per training step over ``batches`` steps replayed from
    ``checkpoint`` on ``samples`` (a throwaway copy of the trainer; nothing is saved)."""
    from fastal.train import Trainer

    if len(samples) == 0 or batches < 1:
        return None
    trainer = Trainer.load(checkpoint, setup.device, num_classes=setup.train.num_classes)
    counts = []
    for images, labels in itertools.islice(itertools.cycle(trainer.loader(samples)), 4 * batches):
        out = trainer.train_step(images, labels)
        if out is not None:
            counts.append(out["anchors_per_class"])
        if len(counts) == batches:
            break
    return np.mean(counts, axis=0) if counts else None


def probe_checkpoint(setup: Any, checkpoint: Path, cycle: int, pool: Any, budget_pixels: float,
                     anchor_samples: Any, anchor_batches: int, run_next: np.ndarray | None) -> dict[str, Any]:
    """Probes (a), (b), (c) of one checkpoint; ``pool`` holds the labelled set of cycles 1..``cycle``
    (None: nothing labelled); ``run_next`` the ids the run queried in cycle ``cycle + 1``, if any."""
    from fastal.loop import rank_unlabelled, seed_everything
    from fastal.machine import portable_path
    from fastal.oracle import SimulatedOracle
    from fastal.run_setup import PHASE_SELECT
    from fastal.select import score_pool
    from fastal.select.engines import make_umap, resolve_engine
    from fastal.train import Trainer

    t0 = time.perf_counter()
    cfg, cache, C = setup.cfg, setup.cache, setup.train.num_classes
    sizes = np.asarray(cache.sizes, dtype=np.int64)
    labelled = np.zeros(sizes.size, bool) if pool is None else pool.labelled_mask
    # The loop's first request at this budget: regions at the unlabelled pool's mean size.
    k = int(np.clip(round(budget_pixels / sizes[~labelled].mean()), 1, int((~labelled).sum())))

    # (a) the loop's own path, seeded as the loop seeds the selection of cycle + 1.
    chosen = {}
    for s in STRATEGIES:
        seed = seed_everything(cfg.seed, cycle + 1, PHASE_SELECT)
        st_setup = dataclasses.replace(setup, cfg=dataclasses.replace(cfg, strategy=s))
        chosen[s] = rank_unlabelled(st_setup, checkpoint, labelled, seed, pixels=budget_pixels).ids
    overlap = {
        "regions": {s: int(ids.size) for s, ids in chosen.items()},
        "pixels": {s: int(sizes[ids].sum()) for s, ids in chosen.items()},
        "jaccard": {f"{a} | {b}": jaccard(chosen[a], chosen[b]) for a, b in itertools.combinations(STRATEGIES, 2)},
        "matches_run": None if run_next is None or cfg.strategy not in chosen
        else bool(np.array_equal(np.sort(chosen[cfg.strategy]), np.sort(run_next))),
    }

    # (b) every representation of every scored region, from one pass over the pool.
    trainer = Trainer.load(checkpoint, setup.device, num_classes=C)
    teacher = trainer.teacher.eval()
    images = np.unique(cache.image_of(np.flatnonzero(~labelled)))
    model = Representations(teacher, fresh_head_model(teacher, cfg.seed)).eval()
    scores = score_pool(model, setup.train, cache, images, setup.device, amp=cfg.amp, show_progress=False)
    D = teacher.projector[-1].out_channels
    feats = {"raw": scores.features[:, :D], "fresh_head": scores.features[:, D : 2 * D],
             "softmax": scores.features[:, 2 * D :]}  # fmt: skip
    engine = resolve_engine(cfg.engine, setup.device)
    bank_x, bank_y = trainer.bank.features(), trainer.bank.labels().cpu().numpy()
    reducer = make_umap(engine, cfg.umap_params()).fit(bank_x)  # the run's, as its selection uses
    feats["umap"] = reducer.transform(feats["raw"])
    bank_in = {"raw": bank_x, "umap": reducer.transform(bank_x)}
    classes = SimulatedOracle(setup.train, cache, mode="dominant").query(scores.gids).classes.astype(np.int64)
    is_lab = labelled[scores.gids]
    free, lab = ~is_lab, is_lab & (classes >= 0)
    scored = free & (classes >= 0)
    y_eval, y_lab = classes[scored], classes[lab]
    rep = {}
    for name in REPRESENTATIONS:
        x = feats[name]
        row = structure(x[torch.from_numpy(np.flatnonzero(free)).to(x.device)], classes[free], k, engine, cfg.seed)
        xn = x.cpu().numpy()
        row["knn_bank"] = (knn_accuracy(bank_in[name].cpu().numpy(), bank_y, xn[scored], y_eval)
                           if name in bank_in else None)  # fmt: skip
        row["knn_labelled"] = knn_accuracy(xn[lab], y_lab, xn[scored], y_eval)
        row["dims"] = int(x.shape[1])
        rep[name] = row
    majority = float(np.bincount(y_eval).max() / y_eval.size) if y_eval.size else None

    # (c) per class.
    bank = trainer.bank
    ages, age_cls = bank.ages().cpu().numpy(), bank.labels().cpu().numpy()
    anchors = anchors_per_batch(checkpoint, setup, anchor_samples, anchor_batches) if anchor_samples else None
    pick_cls = {s: classes[np.searchsorted(scores.gids, ids)] for s, ids in chosen.items()}
    per_class = []
    for c in range(C):
        a = ages[(age_cls == c) & (ages >= 0)]
        per_class.append({
            "class": setup.train.classes[c],
            "bank_entries": int(bank.count[c]),
            "age_mean": float(a.mean()) if a.size else None,
            "age_max": int(a.max()) if a.size else None,
            "anchors_per_batch": None if anchors is None else float(anchors[c]),
            "labelled_regions": int((classes[lab] == c).sum()),
            "unlabelled_regions": int((classes[scored] == c).sum()),
            **{f"picked_{s}": int((pick_cls[s] == c).sum()) for s in STRATEGIES},
        })  # fmt: skip
    return {
        "checkpoint": portable_path(checkpoint),
        "cycle": cycle,
        "train_steps": trainer.step,
        "bank_pushes": bank.pushes,
        "labelled_regions": int(labelled.sum()),
        "labelled_pixel_fraction": float(sizes[labelled].sum() / sizes.sum()),
        "budget": {"pixels": float(budget_pixels), "pct": float(100 * budget_pixels / sizes.sum()), "k": k},
        "unlabelled_regions": int(free.sum()),
        "scored_regions": int(scored.sum()),
        "engine": engine,
        "umap": dataclasses.asdict(cfg.umap_params()),
        "overlap": overlap,
        "majority": majority,
        "representations": rep,
        "classes": per_class,
        "anchor_batches": anchor_batches if anchors is not None else 0,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def print_tables(r: dict[str, Any]) -> None:
    from rich.table import Table

    from fastal.progress import console

    ov = r["overlap"]
    title = (f"cycle {r['cycle']}: {r['labelled_pixel_fraction']:.1%} labelled, next budget "
             f"{r['budget']['pct']:.2f} % = {r['budget']['k']} regions; Jaccard "
             + ", ".join(f"{p} {v:.2f}" for p, v in ov["jaccard"].items()))  # fmt: skip
    t = Table(title=title)
    for col in ("representation", "dims", "purity", "(shuffled)", "NMI", "(shuffled)", "15-NN bank",
                "15-NN labelled"):  # fmt: skip
        t.add_column(col, justify="right")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, row in r["representations"].items():
        t.add_row(name, str(row["dims"]), f(row["purity"]), f(row["purity_shuffled"]), f(row["nmi"]),
                  f(row["nmi_shuffled"]), f(row["knn_bank"]), f(row["knn_labelled"]))  # fmt: skip
    t.caption = (f"majority-class accuracy {f(r['majority'])}; {r['scored_regions']} unlabelled regions scored; "
                 f"regions picked {ov['regions']}; run's picks reproduced: {ov['matches_run']}")  # fmt: skip
    console.print(t)
    t = Table(title=f"cycle {r['cycle']}: per class (bank after {r['bank_pushes']} pushes)")
    cols = ("class", "bank", "age mean", "age max", "anchors/batch", "labelled", "unlabelled",
            *(f"picked {s}" for s in STRATEGIES))  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    for c in r["classes"]:
        t.add_row(c["class"], str(c["bank_entries"]), "-" if c["age_mean"] is None else f"{c['age_mean']:.0f}",
                  "-" if c["age_max"] is None else str(c["age_max"]),
                  "-" if c["anchors_per_batch"] is None else f"{c['anchors_per_batch']:.1f}",
                  str(c["labelled_regions"]), str(c["unlabelled_regions"]),
                  *(str(c[f"picked_{s}"]) for s in STRATEGIES))  # fmt: skip
    console.print(t)


def probe_run(run_dir: Path, cycles: str, anchor_batches: int, budget_pct: float | None) -> list[dict[str, Any]]:
    """Probe checkpoints of a run directory: ``cycles`` = ``latest``, ``all`` (every kept one) or ``1,3``."""
    from fastal.errors import FastalError
    from fastal.pool import LabelledSamples
    from fastal.run_setup import prepare
    from fastal.rundir import RunDir, open_run

    cfg = open_run(run_dir)
    setup = prepare(cfg)
    run = RunDir(setup, run_dir)
    latest = len(run.results["cycles"])  # the last evaluated cycle (a later one may be selected already)
    if latest == 0:
        raise FastalError(f"{run_dir}: no cycle trained and evaluated yet")
    if cycles == "latest":
        wanted = [latest]
    elif cycles == "all":
        wanted = [c for c in range(1, latest + 1) if run.ckpt(c).exists()]
    else:
        wanted = [int(c) for c in cycles.split(",")]
    sched, total = cfg.schedule(), run.pool.total_pixels
    out = []
    for cycle in wanted:
        if not run.ckpt(cycle).exists():
            raise FastalError(f"{run.ckpt(cycle)}: not there (keep_checkpoints = true keeps every cycle's)")
        pool = pool_at(run.pool, cycle)
        if budget_pct is not None:
            target = pool.labelled_pixels + budget_pct / 100 * total
        else:  # the next cycle's target, or one more step of the schedule's last size
            nxt = sched[cycle] if cycle < len(sched) else sched[-1] + (sched[-1] - sched[-2] if len(sched) > 1 else 1.0)
            target = nxt / 100 * total
        nxt_ids = np.flatnonzero(run.pool.state == cycle + 1)
        samples = LabelledSamples(setup.train, setup.cache, pool, run.truth)
        out.append(probe_checkpoint(setup, run.ckpt(cycle), cycle, pool, target - pool.labelled_pixels,
                                    samples, anchor_batches, nxt_ids if nxt_ids.size else None))  # fmt: skip
        print_tables(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    from fastal.config import load_config
    from fastal.errors import FastalError
    from fastal.machine import command_line, machine_info, portable_path
    from fastal.run_setup import prepare

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=Path, help="run directory (its config, pool and checkpoints)")
    p.add_argument("--cycles", default="latest", help="latest | all | comma-separated cycles (run directory)")
    p.add_argument("--checkpoint", type=Path, help="trainer checkpoint, without a run directory")
    p.add_argument("--dataset", help="dataset of --checkpoint")
    p.add_argument("--config", type=Path, help="run configuration for --checkpoint (scale, superpixels, ...)")
    p.add_argument("--data-root")
    p.add_argument("--superpixels", type=int)
    p.add_argument("--budget-pct", type=float,
                   help="pixels to select, %% of the pool (default: the schedule's next step)")
    p.add_argument("--anchor-batches", type=int, default=8, help="training steps replayed to count anchors")
    p.add_argument("--name", help="JSON name: benchmarks/results/probe_<name>.json (default: the run's name)")
    p.add_argument("--json", type=Path, help="JSON path (overrides --name)")
    args = p.parse_args(argv)
    try:
        t0 = time.perf_counter()
        if args.run is not None:
            probes = probe_run(args.run, args.cycles, args.anchor_batches, args.budget_pct)
            name = args.name or args.run.name
        else:
            if args.checkpoint is None or (args.dataset is None and args.config is None):
                raise FastalError("give RUN_DIR, or --checkpoint CKPT with --dataset or --config")
            overrides = {"dataset": args.dataset, "data_root": args.data_root, "superpixels": args.superpixels}
            setup = prepare(load_config(args.config, {k: v for k, v in overrides.items() if v is not None}))
            pct = 2.0 if args.budget_pct is None else args.budget_pct
            pixels = pct / 100 * float(np.asarray(setup.cache.sizes).sum())
            probes = [probe_checkpoint(setup, args.checkpoint, 0, None, pixels, None, 0, None)]
            print_tables(probes[0])
            name = args.name or args.checkpoint.stem
        path = args.json or RESULTS / f"probe_{name}.json"
        from fastal.atomic import atomic_write_json

        atomic_write_json(path, {
            "command": command_line(["python", "experiments/probe_selection.py", *(sys.argv[1:] if argv is None else argv)]),
            "machine": machine_info(),
            "seconds": round(time.perf_counter() - t0, 1),
            "run": None if args.run is None else portable_path(args.run),
            "definitions": "\n\n".join(__doc__.split("\n\n")[2:4]),
            "probes": probes,
        })  # fmt: skip
        print(f"wrote {path}")
    except FastalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
