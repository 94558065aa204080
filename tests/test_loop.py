"""The active-learning loop end to end on a tiny synthetic setup: a run, resumes after SIGKILL
at several points (compared with an uninterrupted run), and a round with people as the oracle."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fastal.select.pixel_budget
from fastal.cli import main
from fastal.config import SCHEDULE_KEYS, dumps_toml, make_config
from fastal.data import load_dataset
from fastal.data.superpixels import build_cache
from fastal.errors import FastalError
from fastal.loop import run_experiment
from fastal.labelling.query_round import check_round
from fastal.machine import machine_info
from fastal.oracle import SimulatedOracle
from fastal.pool import RegionPool
from fastal.run_report import CYCLE_KEYS, RESULT_KEYS, read_results
from fastal.select.selection_table import SCHEMA, read_table
from fastal.testing import run_differences

ROOT = Path(__file__).resolve().parents[1]
def test_run_end_to_end(reference: Path, tiny: dict) -> None:
    res = json.loads((reference / "results.json").read_text())
    assert (res["dataset"], res["strategy"], res["seed"], res["full_miou"]) == ("synthetic", "contrastive", 3, None)
    assert res["stopped"] == "budget"
    assert [c["cycle"] for c in res["cycles"]] == [1, 2]
    pool = RegionPool.load(reference / "pool.npz")
    # Independent check of the accounting: recount from the pool state and the cache sizes.
    cache = build_cache(load_dataset("synthetic", split="train", num_images=8, size=(32, 48)),
                        superpixels=12, cache_dir=tiny["cache_dir"], show_progress=False)
    np.testing.assert_array_equal(pool.sizes, cache.sizes)
    assert set(RESULT_KEYS) <= set(res)
    for c in res["cycles"]:
        assert set(CYCLE_KEYS) <= set(c)
        mine = (pool.state > 0) & (pool.state <= c["cycle"])
        assert c["labelled_superpixels"] == mine.sum()
        assert c["labelled_pixel_fraction"] == pytest.approx(cache.sizes[mine].sum() / cache.sizes.sum())
        assert c["cost_clicks"] == mine.sum()  # dominant labels: one click per superpixel
        assert 0.0 <= c["miou"] <= 1.0 and len(c["per_class_iou"]) == 11
        assert c["train_seconds"] > 0 and c["select_seconds"] >= 0
        # Every stage of the cycle: seconds and this process's peak memory (a test process: > 50 MB).
        want = {"select", "oracle", "commit", "train", "evaluate"} | ({"load", "score", "write"} if c["cycle"] > 1 else set())
        assert set(c["stages"]) == want
        assert all(st["seconds"] >= 0 and 0.05 < st["peak_rss_gb"] <= c["peak_rss_gb"] for st in c["stages"].values())
        assert c["peak_rss_gb"] == max(st["peak_rss_gb"] for st in c["stages"].values())
    assert {"data", "superpixels", "check"} <= set(res["setup"])
    per_cycle = np.bincount(pool.state, minlength=3)[1:]
    assert per_cycle[0] >= 1 and per_cycle[1] >= 1 and res["superpixels_per_cycle"] == round(0.05 * pool.num_superpixels)
    # Each cycle reaches its cumulative % of pixels (25, then 30) with its last superpixel,
    # not before: the budget is pixels, whatever the strategy's regions weigh.
    total = cache.sizes.sum()
    first = cache.sizes[pool.state == 1]  # the initial set is logged sorted: any may be the last drawn
    assert first.sum() >= 0.25 * total > first.sum() - first.max()
    # Cycle 2 (contrastive, cluster_budget "fit"): k chosen so that every cluster's pick fits the
    # missing pixels, all k kept (one per cluster); the shortfall is left to a next cycle.
    upto, c2 = cache.sizes[pool.state > 0].sum(), res["cycles"][1]
    assert upto <= 0.30 * total
    assert c2["k"] == np.count_nonzero(pool.state == 2) and c2["clusters_kept"] == 1.0 and c2["kmeans_fits"] >= 1
    assert res["cycles"][0]["k"] is None  # the random initial set has no clusters
    # The query log is the pool, line by line, with the oracle's answers.
    lines = [json.loads(line) for line in (reference / "queries.jsonl").read_text().splitlines()]
    assert [r["superpixel"] for r in lines] == pool.order.tolist()
    assert len(set(pool.order.tolist())) == len(lines) == pool.num_labelled
    truth = SimulatedOracle(load_dataset("synthetic", split="train", num_images=8, size=(32, 48)), cache)
    answer = truth.query(pool.order)
    assert [r["class"] for r in lines] == answer.classes.tolist()
    assert (reference / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (reference / "config.toml").read_text() == dumps_toml(make_config(tiny).__dict__)
    # Only the last checkpoint is kept.
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["cycle-2.pt"]


def test_selection_table_explains_the_cycle(reference: Path, tiny: dict) -> None:
    assert sorted(p.name for p in (reference / "selection").iterdir()) == ["cycle-2.parquet", "embedding-cycle-2.png"]
    assert (reference / "selection" / "embedding-cycle-2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = read_table(reference / "selection" / "cycle-2.parquet")
    assert list(t.columns) == list(SCHEMA)
    pool = RegionPool.load(reference / "pool.npz")
    ds = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    cache = build_cache(ds, superpixels=12, cache_dir=tiny["cache_dir"], show_progress=False)
    # One row per superpixel unlabelled when cycle 2 began (all of them lie in scored images).
    np.testing.assert_array_equal(t["superpixel"], np.flatnonzero(pool.state != 1))
    np.testing.assert_array_equal(t["image"], cache.image_of(t["superpixel"].to_numpy()))
    np.testing.assert_array_equal(t["pixels"], cache.sizes[t["superpixel"]])
    # The picks in rank order are cycle 2's queries in order, with the oracle's dominant class.
    picks = t[t["rank"] >= 0].sort_values("rank")
    lines = [json.loads(line) for line in (reference / "queries.jsonl").read_text().splitlines()]
    np.testing.assert_array_equal(picks["superpixel"], [r["superpixel"] for r in lines if r["cycle"] == 2])
    np.testing.assert_array_equal(picks["class"], [r["class"] for r in lines if r["cycle"] == 2])
    truth = SimulatedOracle(ds, cache, mode="dominant").query(picks["superpixel"].to_numpy())
    np.testing.assert_array_equal(picks["class"], truth.classes)
    assert (picks["round"] == 0).all() and (t.loc[t["rank"] < 0, ["round", "class"]] == -1).all(axis=None)
    # contrastive: every candidate has its UMAP point and KMeans cluster; each pick its own cluster.
    assert t["x"].notna().all() and t["y"].notna().all() and (t["cluster"] >= 0).all()
    assert picks["cluster"].is_unique


def test_resume_of_finished_run_changes_nothing(reference: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    run_experiment(None, copy, resume=True)
    assert (copy / "results.json").read_text() == (reference / "results.json").read_text()


def test_each_cycle_records_the_machine_that_made_it(reference: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    here = machine_info()
    for c in read_results(reference)["cycles"]:  # torch_threads: whatever this process had then
        assert {**c["machine"], "torch_threads": None} == {**here, "torch_threads": None}
        assert c["machine"]["torch_threads"] >= 1
    # Cycle 2 trained and not evaluated (a kill left it so), then resumed on another machine: its
    # record names that one, cycle 1's stays.
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    res = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**res, "stopped": None, "cycles": res["cycles"][:1]}))
    elsewhere = {**here, "hostname": "elsewhere", "cpu": "Another CPU", "torch_threads": 7}
    monkeypatch.setattr("fastal.loop.machine_info", lambda: elsewhere)
    run_experiment(None, run_dir, resume=True)
    cycles = read_results(run_dir)["cycles"]
    assert [c["machine"] for c in cycles] == [res["cycles"][0]["machine"], elsewhere]
    assert cycles[1]["miou"] == res["cycles"][1]["miou"]


def fastal_cli(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTAL_CRASH_AT": crash_at or ""}
    return subprocess.run([sys.executable, "-m", "fastal", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_resume_after_sigkill_anywhere(reference: Path, tiny: dict, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(tiny))
    run_dir = tmp_path / "run"
    # First kill: at a random moment after the initial set is committed (within cycle 1's
    # training, which takes longer than the delay: a redone training must give the same model).
    env = {**os.environ, "FASTAL_CRASH_AT": ""}
    proc = subprocess.Popen([sys.executable, "-m", "fastal", "run", str(config), "--out", str(run_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "pool.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(float(np.random.default_rng().uniform(0.0, 1.0)))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # Then each resumed process dies at a commit point of cycle 2: after the selection table
    # (before the query log), half-way through the query log (before the pool commit), after the
    # checkpoint (before the results).
    for point in ["table:2", "queries:2", "ckpt:2"]:
        p = fastal_cli("run", "--resume", str(run_dir), crash_at=point)
        assert p.returncode == -signal.SIGKILL, (point, p.stderr)
        if point == "table:2":  # the table is there, the cycle is not: it is redone, table and all
            assert (run_dir / "selection" / "cycle-2.parquet").exists()
            assert RegionPool.load(run_dir / "pool.npz").current_cycle == 1
        if point == "queries:2":
            logged = len((run_dir / "queries.jsonl").read_text().splitlines())
            assert logged > RegionPool.load(run_dir / "pool.npz").num_labelled  # lines without commit
    p = fastal_cli("run", "--resume", str(run_dir))
    assert p.returncode == 0, p.stderr
    assert run_differences(reference, run_dir) == []


def test_people_round_trip(reference: Path, tiny: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    run_dir, round_dir = tmp_path / "run", tmp_path / "round"
    shutil.copytree(reference, run_dir)
    with pytest.raises(SystemExit) as e:
        main(["select", "--run", str(run_dir), "--budget", "3", "--out", str(round_dir)])
    assert e.value.code == 0
    q = json.loads((round_dir / "queries.json").read_text())
    rows = q["queries"]
    assert len(rows) == 3 and q["classes"][0] == "sky"
    pool = RegionPool.load(run_dir / "pool.npz")
    gids = np.array([r["superpixel"] for r in rows])
    assert not pool.labelled_mask[gids].any()
    ds = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    cache = build_cache(ds, superpixels=12, cache_dir=tiny["cache_dir"], show_progress=False)
    csv_lines = (round_dir / "queries.csv").read_text().splitlines()
    assert csv_lines[0] == "image,image_id,superpixel,local,x0,y0,x1,y1,pixels" and len(csv_lines) == 4
    for r in rows:
        ys, xs = np.nonzero(cache.local(r["image"]) == r["local"])
        assert [r["x0"], r["y0"], r["x1"], r["y1"]] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert r["pixels"] == cache.sizes[r["superpixel"]] == xs.size
        assert r["superpixel"] == cache.offsets[r["image"]] + r["local"]
    overlays = sorted(p.stem for p in (round_dir / "overlays").iterdir())
    assert overlays == sorted({r["image_id"] for r in rows})
    # The round's selection table: the unlabelled candidates, the 3 picks ranked, no class yet.
    t = read_table(round_dir / "selection.parquet")
    np.testing.assert_array_equal(t["superpixel"], np.flatnonzero(~pool.labelled_mask))
    picks = t[t["rank"] >= 0].sort_values("rank")
    assert sorted(picks["superpixel"]) == sorted(gids) and picks["rank"].tolist() == [0, 1, 2]
    assert (t["class"] == -1).all()

    # A disk that fills while the overlays are written: one line naming the round, no round left.
    def no_space(path: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as patch, pytest.raises(SystemExit) as e:
        patch.setattr(Path, "write_bytes", no_space)
        main(["select", "--run", str(run_dir), "--budget", "3", "--out", str(tmp_path / "full")])
    assert e.value.code == 2
    assert f"cannot write {tmp_path / 'full'}: No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round", "run"]

    # Missing masks: one clear error naming the file, the pool untouched.
    with pytest.raises(SystemExit) as e:
        main(["label", "import", str(round_dir), "--run", str(run_dir)])
    assert e.value.code == 2 and "masks/" in capsys.readouterr().err
    assert np.array_equal(RegionPool.load(run_dir / "pool.npz").state, pool.state)

    # A person returns masks: here the ground truth, except one superpixel painted class 7.
    import cv2

    painted = rows[0]
    for i in {r["image"] for r in rows}:
        mask = ds[i][1].copy()
        if i == painted["image"]:
            mask[cache.local(i) == painted["local"]] = 7
        cv2.imwrite(str(round_dir / "masks" / f"{ds.image_id(i)}.png"), mask)
    with pytest.raises(SystemExit) as e:
        main(["label", "import", str(round_dir), "--run", str(run_dir)])
    assert e.value.code == 0
    after = RegionPool.load(run_dir / "pool.npz")
    assert np.array_equal(np.flatnonzero(after.state == 3), np.sort(gids))
    expect = SimulatedOracle(ds, cache).query(gids).classes
    expect[0] = 7
    assert after.classes[gids].tolist() == expect.tolist()
    lines = (run_dir / "queries.jsonl").read_text().splitlines()
    assert len(lines) == after.num_labelled and json.loads(lines[-1])["cycle"] == 3
    # The same round again, before that cycle is trained: what is wrong is that it is in
    # already, not that the cycle is untrained.
    with pytest.raises(SystemExit) as e:
        main(["label", "import", str(round_dir), "--run", str(run_dir)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "queries.json: superpixels already labelled (in cycles [3, 3, 3])" in err
    # The resumed run trains and evaluates the imported cycle, and selects nothing more.
    res = run_experiment(None, run_dir, resume=True)
    assert [c["cycle"] for c in res["cycles"]] == [1, 2, 3]
    assert res["cycles"][-1]["labelled_superpixels"] == after.num_labelled
    assert RegionPool.load(run_dir / "pool.npz").num_labelled == after.num_labelled
    # Importing the same round again would label superpixels twice.
    with pytest.raises(SystemExit) as e:
        main(["label", "import", str(round_dir), "--run", str(run_dir)])
    assert e.value.code == 2 and "already labelled" in capsys.readouterr().err


def test_budget_schedule_and_its_resume(reference: Path, tiny: dict, tmp_path: Path, monkeypatch) -> None:
    # A random 25 %, then cycles of 5 % and 10 % of the pixels; entropy: no UMAP to wait for.
    # Per-pixel entropy prefers small regions: the first ranking falls short, and the cycle asks again.
    values = {k: v for k, v in tiny.items() if k not in SCHEDULE_KEYS}
    values.update(strategy="entropy", budgets=[25.0, 30.0, 40.0], region_entropy="mean", selection_table="picked",
                  selection_plot=False)
    uninterrupted = tmp_path / "ref"
    budgets_asked: list[int] = []
    real_select = fastal.select.pixel_budget.select

    def spy(*args, **kwargs):
        budgets_asked.append(kwargs["budget"])
        return real_select(*args, **kwargs)

    monkeypatch.setattr(fastal.select.pixel_budget, "select", spy)  # what the policy calls
    res = run_experiment(make_config(values), uninterrupted)
    assert len(budgets_asked) > 2, budgets_asked  # 2 cycles, and at least one asked twice
    pool = RegionPool.load(uninterrupted / "pool.npz")
    n = pool.num_superpixels
    assert res["cycle_superpixels"] == [round(0.05 * n), round(0.10 * n)]  # the plan, at the mean size
    assert res["superpixels_per_cycle"] is None  # cycles of different sizes
    for cycle, pct in ((2, 30.0), (3, 40.0)):  # each cycle's last pick reaches its target, not before
        upto = pool.sizes[(pool.state > 0) & (pool.state <= cycle)].sum()
        last = pool.order[np.flatnonzero(pool.state[pool.order] == cycle)[-1]]
        assert upto >= pct / 100 * pool.total_pixels > upto - pool.sizes[last], cycle
    first = pool.sizes[pool.state == 1]
    assert first.sum() >= 0.25 * pool.total_pixels > first.sum() - first.max()
    # selection_table = "picked": each cycle's table holds its queries, in order, with the round
    # that picked each; entropy has no embedding.
    rounds = []
    for cycle in (2, 3):
        t = read_table(uninterrupted / "selection" / f"cycle-{cycle}.parquet")
        np.testing.assert_array_equal(t["superpixel"], pool.order[pool.state[pool.order] == cycle])
        np.testing.assert_array_equal(t["rank"], np.arange(len(t)))
        assert t["x"].isna().all() and (t["cluster"] == -1).all() and (np.diff(t["round"]) >= 0).all()
        rounds.append(int(t["round"].max()) + 1)
    assert sum(rounds) == len(budgets_asked), (rounds, budgets_asked)  # every round's picks kept some
    assert not list((uninterrupted / "selection").glob("*.png"))  # selection_plot = false
    assert res["budgets"] == [c["budget_pct"] for c in res["cycles"]] == [25.0, 30.0, 40.0]
    assert res["stopped"] == "budget" and len(res["cycles"]) == 3
    # The uniform spelling records its schedule the same way.
    ref = json.loads((reference / "results.json").read_text())
    assert ref["budgets"] == [c["budget_pct"] for c in ref["cycles"]] == [25.0, 30.0]
    # Killed half-way through cycle 3's query log (the schedule's last step), resumed: the same run.
    config = tmp_path / "schedule.toml"
    config.write_text(dumps_toml(values))
    run_dir = tmp_path / "run"
    p = fastal_cli("run", str(config), "--out", str(run_dir), crash_at="queries:3")
    assert p.returncode == -signal.SIGKILL, p.stderr
    logged = len((run_dir / "queries.jsonl").read_text().splitlines())
    assert logged > RegionPool.load(run_dir / "pool.npz").num_labelled == np.count_nonzero(np.isin(pool.state, [1, 2]))
    run_experiment(None, run_dir, resume=True)
    assert run_differences(uninterrupted, run_dir) == []


def test_shared_reference_trained_once_then_checked(tiny: dict, tmp_path: Path) -> None:
    shared = tmp_path / "refs" / "seed3-full.json"
    base = {**tiny, "full_reference": True, "full_shared": str(shared), "strategy": "random", "cycles": 0}
    a = run_experiment(make_config(base), tmp_path / "a")
    ref = json.loads(shared.read_text())
    assert a["full_miou"] == ref["miou"] and 0.0 <= ref["miou"] <= 1.0
    assert ref["trained_with"]["seed"] == 3 and ref["trained_with"]["epochs"] == 3
    assert json.loads((tmp_path / "a" / "full.json").read_text()) == {**ref, "shared": str(shared)}
    # Another strategy and schedule reads it: the marker value shows it is not trained again.
    shared.write_text(json.dumps({**ref, "miou": 0.123456}))
    values = {k: v for k, v in base.items() if k not in SCHEDULE_KEYS}
    b = run_experiment(make_config({**values, "strategy": "entropy", "budgets": [25.0]}), tmp_path / "b")
    assert b["full_miou"] == 0.123456 and b["cycles"][0]["budget_pct"] == 25.0
    # A run that would train it otherwise is refused before its directory exists.
    with pytest.raises(FastalError, match="seed3-full.json: this shared reference was trained with epochs = 3, "
                                          "this run has 4"):  # fmt: skip
        run_experiment(make_config({**base, "epochs": 4}), tmp_path / "c")
    with pytest.raises(FastalError, match="trained on other train data"):
        run_experiment(make_config({**base, "train_images": 7}), tmp_path / "c")
    assert not (tmp_path / "c").exists()
    shared.write_text('{"miou": 0.5}')
    with pytest.raises(FastalError, match="not a fully supervised reference written by fastal run"):
        run_experiment(make_config(base), tmp_path / "c")


def test_what_training_would_find_late_is_refused_before_the_run_exists(tiny: dict, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    base = {**tiny, "strategy": "random"}
    cases = [
        ({"engine": "cuml"}, "--engine cuml needs a CUDA device"),
        ({"weights": str(tmp_path / "missing.pt")}, "missing.pt does not exist"),
        ({"full_reference": True, "full_shared": str(tmp_path / "file" / "ref.json")}, "file is a file, not a dir"),
    ]  # fmt: skip
    for change, message in cases:
        with pytest.raises(FastalError, match=message):
            run_experiment(make_config({**base, **change}), tmp_path / "run")
        assert not (tmp_path / "run").exists(), change


def test_resume_refuses_results_that_are_not_an_object(reference: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    (copy / "results.json").write_text("[1, 2]")
    with pytest.raises(FastalError, match="results.json: expected a JSON object, found list"):
        run_experiment(None, copy, resume=True)


def test_check_round_names_what_is_wrong(tmp_path: Path) -> None:
    q = tmp_path / "queries.json"
    good = {"superpixel": 4, "image": 1, "local": 2}
    check_round({"queries": [good]}, q, 2)
    for bad, message in [
        ([good], "non-empty list"),
        ({"rows": [good]}, "non-empty list"),
        ({"queries": []}, "non-empty list"),
        ({"queries": [{"superpixel": 4, "local": 2}]}, "lacks an integer superpixel, image or local"),
        ({"queries": [{**good, "image": "1"}]}, "lacks an integer"),
        ({"queries": [{**good, "image": 2}]}, r"image 2 is not in 0..1"),
    ]:
        with pytest.raises(FastalError, match=message):
            check_round(bad, q, 2)


def test_prefix_budget_and_bank_per_cycle_and_their_resume(tiny: dict, tmp_path: Path, monkeypatch) -> None:
    # kmeans-entropy under cluster_budget "prefix" (the old cut: each cycle reaches its target with
    # its last pick, some clusters lose theirs) and bank_lifetime "cycle" (each cycle's training
    # starts from the last model with an empty bank); killed after cycle 2's training, resumed.
    import fastal.train

    values = {**tiny, "strategy": "kmeans-entropy", "cluster_budget": "prefix", "bank_lifetime": "cycle",
              "keep_checkpoints": True}  # fmt: skip
    entered: list[tuple[int, int]] = []  # (optimiser steps, bank entries) as each cycle's training starts
    real_fit = fastal.train.Trainer.fit

    def spy(self, *args, **kwargs):
        entered.append((self.step, int(self.bank.count.sum())))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(fastal.train.Trainer, "fit", spy)
    uninterrupted = tmp_path / "ref"
    res = run_experiment(make_config(values), uninterrupted)
    assert len(entered) == 2 and entered[1][0] > 0  # cycle 2 fine-tunes cycle 1's model ...
    assert [bank for _, bank in entered] == [0, 0]  # ... with an empty bank
    for cycle in (1, 2):  # yet the bank each checkpoint holds (the next selection's) is filled
        ck = torch.load(uninterrupted / f"checkpoints/cycle-{cycle}.pt", map_location="cpu", weights_only=True)
        assert int(ck["bank"]["count"].sum()) > 0
    pool = RegionPool.load(uninterrupted / "pool.npz")
    upto, last = pool.sizes[pool.state > 0].sum(), pool.sizes[pool.order[-1]]
    assert upto >= 0.30 * pool.total_pixels > upto - last  # the prefix reaches the target with its last pick
    rec, picked = res["cycles"][1], np.count_nonzero(pool.state == 2)
    assert 0 < rec["clusters_kept"] <= 1 and rec["k"] >= picked
    assert round(rec["clusters_kept"] * rec["k"]) == picked  # each kept pick is a cluster's
    config = tmp_path / "c.toml"
    config.write_text(dumps_toml(values))
    run_dir = tmp_path / "run"
    p = fastal_cli("run", str(config), "--out", str(run_dir), crash_at="trained:2")
    assert p.returncode == -signal.SIGKILL, p.stderr
    run_experiment(None, run_dir, resume=True)
    assert run_differences(uninterrupted, run_dir) == []


def test_reference_killed_between_epochs_goes_on_to_the_same_model(tiny: dict, tmp_path: Path, monkeypatch) -> None:
    # A lost sweep worker kills a reference mid-training: the next attempt trains only the epochs
    # left, from the last epoch's checkpoint, and ends with the uninterrupted reference's mIoU.
    import fastal.train
    from fastal.train import Trainer

    trained = []  # epochs trained, reference and cycles
    real_epoch = fastal.train.train_one_epoch
    monkeypatch.setattr(fastal.train, "train_one_epoch", lambda *a, **k: trained.append(1) or real_epoch(*a, **k))
    cfg = {**tiny, "full_reference": True, "strategy": "random", "cycles": 0}
    whole = run_experiment(make_config(cfg), tmp_path / "whole")
    assert json.loads((tmp_path / "whole" / "full.json").read_text())["trained_with"]["epochs"] >= 2
    epochs_whole = len(trained)

    class Killed(Exception):
        pass

    real_save = Trainer.save

    def save_then_die(self: Trainer, path) -> None:
        real_save(self, path)
        if self.epoch == 1:
            raise Killed

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Killed):
        run_experiment(make_config(cfg), tmp_path / "killed")
    partial = tmp_path / "killed" / "checkpoints" / "reference-partial.pt"
    assert torch.load(partial, map_location="cpu", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "killed" / "full.json").exists()
    monkeypatch.setattr(Trainer, "save", real_save)
    trained.clear()
    resumed = run_experiment(None, tmp_path / "killed", resume=True)
    assert len(trained) == epochs_whole - 1  # the reference's first epoch is not trained again
    assert resumed["full_miou"] == whole["full_miou"]
    a, b = (json.loads((tmp_path / d / "full.json").read_text()) for d in ("whole", "killed"))
    assert a["per_class_iou"] == b["per_class_iou"] and a["train_seconds"] > 0 and b["train_seconds"] > 0
    assert not partial.exists()
