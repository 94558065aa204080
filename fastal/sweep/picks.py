"""Which classes each strategy buys: the share of its picks per class, from the runs' queries.jsonl.

A run's own picks are the regions of its cycles 2 onwards (cycle 1 is the random initial set that
every strategy starts from), up to its last evaluated cycle (a selection already committed for a
cycle still in training is left out, as its mIoU is). A region counts under the class the oracle
gave it (the majority class of its labelled pixels; ``void``: none labelled). Per run, the % of
the picked regions and of their pixels per class; per strategy, the mean over its runs (seeds)
with picks.

    >>> from fastal.sweep.report import load_cycles
    >>> from fastal.sweep.picks import pick_shares
    >>> df, settings = load_cycles("sweeps/camvid_verdict")
    >>> pick_shares(df, settings)[0]["region_pct"]   # {"sky": 3.1, "building": 20.4, ...}
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from fastal.errors import FastalError

FIRST_PICK = 2  # cycle 1 labels a random initial set: no strategy chose it


def query_counts(path: Path, last_cycle: int, classes: int | None) -> tuple[Counter[int], Counter[int]]:
    """Regions and pixels per class id among the lines of ``path`` (a run's queries.jsonl) of
    cycles ``FIRST_PICK..last_cycle``, read in one pass. ``classes``: the run's number of classes
    (ids -1..classes-1; -1 = no labelled pixel), None where unknown. A last line without its newline
    is still being written and is left out; any other line that is no query record is a
    FastalError naming the file and the line. Empty counters where there is no file."""
    regions: Counter[int] = Counter()
    pixels: Counter[int] = Counter()
    if not path.is_file():
        return regions, pixels
    top = "" if classes is None else f"..{classes - 1}"
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n"):  # a run appending its picks right now
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            cycle, c, px = (rec.get(k) for k in ("cycle", "class", "pixels")) if isinstance(rec, dict) else [None] * 3
            if not all(type(v) is int for v in (cycle, c, px)) or px < 0:
                raise FastalError(f"{path}:{number}: not a query record (integers cycle, class and pixels >= 0): "
                                  f"{line.strip()[:80]}")  # fmt: skip
            if c < -1 or (classes is not None and c >= classes):
                raise FastalError(f"{path}:{number}: class {c} is no class of the run (0{top}, -1 = no labelled pixel)")
            if FIRST_PICK <= cycle <= last_cycle:
                regions[c] += 1
                pixels[c] += px
    return regions, pixels


def _percent(counts: Counter[int], names: list[str] | None) -> dict[str, float]:
    from fastal.run_report import class_name

    total = sum(counts.values())
    return {class_name(names or [], c): 100 * n / total for c, n in sorted(counts.items())}


def _mean_shares(shares: list[dict[str, float]], keys: list[str]) -> dict[str, float]:
    """Per class, the mean of the runs' shares (0 in a run that bought none of it)."""
    return {k: sum(s.get(k, 0.0) for s in shares) / len(shares) for k in keys} if shares else {}


def pick_shares(df: Any, settings: list[str]) -> list[dict[str, Any]]:
    """Per (settings, strategy) of a sweep's cycles (:func:`fastal.sweep.report.load_cycles`): the
    settings, ``strategy``, ``runs`` (the seeds with picks), ``regions`` (picked regions per run,
    mean) and ``region_pct`` / ``pixel_pct`` (class name -> % of the picked regions / pixels, mean
    over those runs; every class of the dataset, ``void`` where picked). Runs without picks (no
    queries.jsonl, or no cycle past the first yet) count nowhere; a strategy with none has empty shares."""
    from fastal.rundir import QUERIES
    from fastal.sweep.cycles import class_names, read_results

    out = []
    for _, g in df.groupby([*settings, "strategy"], sort=False):
        per_run, names = [], None
        for run_dir, last in g.groupby("run_dir", sort=False)["cycle"].max().items():
            run_dir = Path(run_dir)
            if not (run_dir / QUERIES).is_file():
                continue
            names = class_names(run_dir, read_results(run_dir)) or names
            regions, pixels = query_counts(run_dir / QUERIES, int(last), len(names) if names else None)
            if regions:
                per_run.append((sum(regions.values()), _percent(regions, names), _percent(pixels, names)))
        # Every class of the dataset, so a class no run bought shows as 0; void only where bought.
        keys = list(dict.fromkeys([*(names or []), *(k for _, r, _ in per_run for k in r)]))
        out.append({**g[settings].iloc[:1].to_dict("records")[0],  # the settings, as Python values
                    "strategy": g["strategy"].iloc[0], "runs": len(per_run),
                    "regions": sum(n for n, _, _ in per_run) / len(per_run) if per_run else None,
                    "region_pct": _mean_shares([r for _, r, _ in per_run], keys),
                    "pixel_pct": _mean_shares([p for _, _, p in per_run], keys)})  # fmt: skip
    return out


def plot_picks(picks: list[dict[str, Any]], labels: list[str], path: str | Path) -> None:
    """Bars: % of the picked regions per class, one bar per strategy with picks (``labels``, in
    ``picks``' order), coloured as in the report's mIoU plot. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fastal.run_report import save_png

    classes = list(dict.fromkeys(k for p in picks for k in p["region_pct"]))
    drawn = [(i, p, label) for i, (p, label) in enumerate(zip(picks, labels)) if p["runs"]]
    width = 0.8 / max(len(drawn), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2 + 0.5 * len(classes)), 4), dpi=100)
    x = np.arange(len(classes))
    for j, (i, p, label) in enumerate(drawn):
        ax.bar(x + (j - (len(drawn) - 1) / 2) * width, [p["region_pct"].get(c, 0.0) for c in classes], width,
               label=f"{label} (n={p['runs']})", color=f"C{i}")  # fmt: skip
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylabel("% of the picked regions")
    ax.set_title("classes picked (cycles 2 on, mean over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
