"""The write stage of one cycle at Cityscapes' pool size (issue 29): the selection table, the
embedding plot, the queries.jsonl lines and the pool.npz commit, as the loop writes them.

A synthetic scored pool of ``--rows`` superpixels (images of 2,048 regions; 128 float32 features,
entropy, margin and the prediction columns ``score_pool`` gives), cycle 1's random 1 % committed,
then cycle 2's picks (1 % of the rows) from two Selections as strategies give them: one as
``contrastive`` (a 2-D embedding and a KMeans cluster for every candidate) and one of a strategy
with a score of its own and no embedding. For each, the loop's own code runs unchanged:
``fastal.loop._write_selection`` (measured as the loop measures "write") and ``RunDir.commit``
("commit"), with ``selection_table = "all"`` and ``selection_plot = true``. Each function they call
(table, parquet, sample, plot, query lines, pool.npz) is wrapped in a :func:`fastal.stages.measured`
stage of its own, so every step reports its wall and CPU seconds and its peak resident memory:
``extra_gb`` above the resident size when the write began (the pool's rows and state,
``rss_before_gb``), ``step_gb`` above the size when the step began. The oracle is a lookup table of
classes: the real one reads a label image per touched image, a cost of the "oracle" stage and of
the plot's colours, not of memory.

    python benchmarks/bench_write_stage.py --rows 6100000 --out benchmarks/results/write_stage_6100k.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import matplotlib.pyplot  # noqa: F401  imported before the write: an import is not the write's cost
import numpy as np
import pandas  # noqa: F401
import pyarrow.parquet  # noqa: F401
import torch

import fastal.run_report
import fastal.select.selection_table
from fastal.atomic import atomic_write_json
from fastal.config import make_config
from fastal.loop import _write_selection
from fastal.machine import command_line, machine_info
from fastal.oracle import OracleAnswer
from fastal.pool import RegionPool
from fastal.run_setup import Setup
from fastal.rundir import RunDir, create_run_dir
from fastal.select.pixel_budget import Ranking
from fastal.select.scoring import PoolScores
from fastal.select.selection_table import SCHEMA
from fastal.select.strategies import Selection
from fastal.stages import measured, resident_bytes

PER_IMAGE, DIM, CLASSES = 2048, 128, 19
_GB = 1 << 30


def synthetic_scores(n: int, seed: int) -> PoolScores:
    """A scored pool of ``n`` rows with every column ``score_pool`` fills (random values)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731  float32, no float64 temporary
    predicted = torch.randint(0, CLASSES, (n,), generator=g)
    return PoolScores(features=torch.randn(n, DIM, generator=g), entropy=rand(n) * 4, margin=rand(n),
                      gids=np.arange(n, dtype=np.int64), pixels=rand(n) * 1000 + 500, predicted=predicted,
                      impurity=rand(n), mean_entropy=rand(n), ratio=rand(n), ratio_by_class=rand(n, CLASSES),
                      class_prob=torch.full((CLASSES,), 1 / CLASSES),
                      class_regions=torch.bincount(predicted, minlength=CLASSES).double() / n,
                      class_pixels=torch.full((CLASSES,), 1 / CLASSES, dtype=torch.float64))  # fmt: skip


def pool_bytes(scores: PoolScores) -> int:
    """The pool's rows as the scoring holds them: every per-row tensor and the ids."""
    per_row = [getattr(scores, name) for name in ("features", "entropy", "margin", "pixels", "predicted",
                                                  "impurity", "mean_entropy", "ratio", "ratio_by_class")]  # fmt: skip
    return sum(t.numel() * t.element_size() for t in per_row) + scores.gids.nbytes


def lookup_oracle(truth: np.ndarray, sizes: np.ndarray) -> SimpleNamespace:
    """An oracle answering from a class per superpixel (dominant mode, no label noise)."""

    def query(ids: np.ndarray) -> OracleAnswer:
        ids = np.asarray(ids, dtype=np.int64)
        pixels = sizes[ids]
        return OracleAnswer("dominant", ids, truth[ids], pixels, np.ones(ids.size, dtype=np.int64),
                            np.zeros(ids.size, dtype=np.int64), pixels.copy())  # fmt: skip

    return SimpleNamespace(query=query)


def selections(scores: PoolScores, labelled: np.ndarray, k: int, seed: int) -> dict[str, Selection]:
    """Cycle 2's Selection of ``k`` picks among the unlabelled rows, as ``contrastive`` gives it
    (embedding, clusters) and as a strategy with a score of its own gives it."""
    rng = np.random.default_rng(seed)
    free = np.flatnonzero(~labelled[scores.gids])
    rows = torch.from_numpy(free)
    pos = rng.choice(free.size, size=k, replace=False)
    ids = scores.gids[free[pos]]
    cluster = torch.from_numpy(rng.integers(0, k, size=free.size))
    embedding = torch.from_numpy(rng.random((free.size, 2), dtype=np.float32) * 20)
    return {
        "contrastive": Selection(ids=ids, k=k, clusters=cluster.numpy()[pos], rows=rows,
                                 fitted={"embedding": embedding, "cluster": cluster}),
        "score": Selection(ids=ids, rows=rows, fitted={"score": torch.from_numpy(rng.random(free.size, dtype=np.float32))}),
    }  # fmt: skip


@contextlib.contextmanager
def measured_from(stages: dict[str, Any], step: str) -> Iterator[None]:
    """:func:`fastal.stages.measured`, the resident size when the step began (``rss_start_gb``; its
    peak minus that is what the step itself added, ``step_gb``) and this process's CPU seconds
    (``cpu_seconds``: on a shared machine, less at the mercy of the other processes than wall time)."""
    start, cpu = resident_bytes() / _GB, time.process_time()
    with measured(stages, step):
        yield
    record = stages[step]
    record.update(rss_start_gb=round(start, 3), step_gb=round(record["peak_rss_gb"] - start, 3),
                  cpu_seconds=round(time.process_time() - cpu, 3))  # fmt: skip


