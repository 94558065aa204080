"""`fastal select` and `fastal label import`'s edges: every mask
people return is checked before it labels anything (a superpixel left all 255, JPEG bytes under a
.png name, a row given twice), a round is selected by the run's own model, and each refusal names
the file or the option at fault. The checks sit on the import path every format goes through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from test_run_guard import cli, copy_of, one_line, snapshot, write_masks

from fastal.cli import main


@pytest.fixture(scope="module")
def made(reference: Path, tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """R (a copy of the finished tiny run) and RD, a round of 3 superpixels selected on it, its masks
    from the ground truth. Tests copy both before changing them."""
    where = tmp_path_factory.mktemp("import")
    run_dir, round_dir = where / "R", where / "RD"
    shutil.copytree(reference, run_dir)
    with pytest.raises(SystemExit) as e:
        main(["select", "--run", str(run_dir), "--budget", "3", "--out", str(round_dir)])
    assert e.value.code == 0
    write_masks(round_dir, tiny, None)
    return run_dir, round_dir


@pytest.fixture
def run_and_round(made: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    run_dir, round_dir = copy_of(made[0], tmp_path, "R"), copy_of(made[1], tmp_path, "RD")
    return run_dir, round_dir, json.loads((round_dir / "queries.json").read_text())["queries"]


def refused(run_dir: Path, round_dir: Path, capsys) -> str:
    """The one line of a refused import; the run is left as it was."""
    before = snapshot(run_dir)
    code, err = cli(["label", "import", round_dir, "--run", run_dir], capsys)
    assert code == 2, err
    assert snapshot(run_dir) == before
    return one_line(err)


# ---- item 5: a queried superpixel left unlabelled -----------------------------------------------
def test_a_superpixel_left_all_255_is_refused(run_and_round, tiny: dict, capsys) -> None:
    run_dir, round_dir, rows = run_and_round
    write_masks(round_dir, tiny, paint=255)  # the first queried superpixel: every pixel 255
    mask = round_dir / "masks" / f"{rows[0]['image_id']}.png"
    line = refused(run_dir, round_dir, capsys)
    gid = rows[0]["superpixel"]
    assert f"{mask}: query 1 of queries.csv (superpixel {gid}) has no labelled pixel (all 255)" in line


# ---- item 9: JPEG bytes under a .png name -------------------------------------------------------
def test_jpeg_bytes_saved_as_a_png_mask_are_refused(run_and_round, capsys) -> None:
    run_dir, round_dir, rows = run_and_round
    mask = round_dir / "masks" / f"{rows[0]['image_id']}.png"
    _, jpeg = cv2.imencode(".jpg", cv2.imread(str(mask), cv2.IMREAD_UNCHANGED))
    mask.write_bytes(jpeg.tobytes())
    assert f"{mask}: JPEG data; label images must be lossless (PNG)" in refused(run_dir, round_dir, capsys)


# ---- items 11, 13: the round's own faults, named with its file ----------------------------------
def test_a_row_given_twice_names_queries_json(run_and_round, capsys) -> None:
    run_dir, round_dir, rows = run_and_round
    q = json.loads((round_dir / "queries.json").read_text())
    q["queries"].append(rows[0])
    (round_dir / "queries.json").write_text(json.dumps(q))
    line = refused(run_dir, round_dir, capsys)
    assert f"{round_dir / 'queries.json'}: superpixel {rows[0]['superpixel']} is queried twice (rows 1 and 4)" in line


def test_the_round_file_instead_of_its_directory(run_and_round, capsys) -> None:
    run_dir, round_dir, _ = run_and_round
    line = refused(run_dir, round_dir / "queries.json", capsys)
    assert "queries.json: a file, not a round directory (give the directory that holds queries.json)" in line


def test_a_reimport_before_the_resume_says_already_imported(run_and_round, capsys) -> None:
    run_dir, round_dir, _ = run_and_round
    code, err = cli(["label", "import", round_dir, "--run", run_dir], capsys)
    assert code == 0, err
    line = refused(run_dir, round_dir, capsys)  # the run has not trained on it yet
    assert "queries.json: superpixels already labelled (in cycles [3, 3, 3])" in line and "not trained" not in line


# ---- items 6, 13: `fastal select --run` selects with the run's own model, from the run's data -----
def test_select_refuses_another_runs_model_and_data_options(made, reference: Path, tmp_path: Path, capsys) -> None:
    run_dir = made[0]
    other = copy_of(reference, tmp_path, "other") / "checkpoints" / "cycle-2.pt"
    before = snapshot(run_dir)
    for options, message in [
        (["--checkpoint", other], f"--checkpoint {other}: not a model of the run {run_dir} (its own are in "),
        (["--superpixels", "30"], f"--superpixels: the run {run_dir} fixes it (its config.toml)"),
        (["--dataset", "camvid"], f"--dataset: the run {run_dir} fixes it"),
    ]:  # fmt: skip
        code, err = cli(["select", "--run", run_dir, "--budget", "3", "--out", tmp_path / "r", *options], capsys)
        assert code == 2 and message in one_line(err), err
    assert snapshot(run_dir) == before and not (tmp_path / "r").exists()


def test_select_names_the_runs_missing_model(run_and_round, tmp_path: Path, capsys) -> None:
    run_dir = run_and_round[0]
    latest = run_dir / "checkpoints" / "cycle-2.pt"
    latest.unlink()
    code, err = cli(["select", "--run", run_dir, "--budget", "3", "--out", tmp_path / "r"], capsys)
    assert code == 2 and one_line(err).startswith(f"error: {latest}: missing; it is the run's latest model"), err
    assert not (tmp_path / "r").exists()
