"""`fastal run` over growing fractions of a (generated) Cityscapes training split: every stage's
seconds and peak resident memory, one JSON per fraction.

Each fraction runs ``configs/cityscapes_scale.toml`` with ``train_images`` = that many images in a
fresh process (its peak memory is the run's own, not another's), then its results.json's stages
are flattened into ``benchmarks/results/cityscapes_scale<scale>_<images>.json``. Peaks in GiB.

    fastal generate cityscapes --out /work/data-scale/cityscapes
    python benchmarks/cityscapes_scale.py --data-root /work/data-scale/cityscapes --images 372 744 1488 2975 \
        --runs /work/data-scale/runs
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from fastal.atomic import atomic_write_json, read_json
from fastal.config import read_toml
from fastal.machine import command_line, machine_info, portable_path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cityscapes_scale.toml"


def flatten(results: dict, field: str) -> dict[str, float]:
    """results.json's setup and per-cycle stages as ``{name: the stage's field}`` (per-cycle names
    as ``cycle<K>.<stage>``); stages recorded without the field are left out."""
    named = {**results.get("setup", {})}
    for c in results["cycles"]:
        named.update({f"cycle{c['cycle']}.{k}": v for k, v in c.get("stages", {}).items()})
    return {k: v[field] for k, v in named.items() if field in v}


def cache_bytes_per_pixel(superpixels: int, pixels: int) -> float | None:
    """On-disk bytes a pixel of the superpixel cache the run used (found by its counts)."""
    import json

    from fastal.data.superpixels import default_cache_root

    for manifest in default_cache_root().glob("cityscapes-train-*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m["num_superpixels"] == superpixels and sum(h * w for h, w in m["shapes"]) == pixels:
            return round(sum(f.stat().st_size for f in manifest.parent.iterdir()) / pixels, 4)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--images", type=int, nargs="+", required=True, help="train_images of each run (0 = all)")
    p.add_argument("--runs", type=Path, required=True, help="folder for the run directories")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args()
    cfg = read_toml(CONFIG)
    for n in a.images:
        run_dir = a.runs / f"cityscapes_scale{cfg['scale']}_{n or 'all'}"
        result_path = a.results / f"{run_dir.name}.json"
        if result_path.exists():  # measured already
            continue
        command = ["fastal", "run", str(CONFIG.relative_to(ROOT)), "--data-root", a.data_root, "--out", str(run_dir)]
        # train_images has no option of its own: the environment's copy of the config carries it.
        cfg_n = a.runs / f"{run_dir.name}.toml"
        text = CONFIG.read_text().replace("train_images = 0", f"train_images = {n}")
        a.runs.mkdir(parents=True, exist_ok=True)
        cfg_n.write_text(text)
        argv = [sys.executable, "-m", "fastal", "run", str(cfg_n), "--data-root", a.data_root, "--out", str(run_dir)]
        if (run_dir / "config.toml").exists():  # an interrupted measurement: go on (peak and seconds of this part)
            argv = [sys.executable, "-m", "fastal", "run", "--resume", str(run_dir)]
        start = time.perf_counter()
        proc = subprocess.Popen(argv)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{shlex.join(argv)} failed ({os.waitstatus_to_exitcode(status)})")
        res = read_json(run_dir / "results.json")
        stages, peaks = flatten(res, "seconds"), flatten(res, "peak_rss_gb")
        wait4_peak = round(usage.ru_maxrss / 2**20, 3)  # KiB -> GiB
        out = {
            "images": n or None,
            "superpixels": res["num_superpixels"],
            "pixels": res["num_pixels"],
            "scale": cfg["scale"],
            # The stages reset the kernel's high-water mark (fastal.stages), so wait4's is only the
            # peak since the last reset: the run's peak is the highest of it and every stage's.
            "peak_rss_gb": max(wait4_peak, *peaks.values()),
            "wait4_peak_rss_gb": wait4_peak,
            "stages": stages,
            "stages_peak_rss_gb": peaks,
            "stages_cpu_seconds": flatten(res, "cpu_seconds"),  # this process's; setup's workers not counted
            "cache_bytes_per_pixel": cache_bytes_per_pixel(res["num_superpixels"], res["num_pixels"]),
            "seconds": round(seconds, 1),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),  # torch's threads; unset: one per core
            "miou": [c["miou"] for c in res["cycles"]],
            "config": cfg | {"train_images": n},
            "run_dir": portable_path(run_dir),
            "command": command_line(command) + f"  # with train_images = {n}",
            "machine": machine_info(),
        }
        atomic_write_json(result_path, out)
        print(f"{n}: {seconds:.0f} s, peak {out['peak_rss_gb']} GB", flush=True)


if __name__ == "__main__":
    main()
