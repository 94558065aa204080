"""benchmarks/al_camvid.py end to end on a tiny synthetic protocol: 2 strategies x 2 seeds, runs
killed and resumed, one reference per seed trained once, the summary checked by hand against the
run directories, finished runs skipped, a changed configuration refused."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from fastal.config import dumps_toml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("al_camvid", ROOT / "benchmarks" / "al_camvid.py")
al_camvid = sys.modules["al_camvid"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(al_camvid)

# 8 images 32x48, ~12 superpixels each; a random 4 %, then one cycle to 8 %; one epoch per cycle.
TINY = {
    "dataset": "synthetic", "image_size": [32, 48], "train_images": 8, "val_images": 4, "superpixels": 12,
    "labels": "dominant", "budgets": [4.0, 8.0], "epochs": 1, "full_epochs": 2, "batch_size": 8, "device": "cpu",
}  # fmt: skip
STRATEGIES, SEEDS = ["random", "entropy"], [0, 1]


def test_driver_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml({**TINY, "cache_dir": str(tmp_path / "cache")}))
    runs, js, png = tmp_path / "runs", tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--protocol", "cpu", "--config", str(config), "--strategies", *STRATEGIES,
            "--seeds", *map(str, SEEDS), "--runs-dir", str(runs), "--json", str(js), "--plot", str(png),
            "--poll", "0.1"]  # fmt: skip
    names = [f"seed{s}-{st}" for s in SEEDS for st in STRATEGIES]

    # Every run is killed after training cycle 2, before evaluating it: reported, the rest goes on.
    monkeypatch.setenv("FASTAL_CRASH_AT", "ckpt:2")
    assert al_camvid.main(argv) == 1
    data = json.loads(js.read_text())
    assert [r["name"] for r in data["runs"]] == names
    assert [(r["status"], len(r["cycles"])) for r in data["runs"]] == [("failed", 1)] * 4
    assert "failed: " + ", ".join(names) in capsys.readouterr().err

    # Started again with the same arguments: every run resumes and finishes.
    monkeypatch.setenv("FASTAL_CRASH_AT", "")
    assert al_camvid.main([*argv, "--readme-table"]) == 0
    table = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["protocol"] == "cpu" and data["budgets"] == [4.0, 8.0] and data["config"]["epochs"] == 1
    assert data["machine"]["cores"] >= 1
    assert data["command"] == "python benchmarks/al_camvid.py " + " ".join([*argv, "--readme-table"])
    results = {n: json.loads((runs / n / "results.json").read_text()) for n in names}
    for r in data["runs"]:
        assert r["status"] == "finished" and r["cycles"] == results[r["name"]]["cycles"]
        assert [c["budget_pct"] for c in r["cycles"]] == [4.0, 8.0]
        assert [i["returncode"] for i in r["invocations"]] == [-9, 0]  # SIGKILLed, then resumed
        assert r["wall_seconds"] == pytest.approx(sum(i["seconds"] for i in r["invocations"]), abs=0.2)
        assert r["wall_seconds"] > 0

    # One reference per seed, trained by the seed's first run and read by the other.
    for seed, ref in zip(SEEDS, data["references"]):
        shared = json.loads((runs / f"seed{seed}-full.json").read_text())
        first, other = (runs / f"seed{seed}-{st}" for st in STRATEGIES)
        assert ref["path"] == str(runs / f"seed{seed}-full.json") and ref["miou"] == shared["miou"]
        assert ref["trained_in"] == shared["run"] == str(first)
        assert ref["used_by"] == [first.name, other.name]
        for d in (first, other):
            assert json.loads((d / "full.json").read_text()) == {**shared, "shared": ref["path"]}
            assert results[d.name]["full_miou"] == shared["miou"]
        assert "fully supervised mIoU" in (runs / "logs" / f"{first.name}.log").read_text()
        log = (runs / "logs" / f"{other.name}.log").read_text()
        assert "(shared reference" in log and " s)\n" not in log.split("(shared reference")[0]
    fulls = [r["miou"] for r in data["references"]]
    assert data["full_miou"]["mean"] == pytest.approx(statistics.mean(fulls))
    assert data["full_miou"]["std"] == pytest.approx(statistics.stdev(fulls)) and data["full_miou"]["n"] == 2

    # The summary by hand from the run directories: mean and sample std over the seeds.
    for st in STRATEGIES:
        rows = data["summary"][st]
        assert [r["budget_pct"] for r in rows] == [4.0, 8.0]
        for k, row in enumerate(rows):
            recs = [results[f"seed{s}-{st}"] for s in SEEDS]
            miou = [r["cycles"][k]["miou"] for r in recs]
            ratio = [r["cycles"][k]["miou"] / r["full_miou"] for r in recs]
            pixels = [100 * r["cycles"][k]["labelled_pixel_fraction"] for r in recs]
            assert row["n"] == 2 and row["seeds"] == SEEDS
            assert row["miou_mean"] == pytest.approx(statistics.mean(miou))
            assert row["miou_std"] == pytest.approx(statistics.stdev(miou))
            assert row["ratio_mean"] == pytest.approx(statistics.mean(ratio))
            assert row["ratio_std"] == pytest.approx(statistics.stdev(ratio))
            assert row["pixel_pct_mean"] == pytest.approx(statistics.mean(pixels))
            cell = f"{statistics.mean(miou):.3f} ± {statistics.stdev(miou):.3f} ({100 * statistics.mean(ratio):.0f} %)"
            assert cell in next(line for line in table.splitlines() if line.startswith(f"| {st} |"))
    assert table.splitlines()[0] == "| strategy | 4 % | 8 % |"

    # Paired differences by hand: the first strategy minus the other, seed by seed.
    first, other = STRATEGIES
    assert [r["budget_pct"] for r in data["paired"][other]] == [4.0, 8.0]
    cells = []
    for k, row in enumerate(data["paired"][other]):
        diffs = [results[f"seed{s}-{first}"]["cycles"][k]["miou"] - results[f"seed{s}-{other}"]["cycles"][k]["miou"]
                 for s in SEEDS]  # fmt: skip
        assert row["n"] == 2 and row["seeds"] == SEEDS
        assert row["diff_mean"] == pytest.approx(statistics.mean(diffs))
        assert row["diff_std"] == pytest.approx(statistics.stdev(diffs))
        cells.append(f"{statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}")
    paired_table = table.split(f"| {first} minus | 4 % | 8 % |\n")[1]
    assert paired_table.splitlines()[1] == f"| {other} | {cells[0]} | {cells[1]} |"

    # A third start skips every finished run: nothing is run, nothing in the runs changes.
    stamps = {n: (runs / n / "results.json").stat().st_mtime_ns for n in names}
    wall = (runs / "wall.json").read_text()
    assert al_camvid.main(argv) == 0
    assert {n: (runs / n / "results.json").stat().st_mtime_ns for n in names} == stamps
    assert (runs / "wall.json").read_text() == wall
    assert "4/4 runs finished" in capsys.readouterr().err

    # A changed protocol is refused for the runs made with the old one.
    config.write_text(dumps_toml({**TINY, "cache_dir": str(tmp_path / "cache"), "epochs": 2}))
    assert al_camvid.main(argv) == 2
    err = capsys.readouterr().err
    assert "seed0-random: started with epochs = 1" in err and "gives 2" in err


def test_summarize_only_and_bad_arguments(tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(TINY))
    args = ["--protocol", "cpu", "--config", str(config), "--runs-dir", str(tmp_path / "runs"),
            "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]  # fmt: skip
    # Nothing has run: the JSON lists every run as not started, no plot yet.
    assert al_camvid.main([*args, "--summarize-only", "--seeds", "4"]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert [(r["name"], r["status"]) for r in data["runs"]] == [
        (f"seed4-{s}", "not started") for s in ("contrastive", "random", "entropy", "kmeans-entropy")
    ]
    assert data["summary"] == {} and data["full_miou"] is None and not (tmp_path / "r.png").exists()
    assert al_camvid.main([*args, "--strategies", "clever"]) == 2
    assert "--strategies clever: choose from" in capsys.readouterr().err
    assert al_camvid.main([*args, "--data-root", "somewhere"]) == 2
    assert "uses the synthetic dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        al_camvid.main([*args, "--seeds", "1", "1"])
    assert "repeats an entry" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["cpu", "gpu"], ids=["protocol-cpu", "protocol-gpu"])  # "gpu" would skip
def test_protocol_plans(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    plan = al_camvid.make_plan(al_camvid.parse_args(["--protocol", protocol, "--runs-dir", "/nonexistent/runs"]))
    cfg = plan.cfg
    assert (cfg.dataset, cfg.labels, cfg.full_reference) == ("camvid", "dominant", True)
    assert cfg.budgets == [1.0, 2.0, 4.0, 8.0]
    assert (cfg.scale, cfg.backbone, cfg.device) == ((0.5, "efficientnet_lite0", "cpu") if protocol == "cpu"
                                                     else (1.0, "resnet50", "cuda"))  # fmt: skip
    if protocol == "gpu":
        assert (cfg.amp, cfg.epochs, cfg.batch_size) == ("bf16", 20, 8)
    # seed 0's four strategies first, then seed 1's, seed 2's; one reference per seed
    assert [j.name for j in plan.jobs[:5]] == [f"seed0-{s}" for s in al_camvid.STRATEGIES] + ["seed1-contrastive"]
    assert len(plan.jobs) == 12 and len({j.reference for j in plan.jobs}) == 3
    cmd = plan.jobs[5].command(plan.config, plan.data_root)
    assert cmd[3:] == ["run", f"configs/al_camvid_{protocol}.toml", "--strategy", "random", "--seed", "1", "--out",
                       "/nonexistent/runs/seed1-random", "--full-shared", "/nonexistent/runs/seed1-full.json",
                       "--data-root", "../shared/data/CamVid"]  # fmt: skip
