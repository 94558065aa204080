"""The pixel-budget policy: how a cycle turns a budget in pixels into a ranked list of regions.

:func:`rank` asks the strategy for the missing pixels' worth of regions at the mean free region
size and keeps the shortest prefix of its ranked picks that reaches the budget
(:func:`fastal.pool.take_until`), asked again while its picks fall short; so a strategy that
prefers large regions labels fewer of them, not more pixels. ``contrastive`` and
``kmeans-entropy`` under ``cluster_budget = "fit"`` instead choose k so that every cluster's
most uncertain region fits (:mod:`fastal.select.cluster_budget`), and keep all k picks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastal.select.scoring import PoolScores
from fastal.select.strategies import CLUSTER_STRATEGIES, Selection, select
from fastal.select.umap.params import UMAPParams


@dataclass
class Ranking:
    """What :func:`rank` chose: the cycle's ``selection`` (its ``ids``, global, most wanted
    first) and, to explain it in the selection table, the pool's scores, every call of the
    strategy (``calls``) and the prefix of each call's ids that was kept (``ids`` is their
    concatenation)."""

    selection: Selection
    scores: PoolScores
    calls: list[Selection]
    kept: list[np.ndarray]

    @property
    def ids(self) -> np.ndarray:
        return self.selection.ids

    def table(self, cache: Any, classes: np.ndarray | None = None, keep: str = "all") -> Any:
        """The selection table (:func:`fastal.select.selection_table.selection_table`); ``classes``:
        the oracle's class of each of ``ids``, None before the oracle answered."""
        from fastal.select.selection_table import selection_table

        return selection_table(self.scores, self.calls, self.kept, cache.offsets, cache.sizes, classes, keep)


def rank(scores: PoolScores, bank: torch.Tensor | None, labelled: np.ndarray, seed: int, *, strategy: str,
         engine: str, umap: UMAPParams, clusters: float = 1.0, cluster_budget: str = "fit",
         sizes: np.ndarray | None = None, budget: int | None = None, pixels: float | None = None) -> Ranking:
    """Choose from the scored pool with ``strategy``: ``budget`` superpixels, or regions worth
    ``pixels`` (``sizes``: pixels of every superpixel, by global id).

    With ``pixels``, ``contrastive`` and ``kmeans-entropy`` under ``cluster_budget = "fit"`` choose
    k so that every cluster's pick fits (one round; what is left goes to the next cycle). The
    other strategies, and ``"prefix"``, are asked for the missing pixels' worth at the mean free
    region size and keep the prefix that reaches them, asked again while their picks fall short.

    ``labelled``: bool mask over global ids (not modified).
    """
    from fastal.pool import take_until

    calls: list[Selection] = []

    def choose(k: int, taken: np.ndarray, seed: int, **pixel_budget: Any) -> Selection:
        calls.append(select(strategy, scores, bank, budget=k, labelled_mask=taken, seed=seed, engine=engine,
                            umap=umap, clusters=clusters, **pixel_budget))  # fmt: skip
        return calls[-1]

    def whole(sel: Selection) -> Ranking:  # one call, every id kept
        return Ranking(sel, scores, calls, [sel.ids])

    if pixels is None:
        return whole(choose(int(budget), labelled, seed))
    sizes, taken, missing = np.asarray(sizes, dtype=np.int64), labelled.copy(), pixels

    def first_guess() -> int:  # the missing pixels' worth of regions at the mean free size
        return int(np.clip(round(max(missing, 0.0) / sizes[~taken].mean()), 1, (~taken).sum()))

    if cluster_budget == "fit" and strategy in CLUSTER_STRATEGIES:
        return whole(choose(first_guess(), taken, seed, pixels=missing, sizes=sizes))
    rounds: list[Selection] = []
    for round_ in range(taken.size):  # each round takes >= 1 region: it ends
        sel = choose(first_guess(), taken, seed + round_)
        # At least one region: the last cycle's overshoot can exceed a tiny step of the schedule.
        ids = take_until(sizes, sel.ids, missing) if missing > 0 else sel.ids[:1]
        rounds.append(kept_prefix(sel, ids.size))
        taken[ids] = True
        missing -= sizes[ids].sum()
        if missing <= 0 or taken.all():
            break
    return Ranking(concat(rounds), scores, calls, [r.ids for r in rounds])


def kept_prefix(sel: Selection, n: int) -> Selection:
    """``sel`` cut to its first ``n`` ids (its KMeans fit's k unchanged)."""
    return dataclasses.replace(sel, ids=sel.ids[:n], clusters=None if sel.clusters is None else sel.clusters[:n])


def concat(rounds: list[Selection]) -> Selection:
    """One Selection of a cycle's rounds: their ids in order, their k summed, their clusters numbered apart."""
    timings: dict[str, float] = {}
    for r in rounds:
        for name, seconds in r.timings.items():
            timings[name] = timings.get(name, 0.0) + seconds
    ids = np.concatenate([r.ids for r in rounds])
    if rounds[0].k is None:
        return Selection(ids=ids, timings=timings)
    offsets = np.cumsum([0] + [r.k for r in rounds])
    clusters = np.concatenate([np.where(r.clusters >= 0, r.clusters + o, -1) for r, o in zip(rounds, offsets)])
    return Selection(ids=ids, timings=timings, k=int(offsets[-1]), clusters=clusters,
                     kmeans_fits=sum(r.kmeans_fits for r in rounds))  # fmt: skip
