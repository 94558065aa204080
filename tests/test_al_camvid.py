"""The CamVid protocols as sweep files (the grid, the configuration of each run, one reference per
seed), and experiments/al_camvid.py, now a summary of its results files: the tables of
docs/results-camvid.md come from benchmarks/results/camvid_cpu.json, checked by hand against the
runs recorded there."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

from fastal.atomic import read_json
from fastal.config import load_config
from fastal.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("al_camvid", ROOT / "experiments" / "al_camvid.py")
al_camvid = sys.modules["al_camvid"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(al_camvid)
STRATEGIES = ["contrastive", "random", "entropy", "kmeans-entropy"]


@pytest.mark.parametrize("protocol", ["cpu", "gpu"], ids=["protocol-cpu", "protocol-gpu"])  # "gpu" would skip
def test_protocol_sweeps(protocol: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    runs = load_sweep(f"configs/sweep_camvid_{protocol}.toml").runs(tmp_path)
    cfg = runs[0].cfg
    assert (cfg.dataset, cfg.labels, cfg.full_reference) == ("camvid", "dominant", True)
    assert cfg.budgets == [1.0, 2.0, 4.0, 8.0]
    assert (cfg.scale, cfg.backbone, cfg.device) == ((0.5, "efficientnet_lite0", "cpu") if protocol == "cpu"
                                                     else (1.0, "resnet50", "cuda"))  # fmt: skip
    if protocol == "gpu":
        assert (cfg.amp, cfg.epochs, cfg.batch_size) == ("bf16", 20, 8)
    # seed 0's four strategies first, then seed 1's, seed 2's; one reference per seed
    assert [r.name for r in runs[:5]] == [f"seed=0,strategy={s}" for s in STRATEGIES] + ["seed=1,strategy=contrastive"]
    assert len(runs) == 12 and len({r.reference for r in runs}) == 3
    assert {r.reference for r in runs if r.cfg.seed == 1} == {runs[5].reference}
    # Each run is the former driver's `fastal run configs/al_camvid_<protocol>.toml --strategy S --seed N
    # --full-shared REF --data-root ../shared/data/CamVid`, with the data root made absolute.
    data_root = str(ROOT / "../shared/data/CamVid")
    for r in runs:
        ref = str(tmp_path / "references" / f"{r.reference}.json")
        want = load_config(f"configs/al_camvid_{protocol}.toml",
                           {**r.point, "data_root": data_root, "full_shared": ref})  # fmt: skip
        assert r.cfg == want, r.name



def test_signal_and_engine_sweeps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The signal comparison (four strategies x five seeds, one pick per cluster), its lambda = 0
    # ablations (contrastive, entropy) and the engine check (the committed table's
    # protocol, contrastive): the protocol file but for these keys; only the comparison trains
    # references.
    monkeypatch.chdir(ROOT)
    signal = load_sweep("configs/sweep_camvid_signal.toml").runs(tmp_path / "a")
    ablation = load_sweep("configs/sweep_camvid_signal_lambda0.toml").runs(tmp_path / "b")
    ablation += load_sweep("configs/sweep_camvid_signal_lambda0_entropy.toml").runs(tmp_path / "d")
    engine = load_sweep("configs/sweep_camvid_engine.toml").runs(tmp_path / "c")
    assert len(signal) == 20 and len({r.reference for r in signal}) == 5
    assert {r.cfg.strategy for r in signal} == {"contrastive", "entropy", "kmeans-entropy", "random"}
    protocol = load_config("configs/al_camvid_cpu.toml", {"data_root": str(ROOT / "../shared/data/CamVid")})
    assert protocol.contrastive_weight > 0 and protocol.cluster_budget == "prefix"
    assert {(r.cfg.cluster_budget, r.cfg.contrastive_weight) for r in signal} == {("fit", protocol.contrastive_weight)}
    assert sorted((r.cfg.strategy, r.cfg.seed, r.cfg.contrastive_weight) for r in ablation) == [
        (strategy, seed, 0.0) for strategy in ("contrastive", "entropy") for seed in range(5)]
    assert {r.reference for r in ablation} == {None}
    for r in ablation:
        assert r.cfg == load_config("configs/al_camvid_cpu.toml", {**r.point, "data_root": protocol.data_root,
                                                                    "cluster_budget": "fit", "contrastive_weight": 0.0,
                                                                    "full_reference": False}), r.name
    assert [r.cfg.seed for r in engine] == [0, 1, 2] and {r.reference for r in engine} == {None}
    for r in engine:
        assert r.cfg == load_config("configs/al_camvid_cpu.toml", {**r.point, "data_root": protocol.data_root,
                                                                    "full_reference": False}), r.name

def test_docs_tables_come_from_the_results_file(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    assert al_camvid.main(["--protocol", "cpu"]) == 0
    table = capsys.readouterr().out
    page = (ROOT / "docs" / "results-camvid.md").read_text()
    assert [line for line in table.splitlines() if line not in page] == []
    # A cell and a paired difference by hand from the runs recorded in the file.
    runs = read_json(ROOT / "benchmarks" / "results" / "camvid_cpu.json")["runs"]
    at8 = {(r["strategy"], r["seed"]): r["cycles"][3]["miou"] for r in runs}
    contrastive = [at8["contrastive", s] for s in (0, 1, 2)]
    assert f"| {statistics.mean(contrastive):.3f} ± {statistics.stdev(contrastive):.3f} (90 %) |" in table
    diffs = [at8["contrastive", s] - at8["random", s] for s in (0, 1, 2)]
    line = next(line for line in table.split("contrastive minus")[1].splitlines() if line.startswith("| random |"))
    assert line.endswith(f"| {statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f} |")


def test_missing_results_file(tmp_path: Path, capsys) -> None:
    assert al_camvid.main(["--json", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "none.json: not found" in err and len(err.strip().splitlines()) == 1


def test_issue28_probe_and_verdict_sweeps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The probe: entropy and random at 4 epochs, three seeds, no reference; the verdict: the
    # field's strategies, the contrastive variants, contrastive, entropy and random, five seeds, one
    # reference per seed, one pick per cluster. Both the protocol file but for these keys.
    from fastal.select import CLUSTER_STRATEGIES, STRATEGIES

    monkeypatch.chdir(ROOT)
    probe = load_sweep("configs/sweep_camvid_probe_epochs.toml").runs(tmp_path / "p")
    verdict = load_sweep("configs/sweep_camvid_verdict.toml").runs(tmp_path / "v")
    data_root = str(ROOT / "../shared/data/CamVid")
    assert sorted((r.cfg.epochs, r.cfg.seed, r.cfg.strategy) for r in probe) == [
        (4, s, k) for s in range(3) for k in ("entropy", "random")]
    assert {r.reference for r in probe} == {None}
    for r in probe:
        assert r.cfg == load_config("configs/al_camvid_cpu.toml", {**r.point, "data_root": data_root,
                                                                    "cluster_budget": "fit",
                                                                    "full_reference": False}), r.name
    field = {"cb-ratio", "cb-ratio-pixels", "impurity-entropy", "weighted-ratio"}
    variants = {"contrastive-balanced", "contrastive-uncertain"}
    strategies = field | variants | {"contrastive", "entropy", "random"}
    assert strategies <= set(STRATEGIES) and variants <= set(CLUSTER_STRATEGIES)
    assert sorted((r.cfg.seed, r.cfg.strategy) for r in verdict) == [(s, k) for s in range(5) for k in sorted(strategies)]
    assert len({r.reference for r in verdict}) == 5  # one per seed, shared by its strategies
    assert len({r.first for r in verdict}) == 5  # cycle 1 too (share_first_cycle)
    epochs = {r.cfg.epochs for r in verdict}
    assert len(epochs) == 1 and epochs <= {2, 4, 8} and {r.cfg.full_epochs for r in verdict} == {4 * epochs.pop()}
    for r in verdict:
        ref = str(tmp_path / "v" / "references" / f"{r.reference}.json")
        want = load_config("configs/al_camvid_cpu.toml", {**r.point, "data_root": data_root, "full_shared": ref,
                                                          "cluster_budget": "fit", "epochs": r.cfg.epochs,
                                                          "full_epochs": r.cfg.full_epochs})  # fmt: skip
        assert r.cfg == want, r.name
