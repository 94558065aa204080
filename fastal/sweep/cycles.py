"""``DIR/cycles.parquet``: one row per evaluated cycle of every run of a sweep, for analysis.

Columns: ``run`` (its directory name), one column per axis (list values joined by '+', as in the
run names), ``strategy`` and ``seed`` (always), ``cycle``, ``budget_pct`` (the % of pixels the
cycle aimed at), ``pixel_pct`` (the % labelled), ``superpixels``, ``clicks``, ``miou``,
``full_miou``, ``iou_<class>`` per class (``iou_<index>`` where a run records no class names),
``train_seconds``, ``select_seconds`` (the selection phase: loading the teacher, scoring the pool,
choosing), ``strategy_seconds`` (the choosing alone, results.json's ``stages.select``; null for a run
older than the stages) and ``seconds`` (train + select).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from fastal.errors import FastalError
from fastal.sweep.spec import RUNS, RunSpec, value_name
from fastal.sweep.tasks import CLASSES

TABLE = "cycles.parquet"
STRATEGY_SECONDS = "strategy_seconds"
FIXED = ("strategy", "seed", "cycle", "budget_pct", "pixel_pct", "superpixels", "clicks", "miou", "full_miou")


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """A run's results.json, checked (:func:`fastal.run_report.read_results`), or None before its first
    evaluated cycle."""
    from fastal.run_report import read_results as checked_results

    return checked_results(run_dir) if (run_dir / "results.json").is_file() else None


def is_finished(run_dir: Path) -> bool:
    res = read_results(run_dir)
    return res is not None and res.get("stopped") is not None


def is_started(run_dir: Path) -> bool:
    """Its cycle 1 is evaluated (what a shared first cycle's task leaves)."""
    res = read_results(run_dir)
    return res is not None and bool(res["cycles"])


def class_names(run_dir: Path, res: dict[str, Any] | None) -> list[str] | None:
    """The names of a run's class ids: its results.json's ``classes`` (``res``), else the sweep's
    classes.json beside it (runs older than the names in results.json); None where neither has them."""
    from fastal.atomic import read_json

    path = run_dir / CLASSES
    names = (res or {}).get("classes") or (read_json(path) if path.is_file() else None)
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise FastalError(f"{run_dir}: class names {str(names)[:80]}: expected a list of strings")
    return names


def stage_seconds(cycle: dict[str, Any], stage: str) -> float | None:
    """Seconds of ``stage`` in a results.json cycle record (:mod:`fastal.stages`); None where the
    run recorded none (runs older than the stages)."""
    stages = cycle.get("stages")
    record = stages.get(stage) if isinstance(stages, dict) else None
    return record.get("seconds") if isinstance(record, dict) else None


def cycle_rows(out: Path, runs: list[RunSpec]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        res = read_results(out / RUNS / run.name)
        if res is None:
            continue
        names = class_names(out / RUNS / run.name, res)
        for c in res["cycles"]:
            row: dict[str, Any] = {"run": run.name, **{k: value_name(v) if isinstance(v, list) else v
                                                      for k, v in run.point.items()}}  # fmt: skip
            row.update(strategy=res["strategy"], seed=res["seed"], cycle=c["cycle"], budget_pct=c.get("budget_pct"),
                       pixel_pct=100 * c["labelled_pixel_fraction"], superpixels=c["labelled_superpixels"],
                       clicks=c["cost_clicks"], miou=c["miou"], full_miou=res["full_miou"])  # fmt: skip
            for i, iou in enumerate(c["per_class_iou"]):
                row[f"iou_{names[i] if names and i < len(names) else i}"] = iou
            seconds = [c.get(k) for k in ("train_seconds", "select_seconds")]
            row.update(train_seconds=seconds[0], select_seconds=seconds[1],
                       strategy_seconds=stage_seconds(c, "select"),
                       seconds=sum(s for s in seconds if s is not None))  # fmt: skip
            rows.append(row)
    return rows


def read_cycles(path: Path, axes: list[str]) -> Any:
    """``cycles.parquet`` as a DataFrame, checked as strictly as input: a parquet table with the
    columns the report reads (``axes`` among them), of their types, the numbers in range, one row
    per run and cycle. FastalError naming the file and the first fault."""
    import pandas as pd
    import pyarrow as pa
    from pandas.api import types

    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise FastalError(f"{path}: not found") from None
    except (pa.ArrowException, OSError) as e:
        raise FastalError(f"{path}: not a parquet table ({str(e).splitlines()[0]}); `fastal sweep --resume "
                          f"{path.parent}` writes it again from the runs") from None  # fmt: skip
    missing = [c for c in ("run", *axes, *FIXED) if c not in df.columns]
    if missing:
        raise FastalError(f"{path}: no column {missing[0]!r}; `fastal sweep --resume {path.parent}` writes it again")
    if df.empty:
        return df
    checks = [("strategy", types.is_string_dtype, "text"), ("seed", types.is_integer_dtype, "integers"),
              ("cycle", types.is_integer_dtype, "integers")]  # fmt: skip
    for col, ok, want in checks:
        if not ok(df[col]):
            raise FastalError(f"{path}: column {col!r} holds {df[col].dtype}, expected {want}")
    for col, top, nulls in (("miou", 1, False), ("full_miou", 1, True), ("pixel_pct", 100, False),
                            ("budget_pct", 100, True), (STRATEGY_SECONDS, math.inf, True)):  # fmt: skip
        if col not in df:  # strategy_seconds: not in tables written before it
            continue
        values = df[col]
        if not (types.is_numeric_dtype(values) or (nulls and values.isna().all())):
            raise FastalError(f"{path}: column {col!r} holds {values.dtype}, expected numbers")
        values = values.astype(float)
        bad = values[~(values.between(0, top) | (values.isna() if nulls else False))]
        if len(bad):
            raise FastalError(f"{path}: {col} = {bad.iloc[0]} (run {df['run'][bad.index[0]]}), expected a number "
                              f"in [0, {top}]")  # fmt: skip
    twice = df[df.duplicated(["run", "cycle"])]
    if len(twice):
        raise FastalError(f"{path}: run {twice['run'].iloc[0]} has cycle {twice['cycle'].iloc[0]} twice")
    return df


def write_cycles(out: Path, runs: list[RunSpec]) -> Any:
    """Write ``out/cycles.parquet`` (atomically) from the run directories; returns the DataFrame."""
    import pandas as pd

    from fastal.atomic import atomic_write_bytes

    axes = list(runs[0].point) if runs else []
    head = ["run", *axes, *(k for k in FIXED if k not in axes)]
    rows = cycle_rows(out, runs)
    rest = list(dict.fromkeys(k for r in rows for k in r if k not in head))
    tail = ["train_seconds", "select_seconds", STRATEGY_SECONDS, "seconds"]
    df = pd.DataFrame(rows, columns=head + [k for k in rest if k not in tail] + tail)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out / TABLE, buf.getvalue())
    return df
