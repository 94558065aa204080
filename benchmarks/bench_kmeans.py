"""KMeans in high dimension on the CPU: group bounds against full scans and scikit-learn.

``kmeans-entropy`` clusters the 128-D region features; its pixel search fits KMeans 5-8 times a
cycle. This times one fit of each of: fastal's KMeans with Yinyang group bounds (the default),
the same with a full matmul scan per iteration (``bounds=False``: same seeds and updates, up to
float ties) and scikit-learn's KMeans (k-means++, one init, Lloyd), on saved features or on
synthetic unit-length 128-D features (a projection head's output is L2-normalised).

    python benchmarks/bench_kmeans.py --k 1000 5000                      # synthetic, 150k x 128
    python benchmarks/bench_kmeans.py --features feats.npy --note "what they are" --tag camvid
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_limits

from fastal.atomic import atomic_write_json
from fastal.machine import command_line, machine_info, portable_path
from fastal.select.kmeans.estimator import TorchKMeans


def synthetic(n: int, d: int, seed: int) -> np.ndarray:
    """Unit-length points around n / 100 directions (regions of a few hundred classes' parts)."""
    x, _ = make_blobs(n, d, centers=max(1, n // 100), cluster_std=1.0, center_box=(-2, 2), random_state=seed)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fit: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fit()
    return time.perf_counter() - t0, out


def measure(x: np.ndarray, k: int, seed: int, full: bool, sklearn: bool) -> list[dict[str, Any]]:
    xt = torch.from_numpy(x)
    rows = []
    cases = [("fastal, group bounds", True)] + ([("fastal, full scans", False)] if full else [])
    for name, bounds in cases:
        s, km = timed(lambda: TorchKMeans(k, random_state=seed, bounds=bounds).fit(xt))
        rows.append({"method": name, "k": k, "seconds": round(s, 2), "n_iter": km.n_iter_, "inertia": km.inertia_})
    if sklearn:
        s, km = timed(lambda: KMeans(k, n_init=1, algorithm="lloyd", random_state=seed).fit(x))
        rows.append({"method": "scikit-learn KMeans", "k": k, "seconds": round(s, 2), "n_iter": int(km.n_iter_),
                     "inertia": float(km.inertia_)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=Path, help="(N, D) float32 .npy (default: synthetic)")
    p.add_argument("--note", default="", help="where --features came from (kept in the JSON)")
    p.add_argument("--points", type=int, default=150_000, help="synthetic points")
    p.add_argument("--dims", type=int, default=128, help="synthetic dimensions")
    p.add_argument("--k", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch, numba and BLAS threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-full", action="store_true", help="no full-scan fit")
    p.add_argument("--skip-sklearn", action="store_true", help="no scikit-learn fit")
    p.add_argument("--tag", default="", help="results/kmeans_cpu[_TAG].json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    numba.set_num_threads(a.threads)
    x = np.load(a.features).astype(np.float32) if a.features else synthetic(a.points, a.dims, a.seed)
    load_at_start = os.getloadavg()
    rows = []
    with threadpool_limits(a.threads):
        TorchKMeans(8, max_iter=2).fit(torch.from_numpy(x[:2000]))  # numba's compilation out of the timings
        for k in a.k:
            rows += measure(x, k, a.seed, not a.skip_full, not a.skip_sklearn)
            Console().print(f"k = {k}: " + ", ".join(f"{r['method']} {r['seconds']} s" for r in rows if r["k"] == k))
    table = Table("k", "method", "seconds", "iterations", "inertia", title=f"KMeans, {x.shape[0]:,} x {x.shape[1]}")
    for r in rows:
        table.add_row(f"{r['k']:,}", r["method"], f"{r['seconds']:.1f}", str(r["n_iter"]), f"{r['inertia']:.6g}")
    Console().print(table)
    out = Path("benchmarks/results") / f"kmeans_cpu{'_' + a.tag if a.tag else ''}.json"
    atomic_write_json(out, {
        "benchmark": "kmeans_high_dimension",
        "command": command_line(["python", *sys.argv]),
        "data": {"features": portable_path(a.features) if a.features else "synthetic", "points": int(x.shape[0]),
                 "dims": int(x.shape[1]), "seed": a.seed, "note": a.note},
        "threads": a.threads,
        "machine": machine_info(),
        "load_average_at_start": load_at_start,  # the cores are shared: how much of them the run had
        "load_average_at_end": os.getloadavg(),
        "results": rows,
    })  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
