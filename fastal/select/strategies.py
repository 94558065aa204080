"""Selection strategies: a registry of functions choosing ``budget`` unlabelled superpixels.

Index spaces: a *row* indexes :class:`PoolScores` (one scored superpixel); a *candidate*
indexes the unlabelled rows only; the returned ids are *global superpixel ids*. Each strategy
sees candidates only, so it cannot pick a labelled superpixel.

Example::

    sel = select("contrastive", scores, bank.features(), budget=250, labelled_mask=pool.labelled_mask, seed=0)
    sel.ids  # np.int64 (250,) global superpixel ids;  sel.timings  # {"umap_fit": s, ...}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from fastal.errors import FastalError
from fastal.select.engines import make_kmeans, make_umap, resolve_engine
from fastal.select.scoring import PoolScores
from fastal.select.umap_params import UMAPParams


@dataclass
class Selection:
    """What a strategy chose: global superpixel ids (np.int64, ``budget`` of them) in the
    strategy's order of preference (most wanted first, so that a pixel budget can keep a
    prefix) and stage seconds; for the selection table (:mod:`fastal.select.table`) the scored
    rows it chose from and what its final fit gave them (``Candidates.fitted``)."""

    ids: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    rows: torch.Tensor | None = None  # (Nc,) int64 rows of the PoolScores that were candidates
    fitted: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Candidates:
    """The unlabelled part of the pool, as a strategy sees it (tensors on the pool's device)."""

    features: torch.Tensor  # (Nc, D)
    entropy: torch.Tensor  # (Nc,)
    margin: torch.Tensor  # (Nc,)
    labelled_features: torch.Tensor  # (Nl, D): scored rows that are already labelled
    bank_features: torch.Tensor | None  # (M, D)
    budget: int
    seed: int
    engine: str
    umap: UMAPParams
    timings: dict[str, float]
    clusters: float = 1.0  # KMeans clusters per pick (clustering strategies)
    # What the final fit gave each candidate, for the selection table: "embedding" (Nc, d) and
    # "cluster" (Nc,) int64, set by the strategies that have them.
    fitted: dict[str, torch.Tensor] = field(default_factory=dict)

    def num_clusters(self) -> int:
        """k of the clustering strategies: ``clusters`` x budget, at most the candidates."""
        return min(self.entropy.shape[0], max(self.budget, round(self.clusters * self.budget)))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (synchronising CUDA so that queued kernels are counted where they belong)."""
        sync = self.features.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.features.device)
        t0 = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(self.features.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


Strategy = Callable[[Candidates], torch.Tensor]
STRATEGIES: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return deco


def top_by_score(score: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Positions of the ``k`` largest (smallest) scores; ties go to the lower position."""
    return torch.sort(score, descending=largest, stable=True).indices[:k]


def pick_per_cluster(entropy: torch.Tensor, labels: torch.Tensor, k: int, num_clusters: int | None = None) -> torch.Tensor:
    """``k`` positions: the highest-entropy member of each of ``num_clusters`` (default ``k``)
    clusters, most uncertain first, cut to ``k`` or filled up to ``k`` by entropy.

    KMeans can leave clusters empty (or cuML can return fewer distinct labels); the remaining
    picks are the highest-entropy candidates not yet chosen, so exactly ``k`` positions return.
    """
    from fastal.kernels import segment_argmax

    best = segment_argmax(entropy, labels, num_clusters or k)  # position per cluster, -1 for empty
    chosen = best[best >= 0]
    chosen = chosen[top_by_score(entropy[chosen], min(k, chosen.numel()))]
    missing = k - chosen.numel()
    if missing > 0:
        rest = torch.ones(entropy.shape[0], dtype=torch.bool, device=entropy.device)
        rest[chosen] = False
        rest_pos = rest.nonzero()[:, 0]
        chosen = torch.cat([chosen, rest_pos[top_by_score(entropy[rest_pos], missing)]])
    return chosen


@register("random")
def _random(c: Candidates) -> torch.Tensor:
    with c.stage("pick"):
        rng = np.random.default_rng(c.seed)
        pos = rng.choice(c.entropy.shape[0], size=c.budget, replace=False)
    return torch.from_numpy(pos).to(c.entropy.device)


@register("entropy")
def _entropy(c: Candidates) -> torch.Tensor:
    with c.stage("pick"):
        return top_by_score(c.entropy, c.budget)


@register("margin")
def _margin(c: Candidates) -> torch.Tensor:
    with c.stage("pick"):
        return top_by_score(c.margin, c.budget, largest=False)


def k_center_greedy(x: torch.Tensor, centres: torch.Tensor, k: int, seed: int, chunk_size: int = 4096) -> torch.Tensor:
    """Greedy k-center (coreset) on rows of ``x``: ``k`` positions, each the farthest from all centres so far.

    ``centres`` (labelled points) start the set; with none, the first pick is a seeded random row.
    """
    from fastal.select.kmeans_torch import full_assign

    x = x.float()
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    picks = torch.empty(k, dtype=torch.int64, device=x.device)
    if centres.shape[0]:
        min_d2 = full_assign(x, centres.float(), chunk_size)[1]
        start = 0
    else:
        first = int(np.random.default_rng(seed).integers(n))
        picks[0] = first
        min_d2 = (x_sq - 2.0 * (x @ x[first]) + x_sq[first]).clamp_min_(0.0)
        min_d2[first] = -1.0
        start = 1
    for i in range(start, k):
        p = torch.argmax(min_d2)  # first maximum on ties
        picks[i] = p
        d2 = (x_sq - 2.0 * (x @ x[p]) + x_sq[p]).clamp_min_(0.0)
        min_d2 = torch.minimum(min_d2, d2)
        min_d2[p] = -1.0  # never again
    return picks


@register("coreset")
def _coreset(c: Candidates) -> torch.Tensor:
    with c.stage("k_center"):
        return k_center_greedy(c.features, c.labelled_features, c.budget, c.seed)


@register("kmeans-entropy")
def _kmeans_entropy(c: Candidates) -> torch.Tensor:
    with c.stage("kmeans"):
        labels = make_kmeans(c.engine, c.num_clusters(), c.seed).fit_predict(c.features)
    c.fitted["cluster"] = labels
    with c.stage("pick"):
        return pick_per_cluster(c.entropy, labels, c.budget, c.num_clusters())


@register("contrastive")
def _contrastive(c: Candidates) -> torch.Tensor:
    if c.bank_features is None or c.bank_features.shape[0] <= c.umap.n_neighbors:
        n = 0 if c.bank_features is None else c.bank_features.shape[0]
        raise FastalError(
            f"contrastive selection needs a memory bank of more than {c.umap.n_neighbors} features, got {n}"
        )
    with c.stage("umap_fit"):
        reducer = make_umap(c.engine, c.umap).fit(c.bank_features.to(c.features.device))
    with c.stage("umap_transform"):
        emb = reducer.transform(c.features)
    with c.stage("kmeans"):
        labels = make_kmeans(c.engine, c.num_clusters(), c.seed).fit_predict(emb)
    c.fitted.update(embedding=emb, cluster=labels)
    with c.stage("pick"):
        return pick_per_cluster(c.entropy, labels, c.budget, c.num_clusters())


def select(
    strategy: str,
    scores: PoolScores,
    bank_features: torch.Tensor | None,
    budget: int,
    labelled_mask: np.ndarray,
    seed: int = 0,
    engine: str = "auto",
    umap: UMAPParams | dict | None = None,
    clusters: float = 1.0,
) -> Selection:
    """Choose ``budget`` unlabelled superpixels of the scored pool with ``strategy``.

    ``clusters``: KMeans clusters per chosen superpixel for ``contrastive`` and ``kmeans-entropy``
    (1: k = budget, the paper's; more: each cluster's most uncertain member is a candidate and
    the most uncertain ``budget`` candidates are chosen).

    ``labelled_mask`` is indexed by global superpixel id (``RegionPool.labelled_mask``). Bad
    strategy/engine names, an impossible budget or a mask that does not cover the pool raise
    FastalError. Deterministic on CPU for a seed.
    """
    if strategy not in STRATEGIES:
        raise FastalError(f"--strategy {strategy!r}: unknown; choose one of {', '.join(STRATEGIES)}")
    device = scores.features.device
    engine_name = resolve_engine(engine, device)
    umap_params = umap if isinstance(umap, UMAPParams) else UMAPParams.from_dict(umap)
    gids = np.asarray(scores.gids, dtype=np.int64)
    labelled_mask = np.asarray(labelled_mask, dtype=bool)
    if gids.size and gids.max() >= labelled_mask.shape[0]:
        raise FastalError(
            f"labelled_mask covers {labelled_mask.shape[0]} superpixels, the scores hold id {int(gids.max())}"
        )
    is_labelled = labelled_mask[gids]
    n_free = int((~is_labelled).sum())
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise FastalError(f"budget = {budget!r}: must be a positive number of superpixels")
    if not clusters >= 1:
        raise FastalError(f"clusters = {clusters!r}: must be >= 1 (KMeans clusters per chosen superpixel)")
    if budget > n_free:
        raise FastalError(
            f"budget {budget} > {n_free} unlabelled superpixels in the scored pool "
            f"({gids.size} scored, {gids.size - n_free} labelled)"
        )
    t0 = time.perf_counter()
    free_rows = torch.from_numpy(np.flatnonzero(~is_labelled)).to(device)
    lab_rows = torch.from_numpy(np.flatnonzero(is_labelled)).to(device)
    timings: dict[str, float] = {}
    cand = Candidates(
        features=scores.features[free_rows],
        entropy=scores.entropy[free_rows].float(),
        margin=scores.margin[free_rows].float(),
        labelled_features=scores.features[lab_rows],
        bank_features=bank_features,
        budget=int(budget),
        seed=seed,
        engine=engine_name,
        umap=umap_params,
        timings=timings,
        clusters=float(clusters),
    )
    pos = STRATEGIES[strategy](cand)
    rows = free_rows[pos].cpu().numpy()  # device -> host: the chosen rows only
    ids = gids[rows]
    if np.unique(ids).size != budget:  # a strategy bug must not reach the oracle
        raise RuntimeError(f"strategy {strategy!r} returned {np.unique(ids).size} distinct ids, expected {budget}")
    timings["total"] = time.perf_counter() - t0
    return Selection(ids=ids, timings=timings, rows=free_rows, fitted=cand.fitted)
