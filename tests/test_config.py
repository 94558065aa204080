"""RunConfig: TOML + overrides, rejection of unknown keys / wrong types / impossible budgets, round trip."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastal.config import RunConfig, dumps_toml, load_config, make_config, save_config, to_dict
from fastal.errors import FastalError


def test_defaults_are_valid_and_file_then_overrides(tmp_path: Path) -> None:
    assert load_config() == RunConfig()
    f = tmp_path / "c.toml"
    f.write_text('strategy = "random"\ncycles = 2\nlr = 1\n')
    cfg = load_config(f, {"cycles": 3, "seed": None})
    assert (cfg.strategy, cfg.cycles, cfg.seed) == ("random", 3, 0)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # ints widen to floats


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("cylces = 3\n", {}, "unknown key 'cylces'"),
        ('cycles = "3"\n', {}, "cycles = '3': expected int, got str"),
        ("epochs = true\n", {}, "epochs = True: expected int"),
        ('labels = "some"\n', {}, "labels = 'some': choose one of dominant, full"),
        ("image_size = [48, 1.5]\n", {}, "image_size[1] = 1.5: expected int"),
        ("[train]\nepochs = 2\n", {}, "unknown section [train]"),
        ("cycles = [\n", {}, "not valid TOML"),
        ("", {"initial": 10.0, "budget_per_cycle": 50.0, "cycles": 2}, "budget larger than the pool"),
        ("", {"initial": 0.0}, "initial = 0.0"),
        ("", {"target_ratio": 1.5}, "target_ratio = 1.5"),
        ("", {"target_ratio": 0.9, "full_reference": False}, "target_ratio needs full_reference"),
    ],
)
def test_errors_name_the_offender(tmp_path: Path, text: str, overrides: dict, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(FastalError) as e:
        load_config(f, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_budget_error_quotes_the_sizes() -> None:
    with pytest.raises(FastalError, match=r"initial 10.0% \+ 3 cycles x 40.0% = 130% of pixels > 100%"):
        make_config({"initial": 10, "budget_per_cycle": 40, "cycles": 3})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FastalError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


def test_saved_config_reads_back_identical(tmp_path: Path) -> None:
    cfg = make_config({"dataset": "camvid", "data_root": 'a "quoted" dir\\x', "scale": 0.25,
                       "target_ratio": 0.9, "lr": 1e-5, "image_size": [32, 40]})
    save_config(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
)
tables = st.recursive(
    st.dictionaries(st.text(min_size=1), scalars | st.lists(st.integers(-9, 9)), max_size=4),
    lambda sub: st.dictionaries(st.text(min_size=1), sub, max_size=3),
    max_leaves=10,
)


@given(tables)
def test_toml_writer_matches_tomllib(data: dict) -> None:
    assert tomllib.loads(dumps_toml(data)) == data


def test_none_is_left_out() -> None:
    assert "data_root" not in dumps_toml(to_dict(RunConfig()))


def test_default_toml_is_the_default_config() -> None:
    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "configs" / "default.toml") == RunConfig()
    text = (root / "configs" / "default.toml").read_text()
    for name in RunConfig.__dataclass_fields__:
        assert f"{name} =" in text, f"configs/default.toml does not document {name}"


def test_camvid_example_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "camvid_cpu.toml")
    assert cfg.dataset == "camvid" and cfg.budget_pct() <= 100
