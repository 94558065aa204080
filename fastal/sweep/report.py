"""Statistics of a sweep (``DIR/cycles.parquet``): what ``fastal report DIR`` prints and plots.

Per strategy and budget (and per value of every other axis but the seed): the mIoU, mean ± sample
std over seeds, and its ratio to the fully supervised reference; per strategy, the paired
difference to a baseline strategy, seed by seed at the same budget (the seed-to-seed noise of
the data and the initial set cancels in part): mean ± standard error (std / sqrt(n)) and how
many seeds are ahead of / behind the baseline; per strategy, its selection seconds per cycle
(mean ± std over seeds) and which classes it picks (:mod:`fastal.sweep.picks`).

    >>> from fastal.sweep.report import load_cycles, summary, paired
    >>> df, settings = load_cycles("sweeps/camvid_cpu")
    >>> paired(df, settings, baseline="random")

Several sweeps report side by side (``load_sweeps``): an ablation run as its own sweep is paired
with the main one's strategies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastal.errors import FastalError

BUDGET = "budget_pct"


def is_sweep_dir(path: str | Path) -> bool:
    from fastal.sweep.spec import SPEC

    return (Path(path) / SPEC).is_file()


def load_cycles(sweep_dir: str | Path) -> tuple[Any, list[str]]:
    """``cycles.parquet`` of a sweep and its setting columns: the axes other than strategy and seed."""
    from fastal.sweep.cycles import STRATEGY_SECONDS, TABLE, is_started, read_cycles
    from fastal.sweep.spec import RUNS, SPEC, kept_sweep

    sweep_dir = Path(sweep_dir)
    path, sweep = sweep_dir / TABLE, kept_sweep(sweep_dir / SPEC)
    axes = list(sweep.axes)
    df = read_cycles(path, axes) if path.is_file() else None
    if df is None or df.empty:
        if not any(is_started(sweep_dir / RUNS / run.name) for run in sweep.runs()):
            raise FastalError(f"{sweep_dir}: no run of the sweep has an evaluated cycle yet; nothing to report")
        raise FastalError(f"{path}: {'not found' if df is None else 'no cycle in it'} (run `fastal sweep --resume "
                          f"{sweep_dir}` to write it)")  # fmt: skip
    settings = [a for a in axes if a not in ("strategy", "seed")]
    numbered = bool(df[BUDGET].isna().any())  # cycles people added have no planned budget
    if numbered:
        df[BUDGET] = df["cycle"].astype(float)
    df.attrs["budgets"] = "cycle numbers" if numbered else "% of pixels"
    df["ratio"] = df["miou"] / df["full_miou"]
    df["run_dir"] = [str(sweep_dir / RUNS / r) for r in df["run"]]  # where its queries.jsonl is
    # A table written before the column: no run's seconds known.
    df[STRATEGY_SECONDS] = df[STRATEGY_SECONDS].astype(float) if STRATEGY_SECONDS in df else math.nan
    return df, settings


def load_sweeps(sweep_dirs: list[str | Path]) -> tuple[Any, list[str]]:
    """The cycles of one sweep, or of several side by side to pair one with another (e.g. an
    ablation run as its own sweep). They must cross the same axes and key their budgets alike; a
    strategy that an earlier sweep already has is named ``"<strategy> @ <sweep directory name>"``
    in the later ones. Column ``sweep``: "" for the first sweep's rows, the name for the others'."""
    import pandas as pd

    from fastal.run_report import refuse_repeats

    frames, names, seen, settings = [], {}, set(), []
    for d in sweep_dirs:
        where = Path(d).resolve()
        if where in names.values():
            raise FastalError(f"{d}: given twice")
        if where.name in names:
            raise FastalError(f"{names[where.name]} and {where}: two sweeps named {where.name}; rename one")
        df, axes = load_cycles(d)
        if frames:
            first = frames[0]
            if set(axes) != set(settings):
                raise FastalError(
                    f"{d} crosses {', '.join(axes) or 'no axis'} besides strategy and seed, {sweep_dirs[0]} "
                    f"crosses {', '.join(settings) or 'no axis'}: their runs cannot be paired"
                )
            if df.attrs["budgets"] != first.attrs["budgets"]:
                raise FastalError(f"{d} keys its cycles by {df.attrs['budgets']}, {sweep_dirs[0]} by "
                                  f"{first.attrs['budgets']}: their runs cannot be paired")  # fmt: skip
            taken = df["strategy"].isin(seen)
            df.loc[taken, "strategy"] = df.loc[taken, "strategy"] + f" @ {where.name}"
            df["run"] = f"{where.name}/" + df["run"]
        else:
            settings = axes
        df["sweep"] = where.name if frames else ""
        names[where.name] = where
        seen |= set(df["strategy"])
        frames.append(df)
    # A copied sweep holds the same runs (run ids): paired with itself, it would double every seed.
    refuse_repeats([r for d in sweep_dirs for r in sorted((Path(d) / "runs").glob("*/")) if (r / "run.json").is_file()])
    return pd.concat(frames, ignore_index=True), settings


def summary(df: Any, settings: list[str]) -> Any:
    """One row per (settings, strategy, budget): n seeds, mean and sample std of % pixels, mIoU and
    mIoU / full mIoU (std 0 for a single seed)."""
    out = (df.groupby([*settings, "strategy", BUDGET], sort=False)
             .agg(n=("seed", "nunique"), pixel_pct=("pixel_pct", "mean"), miou_mean=("miou", "mean"),
                  miou_std=("miou", "std"), ratio_mean=("ratio", "mean"), ratio_std=("ratio", "std"))
             .reset_index())  # fmt: skip
    single = out["n"] == 1
    out.loc[single, ["miou_std", "ratio_std"]] = 0.0
    return out


def _reference_keys(df: Any, settings: list[str]) -> list[str]:
    """What tells references apart: the settings, and the sweep where several are side by side."""
    return [*settings, *(["sweep"] if "sweep" in df else [])]


def fully_supervised(df: Any, settings: list[str]) -> Any:
    """Per setting: the references' mIoU, mean ± std over the seeds (one value per seed)."""
    keys = _reference_keys(df, settings)
    refs = df.dropna(subset=["full_miou"]).drop_duplicates([*keys, "seed"])
    if refs.empty:
        return refs
    by = keys or ["all"]  # one group when no axis but the seed and strategy
    out = (refs.assign(all=0).groupby(by, sort=False)
               .agg(n=("seed", "nunique"), miou_mean=("full_miou", "mean"), miou_std=("full_miou", "std"))
               .reset_index().drop(columns=["all"], errors="ignore"))  # fmt: skip
    out.loc[out["n"] == 1, "miou_std"] = 0.0
    return out


