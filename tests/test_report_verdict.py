"""`fastal report SWEEP_DIR` as the strategy benchmark's verdict table: the selection seconds per
cycle (results.json's stages, through cycles.parquet; n/a for runs older than the stages), the
share of the picks per class (queries.jsonl, cycles 2 on), the paired standard error, and the
command and machine the report was made with. A hand-made sweep of three strategies x three
seeds, its numbers worked out by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fastal.cli import main
from fastal.errors import FastalError
from fastal.machine import machine_info, made_on
from fastal.sweep.cycles import write_cycles
from fastal.sweep.picks import query_counts
from fastal.sweep.report import load_cycles, selection_seconds
from fastal.sweep.spec import kept_sweep

CLASSES = ["sky", "road", "car"]
SEEDS, BUDGETS = [0, 1, 2], [1.0, 2.0, 4.0]
# contrastive minus entropy at 4 %, seed by seed: mean +0.020, sample std sqrt(0.0007) = 0.02646,
# standard error 0.02646 / sqrt(3) = 0.01528; 2 seeds ahead, 1 behind.
DIFFS = [0.03, -0.01, 0.04]
# The strategy's own selection seconds of cycles 2 and 3 (cycle 1, the random draw, says 0.5 and
# does not count); None: a run older than the stages. contrastive: per seed 12, 21, 15: mean 16,
# std sqrt((16 + 25 + 1) / 2) = 4.58. entropy: 0.003, 0.005 (seed 2 has no stages): 0.004 ± 0.0014.
SECONDS = {"contrastive": [(10, 14), (20, 22), (15, 15)], "entropy": [(0.002, 0.004), (0.005, 0.005), None],
           "random": [None, None, None]}  # fmt: skip


def q(cycle: int, cls: int, pixels: int) -> dict:
    return {"cycle": cycle, "superpixel": 0, "image": 0, "local": 0, "pixels": pixels, "clicks": 1, "class": cls,
            "noisy": 0, "image_id": "x"}  # fmt: skip


# queries.jsonl per run (None: no file). Cycle 1 lines (the random initial set) never count, nor
# cycle 4 (selected, not evaluated yet: the runs evaluated cycles 1-3), nor a last line being written.
QUERIES = {
    # seed 0: regions road 2, void 1, car 2 of 5 -> 40/20/40 %; pixels road 40, void 20, car 90 of 150.
    ("contrastive", 0): [q(1, 0, 100), q(1, 0, 100), q(2, 1, 10), q(2, 1, 30), q(2, -1, 20), q(2, 2, 40), q(3, 2, 50),
                         q(4, 0, 1000)],
    # seed 1: regions sky 1, road 1 -> 50/50 %; pixels 60/40 %.
    ("contrastive", 1): [q(1, 2, 5), q(2, 0, 60), q(3, 1, 40)],
    ("contrastive", 2): None,
    # entropy: car only (seed 0), road only (seeds 1, 2).
    ("entropy", 0): [q(1, 1, 7), q(2, 2, 10), q(2, 2, 10), q(3, 2, 10)],
    ("entropy", 1): [q(2, 1, 3)],
    ("entropy", 2): [q(3, 1, 8)],
    # random: its initial set only, or nothing: no picks.
    ("random", 0): [q(1, 0, 9)],
    ("random", 1): None,
    ("random", 2): None,
}
# Means over the seeds with picks (contrastive: 0 and 1).
CONTRASTIVE_REGIONS = {"sky": 25.0, "road": 45.0, "car": 20.0, "void": 10.0}
CONTRASTIVE_PIXELS = {"sky": 30.0, "road": (100 * 40 / 150 + 40) / 2, "car": 30.0, "void": 100 * 20 / 150 / 2}


def miou(strategy: str, seed: int, k: int) -> float:
    base = [0.30, 0.35, 0.40][k] + 0.01 * seed
    return base + (DIFFS[seed] if strategy == "contrastive" and k == 2 else 0.0) - 0.05 * (strategy == "random")


def results(strategy: str, seed: int) -> dict:
    seconds = SECONDS[strategy][seed]
    cycles = []
    for k, b in enumerate(BUDGETS):
        rec = {"cycle": k + 1, "budget_pct": b, "labelled_superpixels": 10 * (k + 1), "labelled_pixel_fraction": b / 100,
               "cost_clicks": 10 * (k + 1), "miou": miou(strategy, seed, k), "per_class_iou": [0.5] * len(CLASSES),
               "train_seconds": 3.0, "select_seconds": 7.0}  # fmt: skip
        if seconds is not None:  # as fastal.stages records them; no "stages" at all in older runs
            rec["stages"] = {"select": {"seconds": 0.5 if k == 0 else seconds[k - 1], "peak_rss_gb": 1.0},
                             "train": {"seconds": 3.0, "peak_rss_gb": 1.0}}  # fmt: skip
        cycles.append(rec)
    return {"dataset": "synthetic", "strategy": strategy, "seed": seed, "classes": CLASSES, "full_miou": 0.6,
            "cycles": cycles}  # fmt: skip


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """The sweep as `fastal sweep` leaves it: sweep.json, the runs' results.json and queries.jsonl,
    and cycles.parquet written from them by the sweep's own writer."""
    out = tmp_path / "verdict"
    axes = {"strategy": ["entropy", "contrastive", "random"], "seed": SEEDS}
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"sweep_file": "v.toml", "config": {}, "axes": axes}))
    runs = kept_sweep(out / "sweep.json").runs()
    for run in runs:
        d = out / "runs" / run.name
        d.mkdir(parents=True)
        strategy, seed = run.point["strategy"], run.point["seed"]
        (d / "results.json").write_text(json.dumps(results(strategy, seed)))
        lines = QUERIES[strategy, seed]
        if lines is not None:
            text = "".join(json.dumps(rec) + "\n" for rec in lines)
            (d / "queries.jsonl").write_text(text + '{"cycle": 4, "class"')  # a line still being appended
    write_cycles(out, runs)
    return out


