"""The selection table: why each region was picked, one row per superpixel a strategy chose from.

Columns (:data:`SCHEMA`, in this order):

- ``superpixel`` global id; ``image`` its image index; ``pixels`` its size;
- ``entropy``, ``margin``: the scores the strategy saw (``entropy`` per-pixel when the run says
  ``region_entropy = "mean"``); ``score``: the strategy's own score where it has one (``cb-ratio``,
  ``weighted-ratio``, ...; larger is picked first), null otherwise; ``predicted``: the region's
  dominant predicted class (-1 where the scores lack it);
- ``x``, ``y``: the first two coordinates of the strategy's embedding (UMAP for ``contrastive``),
  null for strategies without one; ``cluster``: its KMeans cluster, -1 without;
- ``rank``: pick order among the kept picks (0 first), -1 if not picked; ``round``: which call of
  the strategy picked it (0 first; a cycle of the loop asks again while its picks fall short of
  the pixel budget), -1 if not picked; ``class``: the oracle's dominant class once queried
  (-1 for an all-ignore region), -1 otherwise.

Rows are the *candidates* of the first round: every scored superpixel that was unlabelled when
the selection began (superpixels labelled before are left out, not flagged). A later round
chooses among fewer of them (the earlier picks taken) with a fit of its own; the table keeps
the first round's ``x``, ``y`` and ``cluster`` for every row, since that fit saw them all, and
gives every kept pick its ``rank`` over all rounds and its ``round``.

The columns are computed as torch tensors on the pool's device; :func:`selection_table` then
hands them to one backend, chosen once by device as pytorch_scatter chooses its kernels: on CUDA
with cuDF installed a ``cudf.DataFrame`` built from DLPack views (no host copy), elsewhere a
``pandas.DataFrame``. Both write parquet with their own writer (:func:`write_table`).

Example::

    table = selection_table(scores, [sel], [sel.ids[:40]], cache.offsets, cache.sizes, classes=answer.classes)
    write_table(table, run_dir / "selection" / "cycle-2.parquet")
    read_table(run_dir / "selection" / "cycle-2.parquet")  # pandas, whichever backend wrote it
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastal.atomic import atomic_open
from fastal.device import resolve_backend
from fastal.errors import FastalError
from fastal.select.scoring import PoolScores
from fastal.select.strategies import Selection

SCHEMA: dict[str, torch.dtype] = {
    "superpixel": torch.int64, "image": torch.int32, "pixels": torch.int32, "entropy": torch.float32,
    "margin": torch.float32, "score": torch.float32, "predicted": torch.int32, "x": torch.float32,
    "y": torch.float32, "cluster": torch.int32, "rank": torch.int32, "round": torch.int32, "class": torch.int32,
}  # fmt: skip
KEEP = ("all", "picked", "none")  # the run config's `selection_table`
BACKENDS = ("auto", "pandas", "cudf")
TABLE_DIR = "selection"  # RUN_DIR/selection/cycle-K.parquet (and embedding-cycle-K.png)


def cycle_table_path(run_dir: str | Path, cycle: int) -> Path:
    return Path(run_dir) / TABLE_DIR / f"cycle-{cycle}.parquet"


def table_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` -> ``"cudf"`` on CUDA when cuDF imports, else ``"pandas"``; checks forced choices."""
    return resolve_backend(backend, device, choices=BACKENDS, gpu="cudf", cpu="pandas", what="selection table backend")


def table_columns(scores: PoolScores, rounds: list[Selection], kept: list[np.ndarray], offsets: Any, sizes: Any,
                  classes: np.ndarray | None = None, keep: str = "all") -> dict[str, torch.Tensor]:
    """The table's columns as tensors on the scores' device (see the module docstring).

    ``rounds``: the strategy's Selections of one cycle, in order; ``kept[r]``: the prefix of
    ``rounds[r].ids`` that was kept; ``classes``: the oracle's class of each kept id, in the
    order of ``concatenate(kept)`` (None: not queried yet). ``keep="picked"``: the kept picks
    only, in rank order.

    Each column is made in its final dtype before the next one starts: the table is the one
    pool-sized copy this holds, plus one column's intermediate at a time (a fitted score already
    in its dtype is not even copied).
    """
    if keep not in ("all", "picked"):
        raise FastalError(f"selection_table = {keep!r}: a table keeps all rows or the picked ones")
    device = scores.entropy.device
    first = rounds[0]
    rows = first.rows  # (Nc,) scored rows the first round chose from
    n = int(rows.numel())
    gids = torch.as_tensor(np.asarray(scores.gids, dtype=np.int64), device=device)[rows]
    at = _pick_rows(gids, np.concatenate(kept), len(sizes))  # (P,) table row of each kept pick
    take = at if keep == "picked" else slice(None)

    def column(name: str, values: torch.Tensor) -> torch.Tensor:
        return values[take].to(SCHEMA[name]).contiguous()

    def unset() -> torch.Tensor:
        return torch.full((n,), -1, dtype=torch.int32, device=device)

    def at_picks(values: torch.Tensor) -> torch.Tensor:  # (P,) values of the picks, -1 elsewhere
        out = unset()
        out[at] = values.to(device=device, dtype=torch.int32)
        return out

    emb = first.fitted.get("embedding")
    nan = torch.full((n,), float("nan"), device=device)  # shared by the columns a strategy leaves null
    count = [len(k) for k in kept]
    return {
        "superpixel": column("superpixel", gids),
        "image": column("image", torch.searchsorted(torch.as_tensor(np.asarray(offsets, dtype=np.int64), device=device),
                                                    gids, right=True, out_int32=True).sub_(1)),
        "pixels": column("pixels", torch.as_tensor(np.asarray(sizes, dtype=np.int64), device=device)[gids]),
        "entropy": column("entropy", scores.entropy[rows]),
        "margin": column("margin", scores.margin[rows]),
        "score": column("score", first.fitted.get("score", nan)),
        "predicted": column("predicted", unset() if scores.predicted is None else scores.predicted[rows]),
        "x": column("x", nan if emb is None else emb[:, 0]),
        "y": column("y", nan if emb is None or emb.shape[1] < 2 else emb[:, 1]),
        "cluster": column("cluster", first.fitted.get("cluster", unset())),
        "rank": column("rank", at_picks(torch.arange(at.numel()))),
        "round": column("round", at_picks(torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(count)))),
        "class": column("class", unset() if classes is None else at_picks(torch.as_tensor(np.asarray(classes)))),
    }  # fmt: skip