def paired(df: Any, settings: list[str], baseline: str) -> Any:
    """Each other strategy minus ``baseline``, seed by seed at the same budget and settings: one row
    per (settings, strategy, budget) with n, mean, std, standard error, seeds ahead and behind."""
    import numpy as np

    strategies = list(dict.fromkeys(df["strategy"]))
    if baseline not in strategies:
        raise FastalError(f"--baseline {baseline}: no such strategy ({', '.join(strategies)})")
    keys = [*settings, "seed", BUDGET]
    base = df[df["strategy"] == baseline][[*keys, "miou"]]
    both = df[df["strategy"] != baseline].merge(base, on=keys, suffixes=("", "_baseline"))
    both["diff"] = both["miou"] - both["miou_baseline"]
    out = (both.groupby([*settings, "strategy", BUDGET], sort=False)
               .agg(n=("diff", "size"), diff_mean=("diff", "mean"), diff_std=("diff", "std"),
                    ahead=("diff", lambda d: int((d > 0).sum())), behind=("diff", lambda d: int((d < 0).sum())))
               .reset_index())  # fmt: skip
    out["diff_std"] = out["diff_std"].where(out["n"] > 1, 0.0)
    out["diff_se"] = out["diff_std"] / np.sqrt(out["n"])
    return out


def selection_seconds(df: Any, settings: list[str]) -> Any:
    """One row per (settings, strategy): the seconds its strategy took to select, per cycle
    (``strategy_seconds``, cycles 2 on: cycle 1 draws the random initial set), averaged over each
    run's cycles, then n runs (seeds) that recorded them, mean and sample std over those (std 0 for
    one; n 0 and NaN for none: runs older than the stages)."""
    from fastal.sweep.cycles import STRATEGY_SECONDS
    from fastal.sweep.picks import FIRST_PICK

    per_run = (df[df["cycle"] >= FIRST_PICK].groupby([*settings, "strategy", "run"], sort=False)[STRATEGY_SECONDS]
                 .mean().rename("seconds").reset_index())  # fmt: skip
    out = (per_run.groupby([*settings, "strategy"], sort=False)
                  .agg(n=("seconds", "count"), seconds_mean=("seconds", "mean"), seconds_std=("seconds", "std"))
                  .reset_index())  # fmt: skip
    out.loc[out["n"] == 1, "seconds_std"] = 0.0
    return out