def test_selection_seconds_from_the_stages_by_hand(sweep_dir: Path) -> None:
    df, settings = load_cycles(sweep_dir)
    rows = selection_seconds(df, settings).set_index("strategy")
    assert rows.loc["contrastive", "n"] == 3
    assert rows.loc["contrastive", "seconds_mean"] == pytest.approx(16.0)
    assert rows.loc["contrastive", "seconds_std"] == pytest.approx(21**0.5)
    assert rows.loc["entropy", "n"] == 2  # seed 2 recorded no stages
    assert rows.loc["entropy", "seconds_mean"] == pytest.approx(0.004)
    assert rows.loc["entropy", "seconds_std"] == pytest.approx(2**0.5 * 0.001)
    assert rows.loc["random", "n"] == 0


def test_the_verdict_tables_and_json(sweep_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the JSON names paths relative to the working directory
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), "--baseline", "entropy", "--markdown", "--json", "r.json",
              "--out", str(tmp_path / "plots" / "r.png")])  # fmt: skip
    assert e.value.code == 0
    out = capsys.readouterr().out
    mious, pairs, picks = out.split("\n\n| strategy |")[1:4]
    # The selection seconds, last column of the mIoU table; n/a where no run recorded them.
    assert "| selection s / cycle |" in mious.splitlines()[0]
    assert next(ln for ln in mious.splitlines() if ln.startswith("| contrastive |")).endswith(" | 16.0 ± 4.6 |")
    assert next(ln for ln in mious.splitlines() if ln.startswith("| entropy |")).endswith(" | 0.004 ± 0.001 [n=2] |")
    assert next(ln for ln in mious.splitlines() if ln.startswith("| random |")).endswith(" | n/a |")
    # The paired difference at 4 %: mean ± standard error (sample std / sqrt(n)), ahead/behind.
    assert next(ln for ln in pairs.splitlines() if ln.startswith("| contrastive |")).endswith(
        " | +0.020 ± 0.015, 2/1 |")  # fmt: skip
    # The classes picked: every class of the dataset, void where bought; random has no picks.
    assert picks.splitlines()[0] == " seeds | sky | road | car | void |"
    assert next(ln for ln in picks.splitlines() if ln.startswith("| contrastive |")) == (
        "| contrastive | 2 | 25.0 | 45.0 | 20.0 | 10.0 |")  # fmt: skip
    assert next(ln for ln in picks.splitlines() if ln.startswith("| entropy |")) == "| entropy | 3 | 0.0 | 66.7 | 33.3 | 0.0 |"
    assert next(ln for ln in picks.splitlines() if ln.startswith("| random |")) == "| random | 0 |  |  |  |  |"
    assert "cycles 2 on (cycle 1 is the random initial set)" in out
    # The markdown ends with the machine and library versions.
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("Made on ") and " cores" in last and "torch " in last and "pandas " in last
    assert (tmp_path / "plots" / "r-classes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((tmp_path / "r.json").read_text())
    assert data["command"] == ("fastal report verdict --out plots/r.png --json r.json --baseline entropy --markdown")
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"] and data["machine"]["pandas"]
    by = {p["strategy"]: p for p in data["picks"]}
    assert by["contrastive"]["runs"] == 2 and by["contrastive"]["regions"] == pytest.approx((5 + 2) / 2)
    assert by["contrastive"]["region_pct"] == pytest.approx(CONTRASTIVE_REGIONS)
    assert by["contrastive"]["pixel_pct"] == pytest.approx(CONTRASTIVE_PIXELS)
    assert list(by["contrastive"]["region_pct"]) == ["sky", "road", "car", "void"]
    assert by["random"] == {"strategy": "random", "runs": 0, "regions": None, "region_pct": {}, "pixel_pct": {}}
    seconds = {r["strategy"]: r for r in data["selection_seconds"]}
    assert seconds["random"]["n"] == 0 and seconds["random"]["seconds_mean"] is None
    pair = next(r for r in data["paired"] if r["strategy"] == "contrastive" and r["budget_pct"] == 4.0)
    assert pair["diff_se"] == pytest.approx(0.0007**0.5 / 3**0.5)


def test_the_machines_that_made_the_runs_are_named(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    # contrastive's runs made here; entropy seed 0 here, its cycle 3 resumed elsewhere; the other
    # runs are older than the record. 27 run-cycles: 2 + 9 here, 1 elsewhere, 15 unknown.
    here = machine_info()
    elsewhere = {**here, "hostname": "elsewhere", "cpu": "Another CPU", "torch_threads": 7}
    made = {("contrastive", s): [here] * 3 for s in SEEDS} | {("entropy", 0): [here, here, elsewhere]}
    for (strategy, seed), machines in made.items():
        path = sweep_dir / "runs" / f"strategy={strategy},seed={seed}" / "results.json"
        res = json.loads(path.read_text())
        for c, machine in zip(res["cycles"], machines):
            c["machine"] = machine
        path.write_text(json.dumps(res))
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), "--baseline", "entropy", "--markdown", "--json", str(tmp_path / "r.json"),
              "--out", str(tmp_path / "r.png")])  # fmt: skip
    assert e.value.code == 0
    lines = capsys.readouterr().out.rstrip().splitlines()[-4:]
    # Beside the report's own line, one per machine that made cycles, in the order the grid meets them.
    described = made_on(here).removeprefix("Made on ").removesuffix(".")  # CPU, cores, GPU, platform, libraries
    assert lines[0] == (f"Runs made on: {here['hostname']}, {described}, {here['torch_threads']} torch threads "
                        f"(11 run-cycles).")  # fmt: skip
    assert lines[1].startswith("Runs made on: elsewhere, Another CPU (")
    assert lines[1].endswith(", 7 torch threads (1 run-cycle).")
    assert lines[2] == "Runs made on: a machine they did not record (15 run-cycles, made before runs recorded it)."
    assert lines[3] == made_on(machine_info())
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["run_machines"] == [{"machine": here, "cycles": 11}, {"machine": elsewhere, "cycles": 1},
                                    {"machine": None, "cycles": 15}]  # fmt: skip


