"""KMeans on a real 2-D UMAP embedding, at pool sizes beyond the run's: does a fit grow linearly?

The selection's KMeans clusters the UMAP embedding of the unlabelled regions with k a share of
them (``contrastive``: k = the picks, ~0.5 % of the regions at 1 % of the pixels), so a fit that
compares points with every centre grows as the pool squared. This reads the embedding of a run's
selection table (``x``, ``y`` of every candidate: ``selection_table = "all"``), replicates it r
times with a small jitter (a pool r times larger with the same density), and times one fit at
k = ``--share`` of the points for each r: CPU seconds at one thread, iterations, inertia.

    python benchmarks/bench_kmeans_embedding.py RUN/selection/cycle-2.parquet --replicate 1 2 4 8 --tag after
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import torch

from cityscapes_scale_table import exponent  # this folder: the scripts run from it
from fastal.atomic import atomic_write_json
from fastal.machine import command_line, machine_info, portable_path
from fastal.select.kmeans.estimator import TorchKMeans

RESULTS = Path(__file__).resolve().parent / "results"


def replicated(base: np.ndarray, r: int, jitter: float, seed: int) -> np.ndarray:
    """``base`` (N, 2) and r - 1 copies moved by Gaussian noise of scale ``jitter``: (r N, 2) float32."""
    rng = np.random.default_rng(seed)
    copies = [base] + [base + rng.normal(scale=jitter, size=base.shape) for _ in range(r - 1)]
    return np.concatenate(copies).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", type=Path, help="a selection table (parquet) with x, y")
    p.add_argument("--replicate", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--share", type=float, default=0.005, help="k as a share of the points")
    p.add_argument("--jitter", type=float, default=0.05, help="noise of the copies, in embedding units")
    p.add_argument("--tag", required=True, help="names the result: kmeans_embedding_<tag>.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    base = pd.read_parquet(a.table, columns=["x", "y"]).to_numpy(np.float32)
    base = base[~np.isnan(base).any(1)]
    TorchKMeans(50, random_state=0).fit(torch.from_numpy(base[:20_000]))  # compile outside the timing
    rows = []
    for r in a.replicate:
        x = torch.from_numpy(replicated(base, r, a.jitter, seed=r))
        k = max(1, round(a.share * len(x)))
        t0 = time.process_time()
        km = TorchKMeans(k, random_state=0).fit(x)
        rows.append({"points": len(x), "k": k, "cpu_seconds": round(time.process_time() - t0, 2),
                     "iterations": km.n_iter_, "inertia": km.inertia_})  # fmt: skip
        print(rows[-1], flush=True)
    slope = exponent([r["points"] for r in rows], [r["cpu_seconds"] for r in rows])
    atomic_write_json(RESULTS / f"kmeans_embedding_{a.tag}.json", {
        "table": portable_path(a.table), "base_points": len(base), "share": a.share, "jitter": a.jitter,
        "fits": rows, "exponent": slope, "command": command_line(["python", *sys.argv]),
        "machine": machine_info(),
    })  # fmt: skip
    print(f"exponent (log CPU s against log points): {slope:.2f}" if slope is not None else "")


if __name__ == "__main__":
    main()
