"""The selection table (fastal.select.selection_table): schema, parquet round trip, the columns against the
selection that made them (two rounds, as a loop cycle asks), the cuDF backend, and `fastal report`'s
per-class query statistics and embedding plot, checked by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from fastal.errors import FastalError
from fastal.run_report import embedding_sample, group_runs, plot_embedding, query_class_stats, write_report
from fastal.select import PoolScores, select
from fastal.select.selection_table import (
    SCHEMA,
    _pandas_frame,
    read_table,
    selection_table,
    table_columns,
    write_table,
)
from fastal.select.strategies import Selection
from fastal.stages import measured, resident_bytes

DTYPE = {name: str(d).removeprefix("torch.") for name, d in SCHEMA.items()}  # numpy's spelling
NUM_IMAGES, PER_IMAGE = 12, 10  # 120 superpixels; images 2.. are scored (rows 20..119)


@pytest.fixture(scope="module")
def pool() -> dict:
    rng = np.random.default_rng(0)
    n = NUM_IMAGES * PER_IMAGE
    offsets = np.arange(NUM_IMAGES + 1, dtype=np.int64) * PER_IMAGE
    sizes = rng.integers(5, 50, size=n).astype(np.int64)
    gids = np.arange(2 * PER_IMAGE, n, dtype=np.int64)
    centres = rng.normal(size=(4, 6)) * 5
    scores = PoolScores(
        features=torch.from_numpy((centres[rng.integers(4, size=gids.size)] + rng.normal(size=(gids.size, 6)))
                                  .astype(np.float32)),
        entropy=torch.from_numpy(rng.random(gids.size).astype(np.float32)),
        margin=torch.from_numpy(rng.random(gids.size).astype(np.float32)),
        gids=gids,
    )  # fmt: skip
    bank = torch.from_numpy((centres[rng.integers(4, size=60)] + rng.normal(size=(60, 6))).astype(np.float32))
    labelled = np.zeros(n, dtype=bool)
    labelled[rng.choice(gids, 25, replace=False)] = True
    labelled[:5] = True  # outside the scored images
    return {"scores": scores, "bank": bank, "labelled": labelled, "offsets": offsets, "sizes": sizes}


def two_rounds(pool: dict, strategy: str) -> tuple[list, list[np.ndarray]]:
    """A cycle that keeps 6 of 10 picks, then asks again for 4 and keeps 3 (as rank_unlabelled does)."""
    taken = pool["labelled"].copy()
    first = select(strategy, pool["scores"], pool["bank"], budget=10, labelled_mask=taken, seed=1, engine="torch")
    taken[first.ids[:6]] = True
    second = select(strategy, pool["scores"], pool["bank"], budget=4, labelled_mask=taken, seed=2, engine="torch")
    return [first, second], [first.ids[:6], second.ids[:3]]


@pytest.mark.parametrize("strategy", ["contrastive", "kmeans-entropy", "entropy"])
def test_columns_match_the_selection(pool: dict, strategy: str) -> None:
    rounds, kept = two_rounds(pool, strategy)
    picked = np.concatenate(kept)
    classes = np.arange(picked.size) % 4 - 1  # -1 (all ignore) is a class too
    t = selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], classes)
    assert isinstance(t, pd.DataFrame)
    assert list(t.columns) == list(SCHEMA)
    assert {c: str(t[c].dtype) for c in t.columns} == DTYPE
    # Rows: every scored superpixel unlabelled when the cycle began, in scored order.
    free = pool["scores"].gids[~pool["labelled"][pool["scores"].gids]]
    np.testing.assert_array_equal(t["superpixel"], free)
    np.testing.assert_array_equal(t["image"], free // PER_IMAGE)
    np.testing.assert_array_equal(t["pixels"], pool["sizes"][free])
    row = {g: r for r, g in enumerate(pool["scores"].gids)}
    np.testing.assert_allclose(t["entropy"], pool["scores"].entropy.numpy()[[row[g] for g in free]])
    np.testing.assert_allclose(t["margin"], pool["scores"].margin.numpy()[[row[g] for g in free]])
    # The picks in rank order are the kept ids of both rounds; their round and class follow.
    picks = t[t["rank"] >= 0].sort_values("rank")
    np.testing.assert_array_equal(picks["superpixel"], picked)
    np.testing.assert_array_equal(picks["rank"], np.arange(picked.size))
    np.testing.assert_array_equal(picks["round"], [0] * 6 + [1] * 3)
    np.testing.assert_array_equal(picks["class"], classes)
    rest = t[t["rank"] < 0]
    assert len(rest) == len(t) - picked.size and (rest["round"] == -1).all() and (rest["class"] == -1).all()
    # Embedding and clusters: the first round's fit, for every row; -1 / null without one.
    if strategy == "entropy":
        assert t["x"].isna().all() and t["y"].isna().all() and (t["cluster"] == -1).all()
    else:
        np.testing.assert_array_equal(t["cluster"], rounds[0].fitted["cluster"].numpy())
        if strategy == "contrastive":
            np.testing.assert_array_equal(t[["x", "y"]].to_numpy(), rounds[0].fitted["embedding"].numpy())
        else:
            assert t["x"].isna().all()
        # One pick per cluster (k = budget, clusters = 1): the first round's kept picks are each the
        # most uncertain candidate of a cluster of their own.
        first = picks[picks["round"] == 0]
        assert first["cluster"].is_unique
        top = t.groupby("cluster")["entropy"].max()
        np.testing.assert_array_equal(first["entropy"], top[first["cluster"]].to_numpy())


def test_parquet_round_trip_and_nulls(pool: dict, tmp_path: Path) -> None:
    for strategy in ("contrastive", "entropy"):
        rounds, kept = two_rounds(pool, strategy)
        t = selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"])
        path = tmp_path / strategy / "cycle-2.parquet"
        write_table(t, path)
        pd.testing.assert_frame_equal(read_table(path), t)
        schema = pq.read_schema(path)
        assert schema.names == list(SCHEMA) and str(schema.field("superpixel").type) == "int64"
        nulls = pq.read_table(path).column("x").null_count
        assert nulls == (len(t) if strategy == "entropy" else 0)  # null in the file, not NaN
        assert not list(path.parent.glob(".*.tmp"))  # written atomically


def test_written_table_equals_the_columns_over_several_row_groups(pool: dict, tmp_path: Path) -> None:
    rounds, kept = two_rounds(pool, "contrastive")
    args = (pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], np.arange(9) % 3)
    cols = table_columns(*args)
    t = _pandas_frame(cols)
    pd.testing.assert_frame_equal(t, selection_table(*args))
    # The frame holds the columns themselves (no pandas copy of them).
    assert all(np.shares_memory(t[name].to_numpy(), col.numpy()) for name, col in cols.items())
    path = tmp_path / "cycle-2.parquet"
    write_table(t, path, row_group_rows=16)
    rows = len(t)
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-rows // 16) >= 4
    pd.testing.assert_frame_equal(read_table(path), pd.DataFrame({name: col.numpy() for name, col in cols.items()}))


@pytest.mark.parametrize("old", [True, False])
def test_a_writer_failing_midway_leaves_the_old_table_or_none(pool: dict, tmp_path: Path, disk_with_room,
                                                                old: bool) -> None:  # fmt: skip
    rounds, kept = two_rounds(pool, "contrastive")
    t = selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"])
    whole = tmp_path / "whole.parquet"
    write_table(t, whole, row_group_rows=8)
    path = tmp_path / "selection" / "cycle-2.parquet"
    if old:
        path.parent.mkdir()
        path.write_bytes(b"the old table")
    disk_with_room(whole.stat().st_size // 2)  # the writer fails after some of its row groups
    with pytest.raises(FastalError, match="cannot write .*cycle-2.parquet"):
        write_table(t, path, row_group_rows=8)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["whole.parquet", *(["cycle-2.parquet"] * old)]
    assert not old or path.read_bytes() == b"the old table"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_table_and_write_hold_one_copy_of_the_rows(tmp_path: Path) -> None:
    """Building and writing a table of two million rows adds the table's own bytes and a margin:
    ~1.5x here (a column's intermediate at a time, and the writer's buffers, ~30 MB whatever the
    rows); it was ~2.8x (int64 columns cast one by one, a pandas copy, the whole file in memory)."""
    n, rng = 2_000_000, np.random.default_rng(0)
    scores = PoolScores(features=torch.empty(n, 0), entropy=torch.rand(n), margin=torch.rand(n),
                        gids=np.arange(n, dtype=np.int64), predicted=torch.randint(0, 19, (n,)))  # fmt: skip
    ids = rng.choice(n, 20_000, replace=False)
    sel = Selection(ids=ids, rows=torch.arange(n), fitted={"embedding": torch.rand(n, 2),
                                                           "cluster": torch.randint(0, 20_000, (n,))})  # fmt: skip
    offsets, sizes = np.arange(0, n + 1, 2000, dtype=np.int64), np.full(n, 64, dtype=np.int64)
    table_bytes = n * sum(torch.empty(0, dtype=d).element_size() for d in SCHEMA.values())
    stages: dict = {}
    start = resident_bytes()
    with measured(stages, "write"):
        table = selection_table(scores, [sel], [ids], offsets, sizes, np.zeros(ids.size, dtype=np.int16))
        write_table(table, tmp_path / "cycle-2.parquet", row_group_rows=1 << 16)
    extra = stages["write"]["peak_rss_gb"] * (1 << 30) - start
    assert extra < 1.5 * table_bytes + (32 << 20), f"{extra / table_bytes:.2f} tables"


def test_picked_keeps_the_picks_in_rank_order_and_none_nothing(pool: dict) -> None:
    rounds, kept = two_rounds(pool, "kmeans-entropy")
    classes = np.arange(9)
    full = selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], classes)
    picked = selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], classes, keep="picked")
    want = full[full["rank"] >= 0].sort_values("rank").reset_index(drop=True)
    pd.testing.assert_frame_equal(picked, want)
    assert selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], keep="none") is None
    with pytest.raises(FastalError, match="all rows or the picked ones"):
        table_columns(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], keep="none")
    with pytest.raises(FastalError, match="selection table backend cudf needs a CUDA device"):
        selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], backend="cudf")


def test_read_table_names_a_file_that_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "cycle-2.parquet"
    bad.write_text("not parquet")
    with pytest.raises(FastalError, match="cycle-2.parquet: not a parquet file"):
        read_table(bad)
    pd.DataFrame({"superpixel": [1]}).to_parquet(bad)
    with pytest.raises(FastalError, match="not a selection table"):
        read_table(bad)


@pytest.mark.cudf
def test_cudf_table_on_the_device_equals_pandas(pool: dict, tmp_path: Path) -> None:
    import cudf

    cuda = torch.device("cuda")
    s = pool["scores"]
    scores = PoolScores(s.features.to(cuda), s.entropy.to(cuda), s.margin.to(cuda), s.gids)
    for strategy in ("contrastive", "entropy"):
        taken = pool["labelled"].copy()
        sel = select(strategy, scores, pool["bank"].to(cuda), budget=10, labelled_mask=taken, seed=1, engine="torch")
        args = (scores, [sel], [sel.ids[:7]], pool["offsets"], pool["sizes"], np.arange(7))
        gpu = selection_table(*args)
        assert isinstance(gpu, cudf.DataFrame)
        pd.testing.assert_frame_equal(gpu.to_pandas(), selection_table(*args, backend="pandas"))
        write_table(gpu, tmp_path / f"{strategy}.parquet")
        pd.testing.assert_frame_equal(read_table(tmp_path / f"{strategy}.parquet"), gpu.to_pandas())


# ---- fastal report --------------------------------------------------------------------------------
def fake_table(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """A table of picks (class, pixels, rank) and one row not picked (never queried: class -1)."""
    rows = [*rows, (-1, 1000, -1)]
    n = len(rows)
    cols = {name: np.full(n, -1) for name in SCHEMA}
    cols.update(superpixel=np.arange(n), image=np.zeros(n), entropy=np.zeros(n), margin=np.zeros(n),
                x=np.full(n, np.nan), y=np.full(n, np.nan), pixels=[r[1] for r in rows], rank=[r[2] for r in rows],
                **{"class": [r[0] for r in rows]})  # fmt: skip
    return pd.DataFrame({name: np.asarray(cols[name]).astype(DTYPE[name]) for name in SCHEMA})


def fake_run(root: Path, name: str, strategy: str, tables: dict[int, list[tuple[int, int, int]]], cycles: int) -> Path:
    d = root / name
    d.mkdir()
    recs = [{"cycle": c, "labelled_pixel_fraction": 0.1 * c, "miou": 0.5} for c in range(1, cycles + 1)]
    (d / "results.json").write_text(json.dumps({"dataset": "synthetic", "strategy": strategy, "seed": 0,
                                                "full_miou": None, "cycles": recs, "classes": ["sky", "road", "car"]}))
    for cycle, rows in tables.items():
        write_table(fake_table(rows), d / "selection" / f"cycle-{cycle}.parquet")
    return d


def test_report_per_class_query_statistics_by_hand(tmp_path: Path, capsys) -> None:
    runs = [
        # a: cycle 2 queries 30 px of road, 10 of car; cycle 3 60 of road. 100 px: road 90 %, car 10 %.
        fake_run(tmp_path, "a", "entropy", {2: [(1, 30, 0), (2, 10, 1)], 3: [(1, 60, 0)]}, cycles=3),
        # b: 20 px of sky, 20 of a void region, 40 of car; cycle 3's table is not evaluated yet: left out.
        fake_run(tmp_path, "b", "entropy", {2: [(0, 20, 1), (-1, 20, 0), (2, 40, 2)], 3: [(1, 500, 0)]}, cycles=2),
        fake_run(tmp_path, "c", "random", {}, cycles=2),  # no tables (selection_table = "none")
    ]
    stats = query_class_stats(group_runs(runs))
    assert len(stats) == 1 and (stats[0]["strategy"], stats[0]["runs"]) == ("entropy", 2)
    # b: sky 25 %, void 25 %, car 50 %; means over a and b:
    assert stats[0]["pct_queried_pixels"] == pytest.approx({"void": 12.5, "sky": 12.5, "road": 45.0, "car": 30.0})
    assert list(stats[0]["pct_queried_pixels"]) == ["void", "sky", "road", "car"]  # class id order
    js = tmp_path / "report.json"
    write_report(runs, None, js)
    assert json.loads(js.read_text())["query_classes"] == stats
    err = capsys.readouterr().err
    assert "% of the queried pixels by dominant class" in err
    assert any("entropy" in line and "12.5" in line and "45.0" in line for line in err.splitlines()), err


def test_embedding_png(pool: dict, tmp_path: Path) -> None:
    rounds, kept = two_rounds(pool, "contrastive")
    t = selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"], np.arange(9) % 3)
    sample = embedding_sample(t, max_points=20, seed=0)
    assert len(sample) == 9 + 20 and (sample["rank"][:9] >= 0).all()  # every pick, 20 others
    pd.testing.assert_frame_equal(sample, embedding_sample(t, max_points=20, seed=0))  # seeded
    # The rows pandas' sample draws from the table filtered to the others (drawn without that copy).
    others = t[t["rank"] < 0].sample(n=20, random_state=0)
    pd.testing.assert_frame_equal(sample, pd.concat([t[t["rank"] >= 0], others], ignore_index=True))
    # The others from at most max_images images (their truth is read image by image); every pick stays.
    few = embedding_sample(t, max_points=20, seed=0, max_images=2)
    assert (few["rank"][:9] >= 0).all() and len(few) > 9
    assert few["image"][9:].nunique() <= 2 < t[t["rank"] < 0]["image"].nunique()
    path = tmp_path / "embedding-cycle-2.png"
    plot_embedding(sample, np.arange(len(sample)) % 4 - 1, ["sky", "road", "car"], path, "cycle 2: contrastive")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[2] in (3, 4)  # decodes
    # A strategy without an embedding has nothing to draw.
    rounds, kept = two_rounds(pool, "entropy")
    assert embedding_sample(selection_table(pool["scores"], rounds, kept, pool["offsets"], pool["sizes"])) is None


def test_config_keys_are_validated() -> None:
    from fastal.config import make_config

    assert make_config({}).selection_table == "all" and make_config({}).selection_plot is False
    assert make_config({"selection_table": "none"}).selection_table == "none"
    with pytest.raises(FastalError, match="selection_table = 'some': choose one of all, picked, none"):
        make_config({"selection_table": "some"})
    with pytest.raises(FastalError, match="selection_plot needs selection_table = \"all\""):
        make_config({"selection_plot": True, "selection_table": "picked"})