def test_a_cycles_table_older_than_the_stages_says_n_a(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    path = sweep_dir / "cycles.parquet"
    pd.read_parquet(path).drop(columns=["strategy_seconds"]).to_parquet(path, index=False)
    with pytest.raises(SystemExit) as e:
        main(["report", str(sweep_dir), "--baseline", "entropy", "--markdown", "--out", str(tmp_path / "r.png")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for strategy in ("entropy", "contrastive", "random"):
        assert next(ln for ln in out.splitlines() if ln.startswith(f"| {strategy} |")).endswith(" | n/a |")


def test_query_lines_that_are_no_record_or_no_class_are_named(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps(q(2, 1, 5)) + "\n" + json.dumps(q(2, 3, 5)) + "\n")
    with pytest.raises(FastalError, match=r"queries.jsonl:2: class 3 is no class of the run \(0..2, -1 = no labelled"):
        query_counts(path, 3, len(CLASSES))
    path.write_text(json.dumps(q(2, 1, 5)) + "\n" + '{"cycle": "2", "class": 1, "pixels": 5}\n')
    with pytest.raises(FastalError, match=r"queries.jsonl:2: not a query record"):
        query_counts(path, 3, len(CLASSES))
    path.write_text("not json\n")
    with pytest.raises(FastalError, match=r"queries.jsonl:1: not a query record"):
        query_counts(path, 3, None)
    assert query_counts(tmp_path / "none.jsonl", 3, 3) == ({}, {})
