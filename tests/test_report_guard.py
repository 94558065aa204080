"""`fastal report`'s edges: one run given twice (or a copy of it)
is refused, the JSON written is JSON, results and tables read back from disk are checked as
strictly as input (an mIoU of NaN or 7.5, a deleted selection table, a class id the run does not
have, a damaged cycles.parquet), a path error is one line, and a table in a log is whole."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_run_guard import cli, copy_of, edit_results, one_line, snapshot

STRATEGIES, SEEDS, BUDGETS = ["random", "entropy"], [0, 1], [25.0, 30.0, 35.0]


def strict_json(path: Path) -> object:
    """JSON as the standard has it: NaN and Infinity are no JSON numbers."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """S of the issue as the report reads it: sweep.json, cycles.parquet with no reference (full_miou
    NaN, as `fastal sweep` writes it), and each run's run.json."""
    out = tmp_path / "S"
    rows = [{"run": f"strategy={st},seed={s}", "strategy": st, "seed": s, "cycle": k + 1, "budget_pct": b,
             "pixel_pct": b, "superpixels": 4, "clicks": 4, "miou": 0.3 + 0.01 * k + 0.02 * s, "full_miou": None,
             "train_seconds": 1.0, "select_seconds": 0.0, "seconds": 1.0}
            for st in STRATEGIES for s in SEEDS for k, b in enumerate(BUDGETS)]  # fmt: skip
    for k, name in enumerate(sorted({r["run"] for r in rows})):
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "run.json").write_text(json.dumps({"run_id": f"{k:032x}", "config": {}}))
    pd.DataFrame(rows).to_parquet(out / "cycles.parquet", index=False)
    axes = {"strategy": STRATEGIES, "seed": SEEDS}
    (out / "sweep.json").write_text(json.dumps({"sweep_file": "k.toml", "config": {}, "axes": axes}))
    return out


