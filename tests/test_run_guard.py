"""One writer per run directory, and a run directory that checks itself: each case on the tiny
synthetic run of the loop tests. A second writer, a damaged or edited run
directory and bad input all get one line and exit 2, and leave every file as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_loop import ROOT

from fastal.cli import main
from fastal.config import dumps_toml, make_config
from fastal.data import load_dataset
from fastal.data.superpixels import build_cache
from fastal.errors import FastalError, RunDirLocked
from fastal.loop import run_experiment
from fastal.oracle import SimulatedOracle
from fastal.pool import RegionPool
from fastal.testing import reproducible, run_differences


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of an in-process `fastal` command."""
    capsys.readouterr()  # what was printed before is not this command's
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The one line of the error: the last line, and the only one saying error (a run prints its
    progress before it), with no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` but the lock (its holder's pid), byte for byte."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "run.lock"}  # fmt: skip


def copy_of(reference: Path, tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    shutil.copytree(reference, run_dir)
    return run_dir


def start_frozen(*args: str) -> subprocess.Popen:
    """A `fastal` process, stopped (SIGSTOP) as soon as it holds its run directory's lock."""
    run_dir = Path(args[args.index("--resume") + 1] if "--resume" in args else args[args.index("--out") + 1])
    # A shell's background job inherits SIGINT ignored, and Python then leaves Ctrl-C ignored: the
    # child must start with SIGINT handled as a terminal's foreground job has it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "fastal", *args], cwd=ROOT,
                                env={**os.environ, "FASTAL_CRASH_AT": ""}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    lock = run_dir / "run.lock"
    while proc.poll() is None and not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
        time.sleep(0.01)
    assert proc.poll() is None, f"the process ended without ever holding {lock}: {proc.stderr.read()}"
    proc.send_signal(signal.SIGSTOP)
    return proc


def resume_frozen(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
    return err


def make_round(run_dir: Path, round_dir: Path, tiny: dict, capsys, paint: int | None = None) -> list[dict]:
    """A `fastal select` round of 3 superpixels on ``run_dir``, its masks filled from the ground truth
    (``paint``: the first queried superpixel painted that class instead)."""
    code, err = cli(["select", "--run", run_dir, "--budget", "3", "--out", round_dir], capsys)
    assert code == 0, err
    write_masks(round_dir, tiny, paint)
    return json.loads((round_dir / "queries.json").read_text())["queries"]


def write_masks(round_dir: Path, tiny: dict, paint: int | None) -> None:
    rows = json.loads((round_dir / "queries.json").read_text())["queries"]
    ds = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    cache = build_cache(ds, superpixels=12, cache_dir=tiny["cache_dir"], show_progress=False)
    for i in {r["image"] for r in rows}:
        mask = ds[i][1].copy()
        if paint is not None and i == rows[0]["image"]:
            mask[cache.local(i) == rows[0]["local"]] = paint
        cv2.imwrite(str(round_dir / "masks" / f"{ds.image_id(i)}.png"), mask)


@pytest.fixture(scope="module")
def full_run(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run in full label mode (masks people return are kept in labels/): the initial set only."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    run_experiment(make_config({**tiny, "labels": "full", "strategy": "random", "cycles": 0}), run_dir)
    return run_dir


# ---- item 2: two resumes at once --------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first(reference: Path, tiny: dict, tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(tiny))
    run_dir = tmp_path / "run"
    first = start_frozen("run", str(config), "--out", str(run_dir))
    try:
        before = snapshot(run_dir)
        code, err = cli(["run", "--resume", run_dir], capsys)
        assert code == 2 and f"{run_dir}: in use by another fastal process (pid {first.pid})" in one_line(err)
        with pytest.raises(RunDirLocked):  # what a sweep's retried task gets, in the API
            run_experiment(None, run_dir, resume=True)
        assert snapshot(run_dir) == before
    finally:
        err = resume_frozen(first)
    assert first.returncode == 0, err
    # The first run went on alone: the same run as an uninterrupted one, no query twice.
    assert run_differences(reference, run_dir) == []
    lines = (run_dir / "queries.jsonl").read_text().splitlines()
    assert len({json.loads(line)["superpixel"] for line in lines}) == len(lines)


# ---- item 1: a label import during a resume ---------------------------------------------------
def test_an_import_during_a_resume_is_refused_and_nothing_is_lost(reference: Path, tiny: dict, tmp_path: Path,
                                                                   capsys) -> None:  # fmt: skip
    run_dir, round_dir = copy_of(reference, tmp_path), tmp_path / "round"
    rows = make_round(run_dir, round_dir, tiny, capsys)
    edit_results(run_dir, lambda r: r["cycles"].pop())  # cycle 2 trained, not evaluated: the resume has work
    resume = start_frozen("run", "--resume", str(run_dir))
    try:
        before = snapshot(run_dir)
        code, err = cli(["label", "import", round_dir, "--run", run_dir], capsys)
        assert code == 2 and f"(pid {resume.pid})" in one_line(err)
        assert snapshot(run_dir) == before
    finally:
        err = resume_frozen(resume)
    assert resume.returncode == 0, err
    # Once the resume has ended, the import goes in, and the next resume trains on it.
    code, err = cli(["label", "import", round_dir, "--run", run_dir], capsys)
    assert code == 0, err
    res = run_experiment(None, run_dir, resume=True)
    gids = sorted(r["superpixel"] for r in rows)
    assert [c["cycle"] for c in res["cycles"]] == [1, 2, 3]
    pool = RegionPool.load(run_dir / "pool.npz")
    assert np.flatnonzero(pool.state == 3).tolist() == gids
    logged = [json.loads(line) for line in (run_dir / "queries.jsonl").read_text().splitlines()]
    assert sorted(r["superpixel"] for r in logged if r["cycle"] == 3) == gids


# ---- item 3: a rejected re-import -------------------------------------------------------------
def test_a_rejected_reimport_leaves_labels_byte_identical(full_run: Path, tiny: dict, tmp_path: Path,
                                                          capsys) -> None:  # fmt: skip
    run_dir, round_dir = copy_of(full_run, tmp_path), tmp_path / "round"
    make_round(run_dir, round_dir, tiny, capsys)
    code, err = cli(["label", "import", round_dir, "--run", run_dir], capsys)
    assert code == 0, err
    run_experiment(None, run_dir, resume=True)
    before = snapshot(run_dir)
    assert any(name.startswith("labels/") for name in before)
    write_masks(round_dir, tiny, paint=7)  # changed masks for the same round
    code, err = cli(["label", "import", round_dir, "--run", run_dir], capsys)
    assert code == 2 and "queries.json: superpixels already labelled (in cycles [2, 2, 2])" in one_line(err)
    assert snapshot(run_dir) == before


# ---- item 4: results.json emptied or deleted --------------------------------------------------
@pytest.mark.parametrize("damage", ["{}", "", None])
def test_results_lost_after_the_pool_went_on_is_refused(reference: Path, tmp_path: Path, capsys,
                                                        damage: str | None) -> None:  # fmt: skip
    run_dir = copy_of(reference, tmp_path)
    if damage is None:
        (run_dir / "results.json").unlink()
    else:
        (run_dir / "results.json").write_text(damage)
    before = snapshot(run_dir)
    code, err = cli(["run", "--resume", run_dir], capsys)
    assert code == 2, err
    assert "results.json: is missing or empty, but" in one_line(err) and "pool.npz labels cycles 1..2" in err
    assert snapshot(run_dir) == before


def test_what_the_other_files_determine_is_rebuilt_and_contradictions_refused(
    reference: Path, full_run: Path, tmp_path: Path, capsys
) -> None:
    # results.json lost before a second cycle: cycle 1's model is there, its evaluation is redone.
    run_dir = copy_of(full_run, tmp_path, "one")
    want = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").unlink()
    (run_dir / "queries.jsonl").write_text("")  # and the query log emptied: rebuilt from the pool
    run_experiment(None, run_dir, resume=True)
    assert reproducible(json.loads((run_dir / "results.json").read_text())) == reproducible(want)
    assert (run_dir / "queries.jsonl").read_text() == (full_run / "queries.jsonl").read_text()
    # What contradicts the pool is refused, naming both files.
    cases = [
        (lambda d: edit_results(d, lambda r: r["cycles"][1].update(labelled_superpixels=1)),
         "results.json: cycle 2 counts 1 labelled superpixels, "),
        (lambda d: edit_results(d, lambda r: r["cycles"].append({**r["cycles"][1], "cycle": 3})),
         "pool.npz: labels cycles 1..2, but "),
        (lambda d: (d / "checkpoints" / "cycle-2.pt").rename(d / "checkpoints" / "cycle-7.pt"),
         "cycle-7.pt: a model of cycle 7, but "),
    ]  # fmt: skip
    for k, (damage, message) in enumerate(cases):
        run_dir = copy_of(reference, tmp_path, f"case{k}")
        damage(run_dir)
        before = snapshot(run_dir)
        code, err = cli(["run", "--resume", run_dir], capsys)
        assert code == 2 and message in one_line(err), err
        assert snapshot(run_dir) == before


def edit_results(run_dir: Path, change) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    change(res)
    (run_dir / "results.json").write_text(json.dumps(res))


# ---- item 5: config.toml edited during a run --------------------------------------------------
def test_an_edited_config_is_refused_unless_accepted_and_then_recorded(reference: Path, tmp_path: Path,
                                                                       capsys) -> None:  # fmt: skip
    run_dir = copy_of(reference, tmp_path)
    config = run_dir / "config.toml"
    text = config.read_text()
    config.write_text(text.replace("cycles = 1\n", "cycles = 2\n").replace('strategy = "contrastive"',
                                                                           'strategy = "entropy"'))
    before = snapshot(run_dir)
    code, err = cli(["run", "--resume", run_dir], capsys)
    assert code == 2 and "config.toml: changed since the run began (cycles, strategy)" in one_line(err)
    assert snapshot(run_dir) == before
    code, err = cli(["run", "--accept-config-change", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "--accept-config-change goes with --resume" in one_line(err)
    # Accepted: recorded, the results describe the run as it now is, and the run goes on under it.
    code, err = cli(["run", "--resume", run_dir, "--accept-config-change"], capsys)
    assert code == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    assert res["config_changes"] == [{"from_cycle": 3, "changed": {"cycles": [1, 2],
                                                                    "strategy": ["contrastive", "entropy"]}}]
    assert res["strategy"] == "entropy" and res["budgets"] == [25.0, 30.0, 35.0]
    assert [c["cycle"] for c in res["cycles"]] == [1, 2, 3] and res["stopped"] == "budget"
    ref = json.loads((reference / "results.json").read_text())
    assert reproducible(res)["cycles"][:2] == reproducible(ref)["cycles"]
    code, err = cli(["run", "--resume", run_dir], capsys)  # the accepted config is the one checked now
    assert code == 0, err


# ---- item 6: tracebacks -----------------------------------------------------------------------
def test_a_negative_seed_is_refused_before_the_run_exists(tiny: dict, tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text(dumps_toml(tiny))
    code, err = cli(["run", config, "--out", tmp_path / "run", "--seed", "-1"], capsys)
    assert code == 2 and "seed = -1: must be in 0..2**63-1" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
    code, err = cli(["run", config, "--out", tmp_path / "run", "--seed", "1", "--cycles", "0"], capsys)
    assert code == 0, err  # the retry is not blocked by a half-made run folder


def test_config_files_that_are_not_toml_text(tmp_path: Path, capsys) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('strategy = "entropie-r\xe9gion"\n'.encode("latin-1"))
    code, err = cli(["run", latin1, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "latin1.toml: not UTF-8 text (byte 0xe9 at offset 22)" in one_line(err)
    code, err = cli(["run", tmp_path, "--out", tmp_path / "run"], capsys)
    assert code == 2 and f"{tmp_path}: a directory, not a config file" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_while_the_query_log_is_appended(reference: Path, tiny: dict, tmp_path: Path, capsys,
                                                     monkeypatch, disk_with_room) -> None:  # fmt: skip
    from fastal.rundir import RunDir

    commit = RunDir.commit

    def disk_fills_at_the_commit(run, answer, cycle):
        disk_with_room(100)  # the query log's lines of the initial set take more
        commit(run, answer, cycle)

    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(tiny))
    run_dir = tmp_path / "run"
    monkeypatch.setattr(RunDir, "commit", disk_fills_at_the_commit)
    code, err = cli(["run", config, "--out", run_dir], capsys)
    monkeypatch.undo()  # the disk has room again
    assert code == 2 and f"cannot write {run_dir / 'queries.jsonl'}: No space left on device" in one_line(err)
    assert not (run_dir / "pool.npz").exists()  # nothing committed
    code, err = cli(["run", "--resume", run_dir], capsys)  # the run ends as if nothing had happened
    assert code == 0, err
    assert run_differences(reference, run_dir) == []


def test_report_on_results_of_the_wrong_types(reference: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    res = json.loads((reference / "results.json").read_text())
    for change, message in [
        (lambda r: r["cycles"][0].update(miou="0.5"), "cycle 1: miou = '0.5', expected a number"),
        (lambda r: r.update(seed="3"), "seed = '3', expected an integer"),
        (lambda r: r.update(cycles={}), "'cycles' is dict, expected a list"),
    ]:
        bad = json.loads(json.dumps(res))
        change(bad)
        (run_dir / "results.json").write_text(json.dumps(bad))
        code, err = cli(["report", run_dir, "--out", tmp_path / "r.png"], capsys)
        assert code == 2 and message in one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---- item 7: leftovers and messages -----------------------------------------------------------
def test_stale_temp_files_are_removed_by_the_next_writer(reference: Path, tmp_path: Path) -> None:
    run_dir = copy_of(reference, tmp_path)
    stale = [run_dir / "checkpoints" / ".cycle-2.pt.k3j2h1.tmp", run_dir / ".results.json.a8f0.tmp",
             run_dir / ".labels.x1.tmp" / "img.png"]  # fmt: skip
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 1000)
    before = snapshot(run_dir)
    run_experiment(None, run_dir, resume=True)
    assert not any(p.exists() for p in stale) and not (run_dir / ".labels.x1.tmp").exists()
    assert snapshot(run_dir) == {k: v for k, v in before.items() if ".tmp" not in k}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_says_how_to_resume(reference: Path, tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = copy_of(reference, tmp_path)
    edit_results(run_dir, lambda r: r["cycles"].pop())  # cycle 2 trained, not evaluated: work to do
    proc = start_frozen("run", "--resume", str(run_dir))
    proc.send_signal(sig)  # delivered when it goes on
    err = resume_frozen(proc)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"stopped by {sig.name}: continue with `fastal run --resume {run_dir}`"
    assert not list(run_dir.rglob("*.tmp"))
    run_experiment(None, run_dir, resume=True)
    assert run_differences(reference, run_dir) == []


def test_unclear_messages_made_clear(reference: Path, tiny: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(dumps_toml(tiny))
    (tmp_path / "file").write_text("x")
    code, err = cli(["run", config, "--out", tmp_path / "file"], capsys)
    assert code == 2 and "file: a file is there, not a run directory; choose another --out" in one_line(err)
    (tmp_path / "empty").mkdir()
    code, err = cli(["run", config, "--out", tmp_path / "empty"], capsys)
    assert code == 2 and "empty: already exists and is not a fastal run directory" in one_line(err)
    ckpt = reference / "checkpoints"
    code, err = cli(["evaluate", "--checkpoint", ckpt, "--device", "cpu"], capsys)
    assert code == 2 and f"--checkpoint {ckpt}: a directory, not a file" in one_line(err)
    # Output paths are checked before the work: the work would fail the test.
    import fastal.select
    import fastal.train

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(fastal.train, "evaluate", no_work)
    monkeypatch.setattr(fastal.select, "select", no_work)
    code, err = cli(["evaluate", "--checkpoint", ckpt / "cycle-2.pt", "--device", "cpu", "--json", tmp_path], capsys)
    assert code == 2 and f"cannot write {tmp_path}: it is a directory" in one_line(err)
    code, err = cli(["bench", "selection", "--superpixels", "100", "--json", tmp_path / "file" / "b.json"], capsys)
    assert code == 2 and "file is a file, not a directory" in one_line(err)


def test_select_on_an_exhausted_pool(reference: Path, tiny: dict, tmp_path: Path, capsys) -> None:
    run_dir = copy_of(reference, tmp_path)
    pool = RegionPool.load(run_dir / "pool.npz")  # label every superpixel left in cycle 2
    ds = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    cache = build_cache(ds, superpixels=12, cache_dir=tiny["cache_dir"], show_progress=False)
    pool.add(SimulatedOracle(ds, cache, mode="dominant").query(pool.unlabelled_ids()), 2)
    pool.save(run_dir / "pool.npz")
    edit_results(run_dir, lambda r: r["cycles"][1].update(labelled_superpixels=pool.num_superpixels))
    code, err = cli(["select", "--run", run_dir, "--budget", "3", "--out", tmp_path / "round"], capsys)
    assert code == 2 and "every superpixel of the pool is labelled; there is nothing left to select" in one_line(err)


def test_a_round_of_another_run_names_the_mismatch(reference: Path, tiny: dict, tmp_path: Path, capsys) -> None:
    mine, other, round_dir = copy_of(reference, tmp_path, "mine"), copy_of(reference, tmp_path, "other"), tmp_path / "r"
    record = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**record, "run_id": "0" * 32}))  # another run of the same data
    make_round(other, round_dir, tiny, capsys)
    before = snapshot(mine)
    code, err = cli(["label", "import", round_dir, "--run", mine], capsys)
    assert code == 2 and f"the round was selected for another run ({other}, id {'0' * 32}), not for {mine}" in one_line(err)
    # A round without a run (selected from a checkpoint) on other superpixels: the sizes are named.
    q = json.loads((round_dir / "queries.json").read_text())
    (round_dir / "queries.json").write_text(json.dumps({**q, "run_id": None, "num_superpixels": 9999}))
    code, err = cli(["label", "import", round_dir, "--run", mine], capsys)
    assert code == 2 and "the round was selected on 9999 superpixels, the run" in one_line(err)
    q["queries"][0]["local"] += 1
    (round_dir / "queries.json").write_text(json.dumps({**q, "run_id": None}))
    code, err = cli(["label", "import", round_dir, "--run", mine], capsys)
    assert code == 2 and "the round was selected on other superpixels" in one_line(err)
    assert snapshot(mine) == before


def test_the_lock_is_refused_in_process_too(reference: Path, tmp_path: Path) -> None:
    # Two threads of one process (a Dask worker's) exclude each other: flock locks an open file.
    from fastal.runlock import run_lock

    run_dir = copy_of(reference, tmp_path)
    with run_lock(run_dir):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            run_experiment(None, run_dir, resume=True)
    assert issubclass(RunDirLocked, FastalError)
    run_experiment(None, run_dir, resume=True)  # released at the end of the block