def run_machines(df: Any) -> list[dict[str, Any]]:
    """The machines that made the cycles of ``df`` (each cycle's ``machine`` in its run's
    results.json): ``{"machine": record, "cycles": n}`` per distinct record, in the order met;
    ``machine`` None for the cycles of runs older than the record (or without a results.json)."""
    import json

    from fastal.sweep.cycles import read_results

    counts: dict[str, list[Any]] = {}
    for run_dir, cycles in df.groupby("run_dir", sort=False)["cycle"]:
        res = read_results(Path(run_dir)) or {"cycles": []}
        made = {c["cycle"]: c.get("machine") for c in res["cycles"]}
        for cycle in cycles:
            machine = made.get(cycle)
            counts.setdefault(json.dumps(machine, sort_keys=True), [machine, 0])[1] += 1
    return [{"machine": machine, "cycles": n} for machine, n in counts.values()]


def default_baseline(df: Any) -> str:
    """``random`` when the sweep has it, else its first strategy."""
    strategies = list(dict.fromkeys(df["strategy"]))
    return "random" if "random" in strategies else strategies[0]


def _label(row: Any, settings: list[str]) -> str:
    return ", ".join([*(f"{k}={row[k]}" for k in settings), row["strategy"]])


def miou_cell(mean: float, std: float, ratio: float | None, n: int, seeds: int) -> str:
    """One budget's cell of a results table: "mIoU ± std (mIoU / full %)", "[n=k]" where fewer than
    ``seeds`` seeds reached the budget."""
    cell = f"{mean:.3f} ± {std:.3f}" + ("" if ratio is None else f" ({100 * ratio:.0f} %)")
    return cell + ("" if n == seeds else f" [n={n}]")


def seconds_cell(row: Any, seeds: int) -> str:
    """A :func:`selection_seconds` row as "mean ± std" ("n/a" where no run recorded them), "[n=k]"
    where fewer than ``seeds`` seeds did."""
    if row is None or row["n"] == 0:
        return "n/a"
    digits = 3 if row["seconds_mean"] < 10 else 1  # the score strategies choose in milliseconds
    cell = f"{row['seconds_mean']:.{digits}f} ± {row['seconds_std']:.{digits}f}"
    return cell + ("" if row["n"] == seeds else f" [n={row['n']}]")


def tables(df: Any, settings: list[str], baseline: str, picks: list[dict[str, Any]]) -> list[Table]:
    """The report's tables as (title, header, rows) of strings: mIoU per budget and selection
    seconds per cycle, paired differences, the classes picked (``picks``:
    :func:`fastal.sweep.picks.pick_shares`)."""
    summ, pair, full = summary(df, settings), paired(df, settings, baseline), fully_supervised(df, settings)
    seconds = {tuple(r[[*settings, "strategy"]]): r for _, r in selection_seconds(df, settings).iterrows()}
    budgets = sorted(df[BUDGET].unique())
    header = ["", *(f"{b:g} %" for b in budgets)]
    seeds = df["seed"].nunique()
    rows = []
    for key, g in summ.groupby([*settings, "strategy"], sort=False):
        cells = {r[BUDGET]: r for _, r in g.iterrows()}
        row = [_label(g.iloc[0], settings)]
        for b in budgets:
            r = cells.get(b)
            if r is None:
                row.append("")
                continue
            ratio = None if math.isnan(r["ratio_mean"]) else r["ratio_mean"]
            row.append(miou_cell(r["miou_mean"], r["miou_std"], ratio, r["n"], seeds))
        rows.append([*row, seconds_cell(seconds.get(key), seeds)])
    for _, r in full.iterrows():
        name = ", ".join([*(f"{k}={r[k]}" for k in settings), "fully supervised"]) + (
            f" @ {r['sweep']}" if r.get("sweep") else "")  # fmt: skip
        rows.append([name, *([f"{r['miou_mean']:.3f} ± {r['miou_std']:.3f}"] * len(budgets)), ""])
    title = ("mIoU, mean ± std over seeds (ratio to fully supervised); selection seconds per cycle: the strategy's "
             "own step (cycles 2 on, after scoring the pool), mean ± std over seeds")
    out = [(title, [*header, "selection s / cycle"], rows)]
    prow = []
    for _, g in pair.groupby([*settings, "strategy"], sort=False):
        cells = {r[BUDGET]: r for _, r in g.iterrows()}
        prow.append([_label(g.iloc[0], settings)] + [
            "" if (r := cells.get(b)) is None
            else f"{r['diff_mean']:+.3f} ± {r['diff_se']:.3f}, {r['ahead']}/{r['behind']}"
            for b in budgets
        ])  # fmt: skip
    if prow:
        out.append((f"minus {baseline}, seed by seed: mean ± standard error, seeds ahead/behind", header, prow))
    if any(p["runs"] for p in picks):
        classes = list(dict.fromkeys(k for p in picks for k in p["region_pct"]))
        title = ("% of the regions each strategy picked, by the class the oracle gave them (void: no labelled "
                 "pixel); its own picks only, cycles 2 on (cycle 1 is the random initial set); mean over the seeds "
                 "with picks (the JSON has the % of pixels too)")
        out.append((title, ["", "seeds", *classes],
                    [[_label(p, settings), str(p["runs"]), *(f"{p['region_pct'].get(c, 0.0):.1f}" if p["runs"]
                      else "" for c in classes)] for p in picks]))  # fmt: skip
    return out


