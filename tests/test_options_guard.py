"""Options and paths: every option is checked before anything is made or
computed, a path error (a name over 255 bytes, a directory where a file goes) is one line, and
a message names what is at fault: the option, not the config file; a BOM is no TOML error; two
runs started in the same second get two directories."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_run_guard import cli, one_line

from fastal.config import dumps_toml

LONG = "a" * 300  # a path component longer than any file system's 255 bytes


def no_work(*args, **kwargs):
    raise AssertionError("the work started before the options were checked")


@pytest.fixture
def config(tiny: dict, tmp_path: Path) -> Path:
    path = tmp_path / "T.toml"
    path.write_text(dumps_toml(tiny))
    return path


def written(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# ---- item 10: checked before the work ------------------------------------------------------------
def test_outputs_are_checked_before_the_work(reference: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import fastal.select
    import fastal.train

    monkeypatch.setattr(fastal.train.Trainer, "fit", no_work)
    monkeypatch.setattr(fastal.select, "select", no_work)
    (tmp_path / "FILE").write_text("x")
    code, err = cli(["train", "--full", "--num-images", "8", "--size", "32x48", "--epochs", "1", "--device", "cpu",
                     "--out", tmp_path / "FILE"], capsys)  # fmt: skip
    assert code == 2 and f"cannot write {tmp_path / 'FILE'}: a file is there, not a directory" in one_line(err), err
    code, err = cli(["bench", "selection", "--superpixels", "100", "--profile", tmp_path / "FILE"], capsys)
    assert code == 2 and f"cannot write {tmp_path / 'FILE'}: a file is there, not a directory" in one_line(err), err
    code, err = cli(["bench", "selection", "--superpixels", "99999999999999"], capsys)
    assert code == 2 and "--superpixels 99999999999999: the pool's features alone take" in one_line(err), err
    assert written(tmp_path) == ["FILE"]


# ---- item 11: path errors, one line -----------------------------------------------------------
def test_long_names_and_a_directory_for_a_file_are_one_line(reference: Path, config: Path, tmp_path: Path,
                                                            capsys) -> None:  # fmt: skip
    cases = [
        (["run", config, "--out", tmp_path / LONG], f"{LONG[:12]}…"),
        (["run", config, "--out", tmp_path / "run", "--full-reference", "--full-shared", tmp_path / LONG / "f.json"],
         "is 300 bytes; a file name may have at most 255"),
        (["run", config, "--out", tmp_path / "run", "--full-reference", "--full-shared", tmp_path],
         f"cannot write {tmp_path}: it is a directory"),
        (["evaluate", "--checkpoint", reference / "checkpoints" / "cycle-2.pt", "--device", "cpu",
          "--json", tmp_path / LONG / "e.json"], "is 300 bytes; a file name may have at most 255"),
    ]  # fmt: skip
    for args, message in cases:
        code, err = cli(args, capsys)
        assert code == 2 and message in one_line(err), err
    assert written(tmp_path) == ["T.toml"]


# ---- item 13: messages that name what is wrong -------------------------------------------------
def test_an_option_is_named_not_the_config_file(config: Path, tmp_path: Path, capsys) -> None:
    code, err = cli(["run", config, "--labels", "partial", "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line(err) == "error: --labels partial: choose one of dominant, full", err


def test_a_config_with_a_byte_order_mark_is_read(config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import fastal.loop

    got = []
    monkeypatch.setattr(fastal.loop, "run_experiment", lambda cfg, out, **kw: got.append(cfg))
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())  # as some Windows editors save it
    for path in (config, bom):
        code, err = cli(["run", path, "--out", tmp_path / path.stem], capsys)
        assert code == 0, err
    assert got[0] == got[1]


def test_two_runs_started_in_the_same_second_get_two_directories(config: Path, tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:  # fmt: skip
    import fastal.loop

    outs = []
    monkeypatch.setattr(fastal.loop, "run_experiment", lambda cfg, out, **kw: outs.append(out))
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261207-150000")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, err = cli(["run", config], capsys)
        assert code == 0, err
    assert outs[0] != outs[1]
    assert all(str(o).startswith("runs/synthetic-contrastive-seed3-20261207-150000-") for o in outs)
