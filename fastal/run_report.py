"""Results of runs side by side: mean ± std over seeds at each cycle, as a table, a plot and JSON;
from the runs' selection tables, the % of queried pixels by dominant class per strategy.

One run's ``curve.png`` is drawn by the same :func:`plot_curves` as the multi-run report.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastal.atomic import atomic_write_bytes, atomic_write_json, check_writable, read_json
from fastal.errors import FastalError
from fastal.machine import DESCRIBED, portable_path

RESULT_KEYS = ("dataset", "strategy", "seed", "full_miou", "cycles")
# What every cycle record of results.json holds; the report itself reads fewer.
CYCLE_KEYS = (
    "cycle",
    "labelled_superpixels",
    "labelled_pixel_fraction",
    "cost_clicks",
    "miou",
    "per_class_iou",
    "train_seconds",
    "select_seconds",
    "stages",
    "peak_rss_gb",
    "machine",  # fastal.machine.machine_info() of the process that made the cycle (absent in older runs)
)


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/results.json``, checked for the keys a report needs and for numbers that can be
    what they say (an mIoU is a fraction: NaN or 7.5 is damage, not a result)."""
    if Path(run_dir).is_file():
        raise FastalError(f"{run_dir}: a file, not a run directory (give the directory that holds results.json)")
    path = Path(run_dir) / "results.json"
    res = read_json(path, f"is {run_dir} a fastal run directory?")
    if not isinstance(res, dict):
        raise FastalError(f"{path}: expected a JSON object, found {type(res).__name__}")
    missing = [k for k in RESULT_KEYS if k not in res]
    if missing:
        raise FastalError(f"{path}: missing key {missing[0]!r}")
    if not isinstance(res["cycles"], list):
        raise FastalError(f"{path}: 'cycles' is {type(res['cycles']).__name__}, expected a list")
    for key, ok, want in (("dataset", _is_str, "a string"), ("strategy", _is_str, "a string"),
                          ("seed", _is_int, "an integer"),
                          ("full_miou", _is_fraction_or_null, "a number in [0, 1] or null")):
        if not ok(res[key]):
            raise FastalError(f"{path}: {key} = {res[key]!r}, expected {want}")
    for c in res["cycles"]:
        if not isinstance(c, dict):
            raise FastalError(f"{path}: cycle record {c!r} is not an object")
        gone = [k for k in ("cycle", "labelled_pixel_fraction", "miou") if k not in c]
        if gone:
            raise FastalError(f"{path}: a cycle record lacks {gone[0]!r}")
        for key, ok, want in (("cycle", _is_int, "an integer"), ("labelled_pixel_fraction", _is_fraction,
                              "a number in [0, 1]"), ("miou", _is_fraction, "a number in [0, 1]")):  # fmt: skip
            if not ok(c[key]):
                raise FastalError(f"{path}: cycle {c['cycle']!r}: {key} = {c[key]!r}, expected {want}")
        machine = c.get("machine")
        if machine is not None and not (isinstance(machine, dict) and all(k in machine for k in DESCRIBED)):
            raise FastalError(f"{path}: cycle {c['cycle']!r}: machine = {str(machine)[:80]}, expected the record "
                              f"fastal writes ({', '.join(DESCRIBED)}, ...)")  # fmt: skip
    return res


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1  # False for NaN


def _is_fraction_or_null(v: Any) -> bool:
    return v is None or _is_fraction(v)


def recorded_id(run_dir: str | Path) -> str | None:
    """The run id in ``RUN_DIR/run.json`` (None for a run without one): what tells a run from a copy of it."""
    path = Path(run_dir) / "run.json"
    rec = read_json(path) if path.is_file() else None
    return rec.get("run_id") if isinstance(rec, dict) and isinstance(rec.get("run_id"), str) else None