def markdown(table: Table) -> str:
    title, header, rows = table
    head = [header[0] or "strategy", *header[1:]]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return f"{title}\n\n" + "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def plot(df: Any, settings: list[str], path: str | Path) -> None:
    """mIoU against % of pixels, one line per (settings, strategy), ± std band; each distinct
    fully supervised mIoU once, dashed (fastal.run_report's plot)."""
    from fastal.run_report import Group, plot_curves

    full = fully_supervised(df, settings)
    groups, drawn = [], set()
    for _, g in summary(df, settings).groupby([*settings, "strategy"], sort=False):
        first = g.iloc[0]
        mine = (df[settings] == first[settings]).all(axis=1) & (df["strategy"] == first["strategy"])
        group = Group("", _label(first, settings), sorted(set(df.loc[mine, "run"])), sorted(set(df.loc[mine, "seed"])))
        group.points = [(k, r["pixel_pct"], r["miou_mean"], r["miou_std"], int(r["n"]))
                        for k, (_, r) in enumerate(g.iterrows(), start=1)]  # fmt: skip
        keys = _reference_keys(df, settings)
        row = df.loc[mine].iloc[0]
        ref = full[(full[keys] == row[keys]).all(axis=1)] if keys and not full.empty else full
        if not ref.empty and float(ref["miou_mean"].iloc[0]) not in drawn:
            r = ref.iloc[0]
            group.full_miou = (float(r["miou_mean"]), float(r["miou_std"]), int(r["n"]))
            drawn.add(group.full_miou[0])
        groups.append(group)
    plot_curves(groups, path, title="mIoU (mean ± std over seeds)")


Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def picks_plot_path(out: str | Path) -> Path:
    """Where the bars of the classes picked go: beside the report's plot (``report-classes.png``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}-classes{out.suffix}")


def sweep_report(sweep_dirs: list[str | Path], out: str | Path | None, json_path: str | Path | None,
                 baseline: str | None = None, as_markdown: bool = False, command: str | None = None) -> list[Table]:
    """Print the tables of one sweep or several side by side (:func:`load_sweeps`), the machines
    that made the runs (:func:`run_machines`) and the machine and library versions the report was
    made with; plot at ``out`` (and the classes picked beside it, :func:`picks_plot_path`) and write
    the numbers as JSON at ``json_path`` when given, with ``command`` (the command that made them)
    and both machines."""
    from rich.table import Table

    from fastal.atomic import atomic_write_json, check_writable
    from fastal.machine import machine_info, made_on, portable_path, runs_made_on
    from fastal.progress import console, print_table
    from fastal.sweep.picks import pick_shares, plot_picks

    df, settings = load_sweeps(sweep_dirs)
    baseline = baseline or default_baseline(df)
    picks, machines = pick_shares(df, settings), run_machines(df)  # read (and checked) before anything is written
    bought = any(p["runs"] for p in picks)  # some strategy has picks: their bars are drawn
    for target in (out, json_path, *([picks_plot_path(out)] if out is not None and bought else [])):
        if target is not None:
            check_writable(target)
    result = tables(df, settings, baseline, picks)
    for table in result:
        if as_markdown:
            print(markdown(table) + "\n")
            continue
        title, header, rows = table
        t = Table(title=title)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        print_table(t)
    machine = machine_info()
    # The project's rule: a table says on which machine and library versions it was made: the
    # runs' numbers on theirs, the report on this one.
    for line in [*(runs_made_on(m["machine"], m["cycles"]) for m in machines), made_on(machine)]:
        if as_markdown:
            print(line)
        else:
            console.print(line, highlight=False, soft_wrap=True)
    if out is not None:
        plot(df, settings, out)
        if bought:
            plot_picks(picks, [_label(p, settings) for p in picks], picks_plot_path(out))
            console.print(f"classes picked: {picks_plot_path(out)}")
    if json_path is not None:
        atomic_write_json(json_path, {
            "command": command, "machine": machine, "run_machines": machines,
            "sweeps": [portable_path(d) for d in sweep_dirs], "baseline": baseline,
            "summary": summary(df, settings).to_dict(orient="records"),
            "paired": paired(df, settings, baseline).to_dict(orient="records"),
            "fully_supervised": fully_supervised(df, settings).to_dict(orient="records"),
            "selection_seconds": selection_seconds(df, settings).to_dict(orient="records"),
            "picks": picks,
        })  # fmt: skip
    return result
