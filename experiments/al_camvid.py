"""The tables of docs/results-camvid.md from the CamVid results files (benchmarks/results/camvid_*.json).

The protocols now run as sweeps (configs/sweep_camvid_<protocol>.toml), one Dask task per run:

    fastal sweep configs/sweep_camvid_cpu.toml --workers 2           # again, or --resume, to continue
    fastal report sweeps/sweep_camvid_cpu --baseline contrastive --markdown

This script only summarises the results files that the former driver (its own process pool,
now gone) wrote, whose content stays as it was: every cycle of every run, the references, the
machine and wall times, and per strategy and budget the mean ± std over seeds (``summary``) and
the first strategy minus each other, seed by seed (``paired``).

    python experiments/al_camvid.py --protocol cpu            # or --json benchmarks/results/camvid_cpu_mean.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fastal.sweep.report import miou_cell
from fastal.atomic import read_json
from fastal.errors import FastalError
from fastal.progress import console

PROTOCOLS = ("cpu", "gpu")


def readme_table(data: dict[str, Any]) -> str:
    """Markdown: a row per strategy, a column per budget, "mIoU ± std (mIoU / full)"; [n=k] where
    fewer seeds than asked for reached the budget."""
    budgets, seeds = data["budgets"], len(data["seeds"])
    lines = ["| strategy | " + " | ".join(f"{b:g} %" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]  # fmt: skip
    for strategy in data["strategies"]:
        rows = {r["budget_pct"]: r for r in data["summary"].get(strategy, [])}
        cells = []
        for b in budgets:
            r = rows.get(b)
            if r is None:
                cells.append("")
                continue
            cells.append(miou_cell(r["miou_mean"], r["miou_std"], r["ratio_mean"], r["n"], seeds))
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    first = data["strategies"][0]
    if any(data["paired"].values()):
        lines += ["", f"| {first} minus | " + " | ".join(f"{b:g} %" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]  # fmt: skip
        for other, rows in data["paired"].items():
            by_budget = {r["budget_pct"]: r for r in rows}
            cells = [f"{r['diff_mean']:+.3f} ± {r['diff_std']:.3f}" if (r := by_budget.get(b)) else "" for b in budgets]
            lines.append(f"| {other} | " + " | ".join(cells) + " |")
    full = data["full_miou"]
    if full is not None:
        lines += ["", f"Fully supervised (every pixel, same backbone and resolution): mIoU {full['mean']:.3f} ± "
                      f"{full['std']:.3f} over {full['n']} seed{'s' * (full['n'] > 1)}."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=PROTOCOLS, default="cpu")
    p.add_argument("--json", type=Path, help="results file (default benchmarks/results/camvid_<protocol>.json)")
    args = p.parse_args(argv)
    path = args.json or Path(f"benchmarks/results/camvid_{args.protocol}.json")
    try:
        data = read_json(path, "written by the former benchmarks/al_camvid.py driver")
    except FastalError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    print(readme_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
