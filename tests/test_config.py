"""RunConfig: TOML + overrides, rejection of unknown keys / wrong types / impossible budgets, round trip."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastal.config import (
    NOT_REFERENCE_KEYS,
    REFERENCE_KEYS,
    RunConfig,
    dumps_toml,
    load_config,
    make_config,
    save_config,
    to_dict,
)
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
        ("budgets = [1, 2]\ncycles = 3\n", {}, "budgets replaces initial, budget_per_cycle and cycles: drop cycles"),
        ("", {"budgets": [1.0, 2.0], "initial": 1.0}, "budgets replaces initial, budget_per_cycle and cycles"),
        ("budgets = [1, 2]\n", {"cycles": 3}, "sets budgets = [1, 2]: cycles cannot change it"),
        ("budgets = [1, 4, 4]\n", {}, "budgets = [1.0, 4.0, 4.0]: must be strictly increasing"),
        ("budgets = [0, 4]\n", {}, "budgets = [0.0, 4.0]: percentages of pixels > 0"),
        ("budgets = [50, 101]\n", {}, "budget larger than the pool: 101% of pixels > 100%"),
        ("budgets = []\n", {}, "budgets = []: give at least the initial %"),
        ('budgets = ["1"]\n', {}, "budgets[0] = '1': expected float"),
        ('full_shared = "ref.json"\nfull_reference = false\n', {}, "full_shared needs full_reference = true"),
        ("clusters = 0.5\n", {}, "clusters = 0.5: must be >= 1"),
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


def test_schedule_either_spelling(tmp_path: Path) -> None:
    assert RunConfig().schedule() == [4.0, 6.0, 8.0, 10.0, 12.0] and RunConfig().budget_pct() == 12.0
    cfg = make_config({"budgets": [1, 2, 4, 8]})
    assert cfg.schedule() == [1.0, 2.0, 4.0, 8.0] and cfg.budget_pct() == 8.0
    assert make_config({"budgets": [3]}).schedule() == [3.0]  # the initial set alone
    assert make_config({"initial": 1, "cycles": 0}).schedule() == [1.0]
    # A command-line schedule replaces the file's, whichever spelling the file used.
    f = tmp_path / "c.toml"
    f.write_text("initial = 1\nbudget_per_cycle = 1\ncycles = 5\nepochs = 2\n")
    cfg = load_config(f, {"budgets": [2.0, 5.0], "cycles": None})
    assert cfg.schedule() == [2.0, 5.0] and cfg.epochs == 2
    assert load_config(f, {"cycles": 2}).schedule() == [1.0, 2.0, 3.0]
    f.write_text("budgets = [1, 2, 4]\n")
    assert load_config(f, {"budgets": [5.0]}).schedule() == [5.0]
    assert load_config(f, {"epochs": 3}).schedule() == [1.0, 2.0, 4.0]


def test_reference_epochs_match_the_last_cycles_training() -> None:
    # Fine-tuning: the model evaluated last has trained every evaluated cycle's epochs.
    assert RunConfig().reference_epochs() == 5 * 6
    assert make_config({"budgets": [1, 2, 4, 8], "epochs": 2}).reference_epochs() == 8
    assert make_config({"retrain": "scratch", "epochs": 7}).reference_epochs() == 7
    assert make_config({"full_epochs": 3}).reference_epochs() == 3


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FastalError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


def test_saved_config_reads_back_identical(tmp_path: Path) -> None:
    cfg = make_config({"dataset": "camvid", "data_root": 'a "quoted" dir\\x', "scale": 0.25,
                       "target_ratio": 0.9, "lr": 1e-5, "image_size": [32, 40]})
    save_config(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg
    # With budgets the file holds one spelling of the schedule, and reads back as the same config.
    cfg = make_config({"budgets": [1, 2.5, 4], "full_shared": "runs/ref.json"})
    save_config(cfg, tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    assert tomllib.loads(text)["budgets"] == [1.0, 2.5, 4.0] and "cycles" not in text and "initial" not in text
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


def test_every_key_is_declared_for_the_reference_or_not() -> None:
    # A new RunConfig key must join REFERENCE_KEYS (a shared reference depends on it) or
    # NOT_REFERENCE_KEYS; in neither, runs that differ in it would share a reference unasked.
    keys = list(RunConfig.__dataclass_fields__)
    assert sorted(REFERENCE_KEYS + NOT_REFERENCE_KEYS) == sorted(keys)
    assert not set(REFERENCE_KEYS) & set(NOT_REFERENCE_KEYS)


def test_sweep_reference_names_are_stable() -> None:
    # A sweep finds its references by these names: a changed key would orphan every one on disk.
    from fastal.sweep.spec import reference_name

    assert reference_name(make_config({})) == "seed0-1eb53d87"
    assert reference_name(make_config({"budgets": [1.0, 2.0], "seed": 3, "device": "cpu"})) == "seed3-9968b1f2"
    assert reference_name(make_config({"strategy": "random", "umap_neighbors": 5})) == "seed0-1eb53d87"


def test_umap_params_follow_the_umap_keys() -> None:
    p = make_config({"umap_neighbors": 7, "umap_components": 3, "umap_min_dist": 0.25}).umap_params()
    assert (p.n_neighbors, p.n_components, p.min_dist) == (7, 3, 0.25)
    assert p.metric == "euclidean" and p.random_state == 0  # the rest: UMAPParams' defaults