@contextlib.contextmanager
def steps_measured(stages: dict[str, Any]) -> Iterator[None]:
    """Every function the loop's write and commit call, measured as a stage of its own."""
    targets = [(Ranking, "table", "table"), (fastal.select.selection_table, "write_table", "parquet"),
               (fastal.run_report, "embedding_sample", "sample"), (fastal.run_report, "plot_embedding", "plot"),
               (RunDir, "_query_lines", "queries_lines"), (RegionPool, "save", "pool_npz")]  # fmt: skip

    def wrapped(fn: Any, step: str) -> Any:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with measured_from(stages, step):
                return fn(*args, **kwargs)

        return call

    with contextlib.ExitStack() as stack:
        for owner, name, step in targets:
            stack.enter_context(mock.patch.object(owner, name, wrapped(getattr(owner, name), step)))
        yield


def in_child(fn: Any) -> Any:
    """``fn()`` in a forked child, its JSON-able result back through a pipe: each strategy's write
    starts from the same heap, so memory that one freed (and the allocator kept) hides nothing of
    the next one's."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the pool's pages are shared with the parent until written
        os.close(r)
        code = 1
        try:
            with os.fdopen(w, "w") as out:
                json.dump(fn(), out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the write of the child process {pid} failed (status {status})")
    return json.loads(text)


def write_cycle(root: Path, strategy: str, scores: PoolScores, sel: Selection, setup: Setup, initial: np.ndarray,
                oracle: SimpleNamespace) -> dict[str, Any]:
    """Cycle 1's random picks committed (not measured), then cycle 2's write and commit, measured."""
    run_dir = create_run_dir(setup.cfg, root / strategy)
    run = RunDir(setup, run_dir)
    run.commit(oracle.query(initial), 1)
    ranking = Ranking(sel, scores, [sel], [sel.ids])
    answer = oracle.query(sel.ids)
    stages: dict[str, Any] = {}
    before = resident_bytes()
    with steps_measured(stages):
        with measured_from(stages, "write"):  # as fastal.loop.select_phase
            _write_selection(run, 2, ranking, answer.classes, oracle)
        with measured_from(stages, "commit"):
            run.commit(answer, 2)
    for record in stages.values():  # above what the process held when the write began
        record["extra_gb"] = round(record["peak_rss_gb"] - before / _GB, 3)
    files = {p.name: p.stat().st_size for p in sorted(run_dir.rglob("*")) if p.is_file() and p.suffix != ".lock"}
    return {"rss_before_gb": round(before / _GB, 3), "stages": stages, "file_bytes": files}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=6_100_000, help="superpixels in the pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="where the run directories go (default: a temp dir)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    t0 = time.perf_counter()
    n, k = a.rows, a.rows // 100
    images = -(-n // PER_IMAGE)
    offsets = np.minimum(np.arange(images + 1, dtype=np.int64) * PER_IMAGE, n)
    rng = np.random.default_rng(a.seed)
    sizes = rng.integers(500, 1500, size=n, dtype=np.int64)
    truth = rng.integers(-1, CLASSES, size=n).astype(np.int16)
    scores = synthetic_scores(n, a.seed)
    cfg = make_config({"selection_table": "all", "selection_plot": True, "strategy": "contrastive",
                       "labels": "dominant", "seed": a.seed})  # as configs/cityscapes_scale.toml
    cache = SimpleNamespace(offsets=offsets, sizes=sizes, num_superpixels=n)
    train = SimpleNamespace(classes=[f"class{c}" for c in range(CLASSES)], image_id=lambda i: f"image{i:05d}")
    setup = Setup(cfg=cfg, train=train, val=None, cache=cache, device=torch.device("cpu"), initial_k=k, cycle_ks=[k])
    oracle = lookup_oracle(truth, sizes)
    initial = np.sort(rng.choice(n, size=k, replace=False))
    labelled = np.zeros(n, dtype=bool)
    labelled[initial] = True
    sels = selections(scores, labelled, k, a.seed)
    built = time.perf_counter() - t0
    results = {}
    with tempfile.TemporaryDirectory(dir=a.work) as root:
        for strategy, sel in sels.items():
            results[strategy] = in_child(functools.partial(write_cycle, Path(root), strategy, scores, sel, setup,
                                                           initial, oracle))  # fmt: skip
            print(strategy, results[strategy]["rss_before_gb"],
                  {s: (v["seconds"], v["cpu_seconds"], v["extra_gb"], v["step_gb"]) for s, v in results[strategy]["stages"].items()},
                  flush=True)  # fmt: skip
    table_rows = n - k
    summary = {
        "rows": n, "images": images, "picks": k, "table_rows": table_rows,
        "pool_rows_gb": round(pool_bytes(scores) / _GB, 3),
        "table_gb": round(table_rows * sum(torch.empty(0, dtype=d).element_size() for d in SCHEMA.values()) / _GB, 3),
        "build_seconds": round(built, 1),
        "strategies": results,
        "note": "per step: peak_rss_gb is the process's (the pool included), extra_gb that minus rss_before_gb (the "
                "resident size when the write began), step_gb that minus rss_start_gb (the resident size when the "
                "step began); each strategy's write in a forked child of the process that built the pool. The "
                "oracle is a class lookup (no label images read).",
        "command": command_line(["python", *sys.argv]),
        "machine": machine_info(),
    }  # fmt: skip
    atomic_write_json(a.out, summary)


if __name__ == "__main__":
    main()
