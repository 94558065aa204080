"""Selection throughput on CPU: contrastive on 250k superpixels (cold and warm), the umap-learn +
scikit-learn baseline on the same inputs, and a sweep of pool sizes.

    python benchmarks/bench_selection.py [--tag T] [--sweep 10000,30000,100000,300000,1000000] [--baseline-subsample 20000]

Writes benchmarks/results/selection_cpu[_T].json (summary) and one selection_cpu[_T]_<case>.json
per `fastal bench selection` run (a tag keeps earlier results). Each `fastal bench` run is its own process: "cold" pays numba
compilation (on-disk caches of our kernels may already exist; umap-learn compiles most of its
functions in every process), "warm" runs a 5k selection first and times the second call.
The baseline's UMAP transform is timed on a subsample and extrapolated linearly (umap-learn's
transform is linear in the number of new points at a fixed fitted model); KMeans runs on the
whole pool. The 1-minute load average before each case is recorded: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def fastal_bench(prefix: str, case: str, superpixels: int, warm: bool) -> dict:
    out = RESULTS / f"{prefix}_{case}.json"
    cmd = [sys.executable, "-m", "fastal", "bench", "selection", "--superpixels", str(superpixels),
           "--device", "cpu", "--engine", "torch", "--strategy", "contrastive", "--seed", "0",
           "--warm" if warm else "--no-warm", "--json", str(out)]  # fmt: skip
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    r = json.loads(out.read_text())
    r.update(load_1min_before=load, process_wall_seconds=wall)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"{case}: {superpixels:,} superpixels, {r['seconds']:.1f} s (load {load:.1f})", flush=True)
    return r


def baseline(superpixels: int, subsample: int) -> dict:
    """umap-learn fit + transform and scikit-learn KMeans(k = 1%) on the benchmark's inputs."""
    import numpy as np
    import torch
    import umap
    from sklearn.cluster import KMeans

    from fastal.testing import synthetic_selection_inputs
    from fastal.select.umap.params import UMAPParams, translate_umap_params
    from fastal.select.umap.estimator import TorchUMAP

    scores, bank, _ = synthetic_selection_inputs(superpixels, 128, 1000, 11, 0, torch.device("cpu"))
    x = scores.features.numpy()
    k = max(1, round(0.01 * superpixels))
    kw = translate_umap_params(UMAPParams(), "umap-learn")
    load = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap.UMAP(**kw).fit(bank.numpy())  # compile umap-learn's fit kernels (NNDescent path) outside the timing
        t0 = time.perf_counter()
        model = umap.UMAP(**kw).fit(bank.numpy())
        fit = time.perf_counter() - t0
        model.transform(x[:500])  # compile umap-learn's transform kernels outside the timing
        # Its epoch count depends on the batch size (100 up to 10,000 points, else 30): keep > 10,000.
        n_sub = max(10_001, min(subsample, superpixels))
        t0 = time.perf_counter()
        model.transform(x[:n_sub])
        sub = time.perf_counter() - t0
    transform = sub * superpixels / n_sub
    # KMeans input: the pool embedded by our transform (same shape and spread as umap-learn's).
    emb = TorchUMAP(UMAPParams()).fit(bank).transform(scores.features).numpy()
    t0 = time.perf_counter()
    KMeans(n_clusters=k, n_init=1, random_state=0).fit(emb.astype(np.float64))
    kmeans = time.perf_counter() - t0
    total = fit + transform + kmeans
    print(f"baseline: fit {fit:.1f} s, transform {transform:.1f} s (from {n_sub:,}), KMeans {kmeans:.1f} s", flush=True)
    return {
        "superpixels": superpixels, "budget": k, "load_1min_before": load,
        "stages": {"umap_fit": fit, "umap_transform": transform, "kmeans": kmeans},
        "seconds": total,
        "umap_transform_timed_on": n_sub,
        "umap_transform_extrapolated": n_sub < superpixels,
        "umap_transform_points_per_second": n_sub / sub,
        "note": "umap-learn 0.5 UMAP(random_state=0) fit on the bank; transform timed on the first "
                "n points and scaled linearly; scikit-learn KMeans(n_init=1) on the pool embedding",
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--superpixels", type=int, default=250_000)
    ap.add_argument("--sweep", default="10000,30000,100000,300000,1000000")
    ap.add_argument("--baseline-subsample", type=int, default=20_000)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--baseline-only", action="store_true", help="redo the baseline in an existing summary")
    ap.add_argument("--tag", default="", help="suffix of the result files (keeps earlier results)")
    args = ap.parse_args()
    prefix = "selection_cpu" + (f"_{args.tag}" if args.tag else "")
    summary_path = RESULTS / f"{prefix}.json"
    from fastal.machine import command_line, machine_info

    RESULTS.mkdir(parents=True, exist_ok=True)
    n = args.superpixels
    if args.baseline_only:
        summary = json.loads(summary_path.read_text())
        summary["baseline"] = baseline(n, args.baseline_subsample)
        summary["baseline"]["command"] = command_line(["python", "benchmarks/bench_selection.py", *sys.argv[1:]])
        summary["speedup_warm_vs_baseline"] = summary["baseline"]["seconds"] / summary["warm"]["seconds"]
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"speedup {summary['speedup_warm_vs_baseline']:.2f}x")
        return
    summary: dict = {"command": command_line(["python", "benchmarks/bench_selection.py", *sys.argv[1:]]),
                     "machine": machine_info(), "gpu": "no GPU lent to this session: GPU sweep not run"}  # fmt: skip
    summary["cold"] = fastal_bench(prefix, f"{n // 1000}k_cold", n, warm=False)
    summary["warm"] = fastal_bench(prefix, f"{n // 1000}k", n, warm=True)
    if not args.skip_baseline:
        summary["baseline"] = baseline(n, args.baseline_subsample)
        summary["speedup_warm_vs_baseline"] = summary["baseline"]["seconds"] / summary["warm"]["seconds"]
    summary["sweep"] = []
    for size in [int(s) for s in args.sweep.split(",") if s]:
        r = summary["warm"] if size == n else fastal_bench(prefix, f"sweep_{size // 1000}k", size, warm=True)
        summary["sweep"].append({"superpixels": size, "seconds": r["seconds"], "stages": r["stages"],
                                 "load_1min_before": r["load_1min_before"]})  # fmt: skip
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in summary if k.startswith("speedup")}, indent=2))


if __name__ == "__main__":
    main()