# ---- item 7: never NaN in the JSON written; NaN or 7.5 read as an mIoU is refused ---------------
def test_the_report_of_a_sweep_without_reference_writes_json(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = cli(["report", sweep_dir, "--json", tmp_path / "k.json", "--out", tmp_path / "k.png"], capsys)
    assert code == 0, err
    summary = strict_json(tmp_path / "k.json")["summary"]
    assert len(summary) == len(STRATEGIES) * len(BUDGETS)
    assert all(r["ratio_mean"] is None and r["n"] == 2 for r in summary)  # no reference: no ratio


@pytest.mark.parametrize("miou", [math.nan, 7.5, -0.1])
def test_an_miou_that_cannot_be_one_is_refused(reference: Path, sweep_dir: Path, tmp_path: Path, capsys,
                                               miou: float) -> None:  # fmt: skip
    run_dir = copy_of(reference, tmp_path)
    edit_results(run_dir, lambda r: r["cycles"][1].update(miou=miou))
    code, err = cli(["report", run_dir, "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and f"cycle 2: miou = {miou}, expected a number in [0, 1]" in one_line(err), err
    df = pd.read_parquet(sweep_dir / "cycles.parquet")
    df.loc[3, "miou"] = miou
    df.to_parquet(sweep_dir / "cycles.parquet", index=False)
    code, err = cli(["report", sweep_dir, "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and f"cycles.parquet: miou = {miou} (run strategy=random,seed=1), expected a number in [0, 1]" \
        in one_line(err), err  # fmt: skip
    assert not (tmp_path / "r.png").exists()


# ---- item 2: one run counts once ----------------------------------------------------------------
def test_a_run_given_twice_or_copied_is_refused(reference: Path, sweep_dir: Path, tmp_path: Path, capsys) -> None:
    copy = copy_of(reference, tmp_path, "copy")  # `cp -a`: the same run id
    for args, message in [([reference, reference], f"{reference} and {reference}: the same directory"),
                          ([reference, copy], f"{reference} and {copy}: the same run (run id ")]:  # fmt: skip
        code, err = cli(["report", *args, "--json", tmp_path / "r.json", "--out", tmp_path / "r.png"], capsys)
        assert code == 2 and message in one_line(err) and "a run counts once" in err, err
    shutil.copytree(sweep_dir, tmp_path / "S2")
    code, err = cli(["report", sweep_dir, tmp_path / "S2", "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and "the same run (run id " in one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S", "S2", "copy"]


# ---- item 8: the selection tables a report reads ------------------------------------------------
def test_selection_tables_missing_or_with_a_foreign_class_are_refused(reference: Path, tmp_path: Path,
                                                                      capsys) -> None:  # fmt: skip
    run_dir = copy_of(reference, tmp_path)
    table = run_dir / "selection" / "cycle-2.parquet"
    # A second selecting cycle, with its table: the shares are over both.
    shutil.copy(table, run_dir / "selection" / "cycle-3.parquet")
    edit_results(run_dir, lambda r: r["cycles"].append({**r["cycles"][1], "cycle": 3, "budget_pct": 35.0}))
    code, err = cli(["report", run_dir, "--out", tmp_path / "r.png"], capsys)
    assert code == 0, err
    df = pd.read_parquet(table)
    df.loc[df.index[df["rank"] >= 0][0], "class"] = 99
    df.to_parquet(table, index=False)
    code, err = cli(["report", run_dir, "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and f"{table}: class 99 is no class of the run (0..10, -1 = no labelled pixel)" in one_line(err)
    table.unlink()
    code, err = cli(["report", run_dir, "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and f"{table}: missing, while the run's other selecting cycles have their tables" in one_line(err)


# ---- item 11: path errors and damaged tables, one line each -----------------------------------
def test_a_file_or_a_long_name_given_for_a_run_is_one_line(reference: Path, tmp_path: Path, capsys) -> None:
    code, err = cli(["report", reference / "results.json", "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and "results.json: a file, not a run directory" in one_line(err), err
    long = tmp_path / ("r" * 300)
    code, err = cli(["report", long, "--out", tmp_path / "r.png"], capsys)
    assert code == 2 and "is 300 bytes; a file name may have at most 255" in one_line(err), err
    code, err = cli(["report", reference, "--out", tmp_path / "r.png", "--json", tmp_path / ("j" * 250)], capsys)
    assert code == 2 and "a file name may have at most 241 here" in one_line(err), err
    assert not list(tmp_path.iterdir())


def _drop(column: str):
    return lambda p: pd.read_parquet(p).drop(columns=[column]).to_parquet(p, index=False)


def _text_miou(p: Path) -> None:
    df = pd.read_parquet(p)
    df["miou"] = df["miou"].map(str)
    df.to_parquet(p, index=False)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "cycles.parquet: not a parquet table"),
    (lambda p: p.write_bytes(b""), "cycles.parquet: not a parquet table"),
    (_drop("miou"), "cycles.parquet: no column 'miou'"),
    (_drop("strategy"), "cycles.parquet: no column 'strategy'"),
    (_text_miou, "cycles.parquet: column 'miou' holds "),  # str or object, by the pandas version
    (lambda p: pd.concat([pd.read_parquet(p)] * 2).to_parquet(p, index=False),
     "cycles.parquet: run strategy=random,seed=0 has cycle 1 twice"),
])  # fmt: skip
def test_a_damaged_cycles_table_is_one_line(sweep_dir: Path, tmp_path: Path, capsys, damage, message: str) -> None:
    damage(sweep_dir / "cycles.parquet")
    before = snapshot(sweep_dir)
    code, err = cli(["report", sweep_dir, "--out", tmp_path / "r.png", "--json", tmp_path / "r.json"], capsys)
    assert code == 2 and message in one_line(err), err
    assert snapshot(sweep_dir) == before and sorted(p.name for p in tmp_path.iterdir()) == ["S"]


@pytest.mark.parametrize("table", ["none", "empty"])
def test_a_sweep_with_no_evaluated_cycle_yet_is_one_line(sweep_dir: Path, tmp_path: Path, capsys, table: str) -> None:
    # Its runs started (run.json) and none evaluated a cycle: no cycles.parquet yet, or an empty one
    # (what a sweep whose runs all failed leaves). Not a call to resume: that would run the sweep.
    path = sweep_dir / "cycles.parquet"
    if table == "none":
        path.unlink()
    else:
        pd.read_parquet(path).iloc[:0].to_parquet(path, index=False)
    before = snapshot(sweep_dir)
    code, err = cli(["report", sweep_dir, "--json", tmp_path / "r.json", "--markdown"], capsys)
    assert code == 2
    assert one_line(err) == f"error: {sweep_dir}: no run of the sweep has an evaluated cycle yet; nothing to report"
    assert snapshot(sweep_dir) == before and sorted(p.name for p in tmp_path.iterdir()) == ["S"]


# ---- item 14: a table in a log is whole ------------------------------------------------------------
def test_the_cycle_table_in_a_log_has_whole_columns(reference: Path, tmp_path: Path, capsys) -> None:
    run_dir = copy_of(reference, tmp_path)
    edit_results(run_dir, lambda r: r["cycles"].pop())  # cycle 2 trained, not evaluated: the resume prints the table
    code, err = cli(["run", "--resume", run_dir], capsys)  # stderr captured: not a terminal, as in a log
    assert code == 0, err
    header = next(line for line in err.splitlines() if "cycle" in line and "regions" in line)
    assert all(name in header for name in ("regions", "% pixels", "clicks", "mIoU", "train s", "select s")), err
    assert "…" not in err
