"""The Cityscapes-scale ladder as one markdown table: per stage, CPU seconds at each measured
fraction (``benchmarks/results/cityscapes_scale<scale>_<images>.json``), the growth exponent of CPU
seconds against the pool's regions (least squares on log-log: 1 = linear), and the peak RSS.

    python benchmarks/cityscapes_scale_table.py [--scale 0.25]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """The slope of log y on log x (None with fewer than two points or a zero)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2 or len(pts) < len(xs):
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def table(rungs: list[dict]) -> str:
    regions = [r["superpixels"] for r in rungs]
    head = " | ".join(f"{r['images']} images" for r in rungs)
    lines = [f"| stage (CPU s) | {head} | exponent | peak GiB |", "|---" * (len(rungs) + 3) + "|"]
    for stage in rungs[-1]["stages_cpu_seconds"]:
        cpu = [r["stages_cpu_seconds"].get(stage) for r in rungs]
        if any(c is None for c in cpu):
            continue
        k = exponent(regions, cpu) if min(cpu) >= 1.0 else None  # under a second: too small to fit
        peak = max(r["stages_peak_rss_gb"][stage] for r in rungs)
        cells = " | ".join(f"{c:.1f}" for c in cpu)
        lines.append(f"| {stage} | {cells} | {'' if k is None else f'{k:.2f}'} | {peak:.2f} |")
    cells = " | ".join(f"{r['superpixels']:,}" for r in rungs)
    lines.append(f"| regions | {cells} | | |")
    cells = " | ".join(f"{r['seconds']:.0f}" for r in rungs)
    lines.append(f"| whole run, wall s | {cells} | | |")
    cells = " | ".join(f"{r['peak_rss_gb']:.2f}" for r in rungs)
    lines.append(f"| whole run, peak GiB | {cells} | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="0.25")
    a = p.parse_args()
    rungs = [json.loads(f.read_text()) for f in RESULTS.glob(f"cityscapes_scale{a.scale}_*.json")]
    rungs = sorted((r for r in rungs if "stages_cpu_seconds" in r), key=lambda r: r["superpixels"])
    print(table(rungs))


if __name__ == "__main__":
    main()
