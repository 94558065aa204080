"""Opening a run directory: the pool must describe the cache's superpixels (offsets and sizes),
and people's labels and selections go only on a run whose latest cycle is trained."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fastal.config import RunConfig
from fastal.errors import FastalError
from fastal.oracle import answer_from_histograms
from fastal.pool import RegionPool
from fastal.rundir import RunDir


def setup_for(offsets: list[int], sizes: list[int]) -> SimpleNamespace:
    cache = SimpleNamespace(offsets=np.array(offsets), sizes=np.array(sizes), num_superpixels=len(sizes), path="cache")
    train = SimpleNamespace(image_id=lambda i: f"img{i}", classes=("sky", "road"))  # what RunDir reads
    return SimpleNamespace(cfg=RunConfig(), cache=cache, train=train, cycle_ks=[1])


def labelled_pool(offsets: list[int], sizes: list[int]) -> RegionPool:
    pool = RegionPool(offsets, sizes, label_mode="full")
    hist = np.zeros((1, 3), np.int64)
    hist[0, 0] = sizes[1]  # superpixel 1: all class 0
    pool.add(answer_from_histograms("full", np.array([1]), hist), cycle=1)
    return pool


def test_a_pool_of_other_offsets_is_refused(tmp_path: Path) -> None:
    # Same sizes, other images: superpixel 2 belongs to image 0 in the file, to image 1 in the cache.
    labelled_pool([0, 3, 5], [4, 4, 4, 4, 4]).save(tmp_path / "pool.npz")
    with pytest.raises(FastalError, match="pool.npz: pool state describes other superpixels .*offsets differ"):
        RunDir(setup_for([0, 2, 5], [4, 4, 4, 4, 4]), tmp_path)
    with pytest.raises(FastalError, match="sizes differ"):
        RunDir(setup_for([0, 3, 5], [4, 4, 4, 4, 5]), tmp_path)
    run = RunDir(setup_for([0, 3, 5], [4, 4, 4, 4, 4]), tmp_path)
    assert run.pool.labelled_ids().tolist() == [1]
    # queries.jsonl is rebuilt from the pool
    assert '"superpixel": 1' in (tmp_path / "queries.jsonl").read_text()


def test_a_cycle_not_trained_yet_refuses_the_next_round(tmp_path: Path) -> None:
    labelled_pool([0, 3, 5], [4, 4, 4, 4, 4]).save(tmp_path / "pool.npz")
    run = RunDir(setup_for([0, 3, 5], [4, 4, 4, 4, 4]), tmp_path)
    with pytest.raises(FastalError, match="cycle 1 is not trained yet"):
        run.trained_checkpoint()
    run.results["cycles"].append({"cycle": 1})
    assert run.trained_checkpoint() == tmp_path / "checkpoints" / "cycle-1.pt"


def test_a_run_written_before_cluster_budget_keeps_the_prefix_rule(tmp_path: Path) -> None:
    # Older config.toml files have no cluster_budget: those runs cut their picks to the pixels,
    # and resuming them with the new default would change the rule in the middle of the run.
    from fastal.config import save_config
    from fastal.rundir import CONFIG, open_run

    save_config(RunConfig(seed=4), tmp_path / CONFIG)
    assert open_run(tmp_path).cluster_budget == "fit"  # written now: kept as written
    text = (tmp_path / CONFIG).read_text()
    old = "\n".join(line for line in text.splitlines() if not line.startswith("cluster_budget"))
    assert old != text
    (tmp_path / CONFIG).write_text(old + "\n")
    cfg = open_run(tmp_path)
    assert (cfg.cluster_budget, cfg.seed) == ("prefix", 4)