def refuse_repeats(run_dirs: list[str | Path]) -> None:
    """FastalError when two of ``run_dirs`` are one run: the same directory, or a copy (the same
    run id): counted twice, it would pass for two seeds."""
    seen: dict[Any, str | Path] = {}
    for d in run_dirs:
        for key in (("dir", Path(d).resolve()), ("id", recorded_id(d))):
            if key[1] is not None and key in seen:
                same = "the same directory" if key[0] == "dir" else f"the same run (run id {key[1]}), copied"
                raise FastalError(f"{seen[key]} and {d}: {same}; a run counts once (it would pass for two seeds)")
            seen[key] = d


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of per-seed values; a single value has no spread: 0."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclass
class Group:
    """Runs of one (dataset, strategy): one point per cycle, averaged over the runs that reached it."""

    dataset: str
    strategy: str
    runs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    full_miou: tuple[float, float, int] | None = None  # mean, std, runs that trained the reference
    # per cycle: (cycle, pixel % mean, mIoU mean, mIoU std, number of runs)
    points: list[tuple[int, float, float, float, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "strategy": self.strategy,
            "runs": [portable_path(r) for r in self.runs],
            "seeds": self.seeds,
            "full_miou": None
            if self.full_miou is None
            else {"mean": self.full_miou[0], "std": self.full_miou[1], "n": self.full_miou[2]},
            "points": [
                {"cycle": c, "pixel_pct_mean": x, "miou_mean": m, "miou_std": s, "n": n}
                for c, x, m, s, n in self.points
            ],
        }


def group_runs(run_dirs: list[str | Path]) -> list[Group]:
    """Groups runs by (dataset, strategy), in first-seen order."""
    if not run_dirs:
        raise FastalError("report: give at least one run directory")
    by_key: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    results = [read_results(d) for d in run_dirs]
    refuse_repeats(run_dirs)
    for d, res in zip(run_dirs, results):
        by_key.setdefault((res["dataset"], res["strategy"]), []).append((str(d), res))
    groups = []
    for (dataset, strategy), items in by_key.items():
        g = Group(dataset, strategy, [d for d, _ in items], [r["seed"] for _, r in items])
        fulls = [r["full_miou"] for _, r in items if r["full_miou"] is not None]
        if fulls:
            g.full_miou = (*mean_std(fulls), len(fulls))
        cycles = sorted({c["cycle"] for _, r in items for c in r["cycles"]})
        for cyc in cycles:
            recs = [c for _, r in items for c in r["cycles"] if c["cycle"] == cyc]
            x, _ = mean_std([100 * c["labelled_pixel_fraction"] for c in recs])
            m, s = mean_std([c["miou"] for c in recs])
            g.points.append((cyc, x, m, s, len(recs)))
        groups.append(g)
    return groups


def plot_curves(groups: list[Group], path: str | Path, title: str | None = None) -> None:
    """mIoU against % of pixels labelled, one line per group (band = ± std when > 1 run),
    dashed lines at the fully supervised mIoU. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, g in enumerate(groups):
        color = f"C{i}"
        x = np.array([p[1] for p in g.points])
        m = np.array([p[2] for p in g.points])
        s = np.array([p[3] for p in g.points])
        n = max(len(g.runs), 1)
        label = g.strategy if n == 1 else f"{g.strategy} (n={n})"
        ax.plot(x, m, "o-", color=color, label=label, markersize=4)
        if n > 1:
            ax.fill_between(x, m - s, m + s, color=color, alpha=0.2, linewidth=0)
        if g.full_miou is not None:
            ax.axhline(g.full_miou[0], color=color, linestyle="--", linewidth=1,
                       label=f"fully supervised ({g.full_miou[0]:.3f})")
    ax.set_xlabel("% of pixels labelled")
    ax.set_ylabel("mIoU (validation)")
    ax.set_title(title or ", ".join(sorted({g.dataset for g in groups})))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig: Any, path: str | Path) -> None:
    """Write a matplotlib figure atomically as PNG at ``path`` and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def curve_for_results(results: dict[str, Any], path: str | Path) -> None:
    """One run's ``curve.png`` from its results dict."""
    g = Group(results["dataset"], results["strategy"], ["."], [results["seed"]])
    if results.get("full_miou") is not None:
        g.full_miou = (results["full_miou"], 0.0, 1)
    g.points = [
        (c["cycle"], 100 * c["labelled_pixel_fraction"], c["miou"], 0.0, 1) for c in results["cycles"]
    ]
    plot_curves([g], path, title=f"{results['dataset']}, seed {results['seed']}")


def cycle_table(results: dict[str, Any]) -> Any:
    """The rich table of one run's cycles so far (``results.json``'s dict), printed after each cycle."""
    from rich.table import Table

    full = results.get("full_miou")
    table = Table(title=f"{results['dataset']} / {results['strategy']} / seed {results['seed']}"
                  + (f"  (fully supervised mIoU {full:.4f})" if full is not None else ""))
    for col in ("cycle", "regions", "% pixels", "clicks", "mIoU", "of full", "k", "kept", "train s", "select s"):
        table.add_column(col, justify="right")
    for c in results["cycles"]:
        kept = c.get("clusters_kept")  # k and kept: clustering strategies' selection (absent in older runs)
        table.add_row(
            str(c["cycle"]), str(c["labelled_superpixels"]), f"{100 * c['labelled_pixel_fraction']:.2f}",
            str(c["cost_clicks"]), f"{c['miou']:.4f}", "" if full is None else f"{c['miou'] / full:.1%}",
            "" if c.get("k") is None else str(c["k"]), "" if kept is None else f"{kept:.0%}",
            "" if c["train_seconds"] is None else f"{c['train_seconds']:.1f}",
            "" if c["select_seconds"] is None else f"{c['select_seconds']:.1f}",
        )  # fmt: skip
    return table


def _fmt(m: float, s: float, n: int) -> str:
    return f"{m:.3f}" if n == 1 else f"{m:.3f} ± {s:.3f} (n={n})"


def report_table(groups: list[Group]):
    """A rich table: one row per cycle, one column per group."""
    from rich.table import Table

    table = Table(title="mIoU by cycle (mean ± std over seeds)")
    table.add_column("cycle", justify="right")
    for g in groups:
        table.add_column(f"{g.strategy}\n% px", justify="right")
        table.add_column(f"{g.strategy}\nmIoU", justify="right")
    cycles = sorted({p[0] for g in groups for p in g.points})
    for cyc in cycles:
        row = [str(cyc)]
        for g in groups:
            p = next((p for p in g.points if p[0] == cyc), None)
            row += ["", ""] if p is None else [f"{p[1]:.2f}", _fmt(p[2], p[3], p[4])]
        table.add_row(*row)
    fulls = [g.full_miou for g in groups]
    if any(f is not None for f in fulls):
        row = ["full"]
        for g in groups:
            f = g.full_miou
            row += ["100", "" if f is None else _fmt(*f)]
        table.add_row(*row)
    return table


def write_report(run_dirs: list[str | Path], out: str | Path | None, json_path: str | Path | None,
                 command: str | None = None) -> list[Group]:
    """Table on the console, plot at ``out`` and JSON at ``json_path`` when given, with ``command``
    (the command that made it) and the machine."""
    from fastal.machine import machine_info
    from fastal.progress import print_table

    groups = group_runs(run_dirs)
    for target in (out, json_path):  # both checked before either is written
        if target is not None:
            check_writable(target)
    print_table(report_table(groups))
    classes = query_class_stats(groups)
    if classes:
        print_table(query_class_table(classes))
    if out is not None:
        plot_curves(groups, out)
    if json_path is not None:
        atomic_write_json(json_path, {"command": command, "machine": machine_info(),
                                      "groups": [g.to_json() for g in groups], "query_classes": classes})
    return groups


# ---- selection tables (RUN_DIR/selection/cycle-K.parquet, fastal.select.selection_table) ---------------------
def class_name(names: list[str], c: int) -> str:
    """The name of class id ``c`` (-1: a region with no labelled pixel)."""
    return "void" if c < 0 else names[c] if c < len(names) else f"class {c}"


def query_classes(run_dir: str | Path) -> dict[int, float] | None:
    """% of the pixels a run queried, by the regions' dominant class, over the selection tables of
    its evaluated cycles (the strategy's picks; the random initial set has none). None when the
    run wrote no table (``selection_table = "none"``, or a run older than the tables)."""
    from fastal.select.selection_table import cycle_table_path, read_table

    res = read_results(run_dir)
    # The strategy's cycles: 2.. (a cycle people added, no planned budget, has no table).
    chosen = [c["cycle"] for c in res["cycles"]
              if c["cycle"] >= 2 and not ("budget_pct" in c and c["budget_pct"] is None)]  # fmt: skip
    paths = [p for p in (cycle_table_path(run_dir, c) for c in chosen) if p.exists()]
    if not paths:
        return None
    if len(paths) < len(chosen):
        gone = next(cycle_table_path(run_dir, c) for c in chosen if not cycle_table_path(run_dir, c).exists())
        raise FastalError(f"{gone}: missing, while the run's other selecting cycles have their tables: the "
                          f"shares of the queried classes would leave its picks out; restore it")
    tables = [read_table(p) for p in paths]
    names = res.get("classes") or []
    for p, t in zip(paths, tables):
        bad = t["class"][(t["class"] < -1) | (t["class"] >= (len(names) if names else 2**31))]
        if len(bad):
            raise FastalError(f"{p}: class {int(bad.iloc[0])} is no class of the run (0..{len(names) - 1}, "
                              f"-1 = no labelled pixel)")
    picked = [t[t["rank"] >= 0] for t in tables]
    pixels: dict[int, int] = {}
    for t in picked:
        for c, px in t.groupby("class")["pixels"].sum().items():
            pixels[int(c)] = pixels.get(int(c), 0) + int(px)
    total = sum(pixels.values())
    return {c: 100 * px / total for c, px in sorted(pixels.items())} if total else None


def query_class_stats(groups: list[Group]) -> list[dict[str, Any]]:
    """Per group with selection tables: the mean over its runs of :func:`query_classes`, keyed by
    class name (a class a run never queried counts 0 there)."""
    out = []
    for g in groups:
        shares = [s for s in map(query_classes, g.runs) if s is not None]
        if not shares:
            continue
        names = read_results(g.runs[0]).get("classes") or []
        classes = sorted({c for s in shares for c in s})
        pct = {class_name(names, c): float(np.mean([s.get(c, 0.0) for s in shares])) for c in classes}
        out.append({"dataset": g.dataset, "strategy": g.strategy, "runs": len(shares), "pct_queried_pixels": pct})
    return out


def query_class_table(stats: list[dict[str, Any]]) -> Any:
    """A rich table: % of queried pixels by dominant class, one row per strategy."""
    from rich.table import Table

    table = Table(title="% of the queried pixels by dominant class (selecting cycles, mean over runs)")
    table.add_column("strategy")
    table.add_column("runs", justify="right")
    classes = list(dict.fromkeys(name for s in stats for name in s["pct_queried_pixels"]))
    for name in classes:
        table.add_column(name, justify="right")
    for s in stats:
        table.add_row(s["strategy"], str(s["runs"]), *(f"{s['pct_queried_pixels'].get(n, 0.0):.1f}" for n in classes))
    return table


def embedding_sample(table: Any, max_points: int = 5000, seed: int = 0, max_images: int = 64) -> Any:
    """Rows of a selection table (pandas or cuDF) to draw, as pandas: every pick and up to
    ``max_points`` others (seeded); picks beyond ``max_points`` are sampled too. The others come
    from at most ``max_images`` images (seeded): their colours are the ground truth, read image by
    image, and a sample spread over a Cityscapes-sized pool would read every label map of it. None
    when the table has no embedding (``x`` null). The rows are drawn as positions and only they are
    taken: no filtered copy of a pool-sized table is made."""
    if not bool(table["x"].notna().any()):
        return None
    picked = table["rank"].to_numpy() >= 0  # cuDF -> host: one column
    others = ~picked
    images = table["image"].to_numpy()
    shown = np.unique(images[others])
    if shown.size > max_images:
        others &= np.isin(images, np.random.RandomState(seed).choice(shown, size=max_images, replace=False))
    rows = np.concatenate([_sample_positions(np.flatnonzero(part), max_points, seed) for part in (picked, others)])
    sample = table.iloc[rows]
    sample = sample.to_pandas() if hasattr(sample, "to_pandas") else sample  # cuDF -> host: the sample only
    return sample.reset_index(drop=True)


def _sample_positions(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``positions`` (all when there are no more), drawn as pandas' ``sample(n, random_state=seed)``
    draws rows: the same plot as when the sample was taken from a filtered table."""
    if positions.size <= n:
        return positions
    return positions[np.random.RandomState(seed).choice(positions.size, size=n, replace=False)]


def plot_embedding(sample: Any, classes: np.ndarray, names: list[str], path: str | Path, title: str) -> None:
    """The pool's embedding (``sample``'s ``x``, ``y``) coloured by ``classes`` (one per row), the
    picks larger with a black edge. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    classes = np.asarray(classes, dtype=np.int64)
    cmap = plt.get_cmap("tab20")
    # tab20's strong shades first (classes 0-9), then the pale ones: neighbours in id stay apart.
    colour = lambda c: (0.0, 0.0, 0.0, 1.0) if c < 0 else cmap((2 * c) % 20 + (c // 10) % 2)  # noqa: E731
    picked = sample["rank"].to_numpy() >= 0
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=100)
    for mask, size, edge in ((~picked, 10 if len(sample) < 2000 else 3, "none"), (picked, 30, "black")):
        ax.scatter(sample["x"].to_numpy()[mask], sample["y"].to_numpy()[mask], s=size,
                   c=[colour(c) for c in classes[mask]], edgecolors=edge, linewidths=0.6)  # fmt: skip
    handles = [Line2D([], [], marker="o", linestyle="", color=colour(c), label=class_name(names, c))
               for c in np.unique(classes)]  # fmt: skip
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black",
                          label="picked"))  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(f"{title}: {int(picked.sum())} picks, {int((~picked).sum())} other regions shown", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_png(fig, path)
