"""`fastal run` rejects bad configurations with one line, exit code 2, and no run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastal.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "args", "message"),
    [
        ("epochz = 2\n", [], "unknown key 'epochz'"),
        ('epochs = "two"\n', [], "epochs = 'two': expected int, got str"),
        ("", ["--labels", "some"], "--labels some: choose one of dominant, full"),
        ("", ["--initial", "40", "--budget-per-cycle", "20", "--cycles", "4"], "budget larger than the pool"),
        ("", ["--strategy", "clever"], "strategy 'clever': choose one of"),
        ("", ["--backbone", "vgg"], "backbone 'vgg': choose one of"),
        ("", ["--dataset", "camvid"], "needs a data root"),
        ("", ["--device", "tpu"], "not a device"),
        ("", ["--budgets", "1,two"], "--budgets '1,two': expected comma-separated percentages"),
        ("", ["--budgets", "4,2"], "budgets = [4.0, 2.0]: must be strictly increasing"),
        ("budgets = [1, 2]\n", ["--cycles", "3"], "cycles cannot change it (override budgets instead)"),
        # The method's knobs.
        ('cluster_budget = "all"\n', [], "cluster_budget = 'all': choose one of fit, prefix"),
        ('bank_lifetime = "epoch"\n', [], "bank_lifetime = 'epoch': choose one of run, cycle"),
        ('bank_from = "ema"\n', [], "bank_from = 'ema': choose one of teacher, student"),
        ("contrastive_weight = -0.1\n", [], "contrastive_weight = -0.1: must be >= 0"),
        ("contrastive_weight = nan\n", [], "contrastive_weight = nan: must be >= 0"),
        ("temperature = 0\n", [], "temperature = 0.0: must be > 0"),
        ("umap_components = 0\n", [], "umap_components = 0: must be >= 1"),
        ("umap_neighbors = 1\n", [], "umap_neighbors = 1: must be >= 2"),
        ("umap_neighbors = 2.5\n", [], "umap_neighbors = 2.5: expected int, got float"),
        ("umap_min_dist = 1.5\n", [], "umap_min_dist = 1.5: must lie in [0, 1]"),
        ("contrastive_wieght = 0\n", [], "unknown key 'contrastive_wieght'"),
    ],
)
def test_bad_config_exit_2_one_line_nothing_written(tmp_path: Path, capsys, toml: str, args: list[str],
                                                    message: str) -> None:  # fmt: skip
    config = tmp_path / "c.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    code, err = run_cli(["run", str(config), "--out", str(out), *args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]


def test_budget_larger_than_the_pool_quotes_superpixels(tmp_path: Path, capsys) -> None:
    # 2 images x ~4 superpixels: 1 initial + 10 cycles x 1 superpixel do not fit, though 11% < 100%.
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--initial", "1", "--budget-per-cycle", "1", "--cycles", "10"]
    toml = tmp_path / "c.toml"
    toml.write_text(f'train_images = 2\nsuperpixels = 4\ncache_dir = "{tmp_path / "cache"}"\n')
    code, err = run_cli([args[0], str(toml), *args[1:]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "1 initial + 10 cycles x 1 = 11 superpixels, the pool has" in err and "(2 images)" in err
    assert not out.exists()


def test_schedule_larger_than_the_pool_quotes_each_cycle(tmp_path: Path, capsys) -> None:
    # ~8 superpixels: a random 1 % (1 superpixel), seven cycles of >= 1 each, then 62 % more.
    out = tmp_path / "run"
    toml = tmp_path / "c.toml"
    toml.write_text(f'train_images = 2\nsuperpixels = 4\ncache_dir = "{tmp_path / "cache"}"\n')
    code, err = run_cli(["run", str(toml), "--out", str(out), "--budgets", "1,2,3,4,5,6,7,8,70"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "1 initial + cycles of 1 + 1 + 1 + 1 + 1 + 1 + 1 + " in err and "the pool has" in err
    assert not out.exists()


def test_resume_takes_no_other_option(tmp_path: Path, capsys) -> None:
    code, err = run_cli(["run", "--resume", str(tmp_path), "--cycles", "3"], capsys)
    assert code == 2 and "drop --cycles" in err


def test_resume_needs_a_run_directory(tmp_path: Path, capsys) -> None:
    code, err = run_cli(["run", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not a fastal run directory" in err


def test_existing_out_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(f'train_images = 2\nval_images = 1\nsuperpixels = 4\ncache_dir = "{tmp_path / "cache"}"\n')
    code, err = run_cli(["run", str(toml), "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert code == 2 and "already exists" in err
    assert list((tmp_path / "run").iterdir()) == []


def test_select_checks_its_paths_before_building_the_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FASTAL_CACHE", str(tmp_path / "cache"))
    base = ["select", "--dataset", "synthetic", "--budget", "3", "--device", "cpu"]
    code, err = run_cli([*base, "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "missing.pt: file not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "ck.pt").write_bytes(b"")
    (tmp_path / "taken").mkdir()
    code, err = run_cli([*base, "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "taken")], capsys)
    assert code == 2 and "taken: already exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "taken"]  # no cache, no round
