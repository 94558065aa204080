"""The issue-29 path at CI size: a generated Cityscapes tree at full resolution (1024x2048, a few
images), `fastal run` with ~2,000 SEEDS regions an image, every stage's time and memory recorded,
the compact (2 bytes a pixel) superpixel cache read by the whole loop."""

from __future__ import annotations

import json

import numpy as np

from fastal.config import make_config, read_toml
from fastal.data import load_dataset
from fastal.data.generate_cityscapes import generate_cityscapes
from fastal.data.superpixels import build_cache
from fastal.loop import run_experiment
from fastal.pool import RegionPool

from test_loop import ROOT


def test_full_size_cityscapes_run(tmp_path):
    data = tmp_path / "cityscapes"
    generate_cityscapes(data, train=2, val=1, seed=1, workers=1, show_progress=False)  # 1024x2048
    values = read_toml(ROOT / "configs" / "cityscapes_scale.toml")
    # Two training steps fill the memory bank with ~10 features: UMAP gets 3 neighbours, not 15.
    values.update(data_root=str(data), scale=None, train_images=0, val_images=0, batch_size=1, umap_neighbors=3,
                  cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert values["backbone"] == "efficientnet_lite0"  # the CPU protocol's, as the measurement runs it
    res = run_experiment(make_config(values), tmp_path / "run")

    cache = build_cache(load_dataset("cityscapes", root=data), superpixels=2000, cache_dir=tmp_path / "cache",
                        show_progress=False)  # fmt: skip
    assert cache.reused and cache.shapes.tolist() == [[1024, 2048]] * 2
    assert np.all(cache.counts > 1500)  # SEEDS' grid nearest 2,000 at 1024x2048, a few emptied
    disk = sum(f.stat().st_size for f in cache.path.iterdir())
    assert disk / cache.sizes.sum() < 2.05  # uint16 labels, per-superpixel sizes: <= 2.5 bytes a pixel
    assert res["num_superpixels"] == cache.num_superpixels and res["num_pixels"] == 2 * 1024 * 2048
    pool = RegionPool.load(tmp_path / "run" / "pool.npz")
    assert [c["cycle"] for c in res["cycles"]] == [1, 2] and pool.current_cycle == 2
    queried = [json.loads(line) for line in (tmp_path / "run" / "queries.jsonl").read_text().splitlines()]
    assert len(queried) == pool.num_labelled and {q["image_id"] for q in queried} <= set(cache.image_ids)
    assert (tmp_path / "run" / "selection" / "embedding-cycle-2.png").exists()
    second = res["cycles"][1]
    assert {"load", "score", "select", "oracle", "write", "commit", "train", "evaluate"} == set(second["stages"])
    assert second["peak_rss_gb"] == max(s["peak_rss_gb"] for s in second["stages"].values())
    assert {"data", "superpixels", "check"} <= set(res["setup"])