def _pick_rows(gids: torch.Tensor, picked: np.ndarray, num_superpixels: int) -> torch.Tensor:
    """(P,) the row of ``gids`` (the table's superpixels) holding each of ``picked``."""
    where = torch.full((num_superpixels,), -1, dtype=torch.int64, device=gids.device)  # global id -> table row
    where[gids] = torch.arange(gids.numel(), device=gids.device)
    at = where[torch.as_tensor(picked.astype(np.int64), device=gids.device)]
    if bool((at < 0).any()):  # device -> host: one flag
        raise RuntimeError("a kept pick is not among the first round's candidates")
    return at


def _pandas_frame(cols: dict[str, torch.Tensor]) -> Any:
    import pandas as pd

    # device -> host: the table itself, for the host's parquet writer (on the CPU: views, no copy, and
    # copy=False keeps pandas from consolidating them into a copy). NaN in score/x/y is written as null.
    return pd.DataFrame({name: col.cpu().numpy() for name, col in cols.items()}, copy=False)


def _cudf_frame(cols: dict[str, torch.Tensor]) -> Any:
    import cudf
    import cupy

    df = cudf.DataFrame({name: cupy.from_dlpack(col) for name, col in cols.items()})  # views, on the device
    for name in ("score", "x", "y"):  # null, as the pandas path writes them, not NaN
        df[name] = df[name].nans_to_nulls()
    return df


_FRAMES: dict[str, Callable[[dict[str, torch.Tensor]], Any]] = {"pandas": _pandas_frame, "cudf": _cudf_frame}


def selection_table(scores: PoolScores, rounds: list[Selection], kept: list[np.ndarray], offsets: Any, sizes: Any,
                    classes: np.ndarray | None = None, keep: str = "all", backend: str = "auto") -> Any:
    """The selection table of one cycle (or one `fastal select` round) as a DataFrame: cuDF's on
    CUDA when installed (``backend="auto"``), else pandas'; None for ``keep="none"`` (nothing is
    computed). Other arguments as :func:`table_columns`.

    Deterministic: the same selection gives the same table (a redone cycle rewrites the same file).
    """
    name = table_backend(backend, scores.entropy.device)
    if keep == "none":
        return None
    return _FRAMES[name](table_columns(scores, rounds, kept, offsets, sizes, classes, keep))


def write_table(table: Any, path: str | Path, row_group_rows: int | None = None) -> None:
    """Write a pandas or cuDF table as parquet, atomically: each writer streams it, a row group at
    a time, into the temporary file that :func:`fastal.atomic.atomic_open` renames over ``path``
    once it is whole, so no second copy of the table is held as bytes. ``row_group_rows``: rows
    per row group (None: the writer's default, pyarrow's 1,048,576 rows)."""
    with atomic_open(path, "wb") as f:
        table.to_parquet(f, index=False, **_row_groups(table, row_group_rows))


def _row_groups(table: Any, rows: int | None) -> dict[str, int]:
    """``to_parquet``'s row-group size in the spelling of ``table``'s library (cuDF's differs)."""
    if rows is None:
        return {}
    cudf = type(table).__module__.startswith("cudf")
    return {"row_group_size_rows" if cudf else "row_group_size": rows}


def read_table(path: str | Path) -> Any:
    """A selection table as a pandas DataFrame; FastalError naming the file when it is not one."""
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise FastalError(f"{path}: not found") from None
    except (pa.ArrowException, OSError) as e:
        raise FastalError(f"{path}: not a parquet file ({e})") from None
    missing = [c for c in SCHEMA if c not in df.columns]
    if missing:
        raise FastalError(f"{path}: not a selection table (no column {missing[0]!r})")
    return df
