"""Selection strategies: a registry of functions choosing ``budget`` unlabelled superpixels.

Index spaces: a *row* indexes :class:`PoolScores` (one scored superpixel); a *candidate*
indexes the unlabelled rows only; the returned ids are *global superpixel ids*. Each strategy
sees candidates only, so it cannot pick a labelled superpixel.

Example::

    sel = select("contrastive", scores, bank.features(), budget=250, labelled_mask=pool.labelled_mask, seed=0)
    sel.ids  # np.int64 (250,) global superpixel ids;  sel.timings  # {"umap_fit": s, ...}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch

from fastal.errors import FastalError
from fastal.select.cluster_budget import clusters_for, fit_clusters, representatives_padded, stable_partition
from fastal.select.distances import sq_dists_to_row
from fastal.select.engines import make_kmeans, make_umap, resolve_engine
from fastal.select.profiling import StageTimer
from fastal.select.region_scores import class_balanced_ratio, pixel_weighted_ratio
from fastal.select.scoring import PoolScores
from fastal.select.umap.params import UMAPParams


@dataclass
class Selection:
    """What a strategy chose: global superpixel ids (np.int64, ``budget`` of them, or as many as
    fit ``pixels``) in the strategy's order of preference (most wanted first, so that a pixel
    budget can keep a prefix) and stage seconds. The clustering strategies also report their
    final KMeans fit: ``k`` clusters, the ``clusters`` each id represents (-1: a fill-up pick, not
    a cluster's representative) and the ``kmeans_fits`` the choice of k took. For the selection
    table (:mod:`fastal.select.selection_table`): the scored ``rows`` it chose from and what its final fit
    gave them (``Candidates.fitted``)."""

    ids: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    k: int | None = None
    clusters: np.ndarray | None = None  # (len(ids),) int64
    kmeans_fits: int = 0
    rows: torch.Tensor | None = None  # (Nc,) int64 rows of the PoolScores that were candidates
    fitted: dict[str, torch.Tensor] = field(default_factory=dict)
    peak_memory_mib: dict[str, float] = field(default_factory=dict)  # per stage (Candidates.stage)

    def clusters_kept(self, kept: int | None = None) -> float | None:
        """The share of the ``k`` clusters represented among the first ``kept`` ids (all by default)."""
        if self.k is None or self.clusters is None:
            return None
        mine = self.clusters[:kept]
        return float(np.unique(mine[mine >= 0]).size / self.k)


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
    clusters_per_pick: float = 1.0  # KMeans clusters per pick (clustering strategies; select()'s ``clusters``)
    # A budget in pixels (clustering strategies; ``budget`` is then the search's first guess).
    sizes: torch.Tensor | None = None  # (Nc,) pixels of each candidate
    pixels: float | None = None
    # What a clustering strategy's final KMeans fit was (set by it; see Selection): k, the fits
    # its search took, and in ``fitted`` what the fit gave each candidate: "cluster" (Nc,) int64
    # and, with UMAP, "embedding" (Nc, d); a strategy with a score of its own puts it in "score" (Nc,).
    k: int | None = None
    kmeans_fits: int = 0
    fitted: dict[str, torch.Tensor] = field(default_factory=dict)
    # The scored pool and the candidates' rows of it, for the scores beyond entropy and margin
    # (PoolScores' predicted classes, ratios, pool statistics): read them with ``column``.
    scores: PoolScores | None = None
    rows: torch.Tensor | None = None  # (Nc,) int64
    # The strategies' knobs (RunConfig keys of the same names; select() documents them).
    weighted_ratio_coeff: float = 6.0
    cluster_shortlist: float = 10.0

    peak_memory_mib: dict[str, float] = field(default_factory=dict)
    timer: StageTimer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.timer = StageTimer(self.features.device, self.timings, self.peak_memory_mib)

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Time a stage into ``timings`` and ``peak_memory_mib`` (:class:`fastal.select.profiling.StageTimer`)."""
        return self.timer.stage(name)

    def column(self, name: str) -> torch.Tensor:
        """The candidates' rows of the per-superpixel score ``name`` of :class:`PoolScores`."""
        value = None if self.scores is None else getattr(self.scores, name)
        if value is None or self.rows is None:
            raise FastalError(f"this strategy needs the pool's {name!r} scores (score the pool with score_pool)")
        return value[self.rows]


Strategy = Callable[[Candidates], torch.Tensor]
STRATEGIES: dict[str, Strategy] = {}
# One pick per KMeans cluster (and the pixel budget's search over k).
CLUSTER_STRATEGIES = ("contrastive", "kmeans-entropy", "contrastive-balanced", "contrastive-uncertain")


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
    picks are the highest-entropy candidates not yet chosen (equal entropies: the lower position
    first), so exactly ``k`` positions return (``k`` <= the candidates).

    Sync-free: every tensor has a size known on the host (no boolean indexing, no count read
    back), so on CUDA the pick only queues kernels and the caller's copy of the ids is the first wait.
    """
    n = entropy.shape[0]
    if k > n:
        raise FastalError(f"cannot pick {k} of {n} candidates")
    order = top_by_score(entropy, n)
    slots = torch.full((k,), -1, dtype=torch.int64, device=entropy.device)
    reps = representatives_padded(entropy, labels, num_clusters or k, order)[:k]
    slots[: reps.shape[0]] = reps  # -1: an empty cluster's slot, or k > num_clusters
    missing = slots < 0
    # Position n absorbs the -1 slots, so that marking the chosen ones needs no compaction.
    chosen = torch.zeros(n + 1, dtype=torch.bool, device=entropy.device).scatter_(0, torch.where(missing, n, slots), True)
    rest = order[stable_partition(~chosen[order])]  # the others first, most uncertain first
    nth = (torch.cumsum(missing, 0) - 1).clamp_(min=0)  # the r-th missing slot takes rest[r]
    return torch.where(missing, rest[nth], slots)


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
    from fastal.select.kmeans.estimator import full_assign

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
        min_d2 = sq_dists_to_row(x, x_sq, first)
        min_d2[first] = -1.0
        start = 1
    for i in range(start, k):
        p = torch.argmax(min_d2)  # first maximum on ties
        picks[i] = p
        d2 = sq_dists_to_row(x, x_sq, p)
        min_d2 = torch.minimum(min_d2, d2)
        min_d2[p] = -1.0  # never again
    return picks


@register("coreset")
def _coreset(c: Candidates) -> torch.Tensor:
    with c.stage("k_center"):
        return k_center_greedy(c.features, c.labelled_features, c.budget, c.seed)


def cluster_and_pick(c: Candidates, x: torch.Tensor, score: torch.Tensor | None = None,
                     subset: torch.Tensor | None = None) -> torch.Tensor:
    """KMeans on the rows of ``x`` (one per candidate) and each cluster's most uncertain member.

    A count budget: k = ``clusters`` x budget, the ``budget`` most uncertain representatives
    (filled up by entropy if clusters are empty). A pixel budget (``c.pixels``): k searched so
    that every cluster's representative fits (:func:`fastal.select.cluster_budget.fit_clusters`;
    ``x`` is computed once, only KMeans is refitted). Records the final fit on ``c``.

    ``score`` (Nc,): what ranks a cluster's members and the representatives (default: the
    candidates' entropy). ``subset`` (m,): the candidate positions that ``x``'s rows stand for
    (default: all); the others join no cluster (-1) and are never picked.
    """
    score = c.entropy if score is None else score
    sizes = c.sizes
    if subset is not None:
        score = score[subset]
        sizes = None if sizes is None else sizes[subset]

    def cluster(k: int) -> torch.Tensor:
        with c.stage("kmeans"):
            return make_kmeans(c.engine, k, c.seed).fit_predict(x)

    if c.pixels is None:
        k = clusters_for(c.budget, c.clusters_per_pick, score.shape[0])
        labels = cluster(k)
        with c.stage("pick"):
            picks = pick_per_cluster(score, labels, c.budget, k)
        fits = 1
    else:
        fit = fit_clusters(cluster, score, sizes, c.pixels, first=c.budget, per_pick=c.clusters_per_pick)
        picks, k, labels, fits = fit.picks, fit.k, fit.labels, fit.fits
    c.k, c.kmeans_fits = k, fits
    if subset is not None:
        picks = subset[picks]
        labels = torch.full((c.entropy.shape[0],), -1, dtype=labels.dtype, device=labels.device).index_copy_(
            0, subset, labels)
    c.fitted["cluster"] = labels
    return picks


@register("kmeans-entropy")
def _kmeans_entropy(c: Candidates) -> torch.Tensor:
    return cluster_and_pick(c, c.features)


def bank_embedding(c: Candidates, features: torch.Tensor) -> torch.Tensor:
    """UMAP fitted on the memory bank, applied to ``features`` (rows of candidates): the paper's space."""
    if c.bank_features is None or c.bank_features.shape[0] <= c.umap.n_neighbors:
        n = 0 if c.bank_features is None else c.bank_features.shape[0]
        raise FastalError(
            f"contrastive selection needs a memory bank of more than {c.umap.n_neighbors} features, got {n}"
        )
    with c.stage("umap_fit"):
        reducer = make_umap(c.engine, c.umap).fit(c.bank_features.to(c.features.device))
    with c.stage("umap_transform"):
        return reducer.transform(features)


@register("contrastive")
def _contrastive(c: Candidates) -> torch.Tensor:
    emb = bank_embedding(c, c.features)
    c.fitted["embedding"] = emb
    return cluster_and_pick(c, emb)


# ---- the field's region strategies: one score per superpixel from the fused scoring pass --------


def cai_score(c: Candidates, by: str) -> torch.Tensor:
    """(Nc,) :func:`~fastal.select.region_scores.class_balanced_ratio` of the candidates, normalised
    over every scored region (labelled ones too, as the authors' script normalises before zeroing
    them), class shares of the whole scored pool counted ``by`` "regions" or "pixels"."""
    mine = c.column("ratio")  # raises when the scores lack it
    everything = c.scores.ratio
    return class_balanced_ratio(mine, everything.min(), everything.max(), c.column("predicted"),
                                c.scores.class_frequency(by))  # fmt: skip


def pick_top(c: Candidates, score: torch.Tensor) -> torch.Tensor:
    """The ``budget`` candidates of largest ``score`` (ties: lower position); the score goes to the table."""
    with c.stage("pick"):
        c.fitted["score"] = score
        return top_by_score(score, c.budget)


@register("cb-ratio")
def _cb_ratio(c: Candidates) -> torch.Tensor:
    """Class-balanced best-vs-second-best (Cai et al., CVPR 2021), after
    cailile/Revisiting-Superpixels-for-Active-Learning ``scripts/region_selection_using_al.py``
    (``is_bal``) and ``scripts/extract_model_predictions.py`` (the region scores).

    score = (u - min u) / (max u - min u) x exp(-p[c]): u the region's mean pixel p2/p1, min and
    max over every scored region; c its dominant predicted class (the mode of the pixels'
    argmax), p[c] the share of the scored pool's regions whose dominant class is c. No knobs
    (``is_bal`` is this strategy; ``cost_type`` is fastal's pixel budget)."""
    with c.stage("score"):
        score = cai_score(c, "regions")
    return pick_top(c, score)


@register("cb-ratio-pixels")
def _cb_ratio_pixels(c: Candidates) -> torch.Tensor:
    """Size-aware class balance (Kim et al., ICCV 2023), after
    ml-postech/adaptive-superpixel-for-active-learning-in-semantic-segmentation
    ``scripts/region_selection_using_cb.py`` and ``scripts/extract_model_predictions_cb.py``.

    ``cb-ratio`` with p[c] counted in pixels: the summed size of the regions whose dominant
    predicted class is c over the scored pool's pixels. (The script divides by a hard-coded
    full-resolution Cityscapes pixel count while measuring regions at half resolution, marked
    "check !!"; here both are the same pixels.) The paper's adaptive superpixels and sieving are
    out of scope. No knobs."""
    with c.stage("score"):
        score = cai_score(c, "pixels")
    return pick_top(c, score)


@register("impurity-entropy")
def _impurity_entropy(c: Candidates) -> torch.Tensor:
    """Region impurity x prediction uncertainty (RIPU, Xie et al., CVPR 2022), after BIT-DA/RIPU
    ``core/active/floating_region.py`` (``FloatingRegionScore``), on superpixels instead of its
    (2 RADIUS_K + 1)^2 square windows.

    score = impurity x mean entropy: impurity the entropy of the region's predicted-class
    histogram over log C, mean entropy its pixels' mean softmax entropy over log C (RIPU adds
    1e-6 inside both logarithms; here 0 log 0 = 0). RIPU spends its budget image by image and
    masks a window around each pick; superpixels do not overlap, so the ranking here is pool-wide
    like every fastal strategy. No knobs (RADIUS_K is the region, here the superpixel)."""
    with c.stage("score"):
        score = c.column("impurity") * c.column("mean_entropy")
    return pick_top(c, score)


def mulactseg_score(c: Candidates) -> torch.Tensor:
    """(Nc,) :func:`~fastal.select.region_scores.pixel_weighted_ratio` of the candidates."""
    prob = c.scores.class_prob if c.scores is not None else None
    if prob is None:
        raise FastalError("this strategy needs the pool's mean class probability (score the pool with score_pool)")
    return pixel_weighted_ratio(c.column("ratio_by_class"), c.column("pixels"), prob, c.weighted_ratio_coeff)


@register("weighted-ratio")
def _weighted_ratio(c: Candidates) -> torch.Tensor:
    """Pixel-weighted best-vs-second-best (MulActSeg, Hwang et al., NeurIPS 2023), after
    sehyun03/MulActSeg ``active_selection/my_bvsb_predclsbal_pwr.py``: the acquisition function
    only, with the ordinary one-class (dominant or full) query.

    score = mean over the region's pixels of p2/p1 x w[argmax], w[c] = (coeff x P[c] + 1)^-2,
    P[c] the mean softmax probability of class c over the scored pool's pixels (the script's
    first pass; here from the scoring pass's per-region means). Knob: ``weighted_ratio_coeff``
    (the script's ``cls_weight_coeff``: 6 for Cityscapes, 12 for VOC; 6 here, driving scenes).
    The script's softmax temperature ``ce_temp`` is its cosine classifier's training temperature;
    fastal's classifier trains at 1, so the selection's is 1. (The script's + 1e-8 per pixel does
    not change the order.)"""
    with c.stage("score"):
        score = mulactseg_score(c)
    return pick_top(c, score)


# ---- contrastive with the field's balance --------------------------------------------------------


@register("contrastive-balanced")
def _contrastive_balanced(c: Candidates) -> torch.Tensor:
    """``contrastive`` whose cluster representative is the member with the highest pixel-weighted
    ratio (``weighted-ratio``'s class-balanced score) instead of the highest summed entropy.

    Why: the probes found one pick per cluster spending 35 % of the picks on sky and road. Summed
    entropy favours large regions of frequent classes, and every cluster, even one of road, gets a
    pick; weighting each pixel down by how often the pool predicts its class makes the pick within
    a cluster (and the order of the picks) prefer rare-class regions, while the clusters keep the
    paper's diversity. Same knobs as ``contrastive`` plus ``weighted_ratio_coeff``."""
    with c.stage("score"):
        score = mulactseg_score(c)
    c.fitted["score"] = score
    emb = bank_embedding(c, c.features)
    c.fitted["embedding"] = emb
    return cluster_and_pick(c, emb, score)


@register("contrastive-uncertain")
def _contrastive_uncertain(c: Candidates) -> torch.Tensor:
    """``contrastive`` on a shortlist: only the ``cluster_shortlist`` x budget most uncertain
    candidates (by entropy) are embedded and clustered, one pick per cluster (Cluster-Margin,
    Citovsky et al., NeurIPS 2021: cluster the low-margin examples, then diversify).

    Why: clustering the whole pool gives every cluster a pick, however certain its best member,
    and the frequent classes' clusters (sky, road) are many; clustering only the uncertain share
    keeps the diversity among regions the model is unsure of. Knob: ``cluster_shortlist`` (>= 1;
    1 takes the ``entropy`` picks, in cluster order; 10 by default, this project's choice, to be
    tuned on val)."""
    n = c.entropy.shape[0]
    size = min(n, max(c.budget, math.ceil(c.cluster_shortlist * c.budget)))  # the pixel search's first guess is budget
    with c.stage("shortlist"):
        subset = top_by_score(c.entropy, size)
    emb = bank_embedding(c, c.features[subset])
    full = torch.full((n, emb.shape[1]), float("nan"), dtype=emb.dtype, device=emb.device)
    c.fitted["embedding"] = full.index_copy_(0, subset, emb)
    return cluster_and_pick(c, emb, subset=subset)


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
    pixels: float | None = None,
    sizes: np.ndarray | None = None,
    weighted_ratio_coeff: float = 6.0,
    cluster_shortlist: float = 10.0,
) -> Selection:
    """Choose ``budget`` unlabelled superpixels of the scored pool with ``strategy``.

    ``clusters``: KMeans clusters per chosen superpixel for ``contrastive`` and ``kmeans-entropy``
    (1: k = budget, the paper's; more: each cluster's most uncertain member is a candidate and
    the most uncertain ``budget`` candidates are chosen).

    ``pixels`` (those two strategies only, with ``sizes``: pixels per global id): choose as many
    superpixels as clusters fit, every cluster's pick in ``pixels`` together (``budget`` is the
    search's first guess; :mod:`fastal.select.cluster_budget`).

    ``weighted_ratio_coeff``: ``weighted-ratio``'s and ``contrastive-balanced``'s class-weight
    coefficient (MulActSeg's ``cls_weight_coeff``); ``cluster_shortlist``: how many candidates per
    pick ``contrastive-uncertain`` clusters (the most uncertain ones).

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
    if not (math.isfinite(weighted_ratio_coeff) and weighted_ratio_coeff >= 0):
        raise FastalError(f"weighted_ratio_coeff = {weighted_ratio_coeff!r}: must be >= 0")
    if not (math.isfinite(cluster_shortlist) and cluster_shortlist >= 1):
        raise FastalError(f"cluster_shortlist = {cluster_shortlist!r}: must be >= 1 (candidates per pick)")
    if not clusters >= 1:
        raise FastalError(f"clusters = {clusters!r}: must be >= 1 (KMeans clusters per chosen superpixel)")
    if pixels is not None and (strategy not in CLUSTER_STRATEGIES or sizes is None):
        raise FastalError(f"a pixel budget needs sizes and one of {', '.join(CLUSTER_STRATEGIES)}, "
                          f"not {strategy!r}")  # fmt: skip
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
        clusters_per_pick=float(clusters),
        pixels=None if pixels is None else float(pixels),
        sizes=None if pixels is None else torch.as_tensor(np.asarray(sizes)[gids[~is_labelled]], device=device),
        scores=scores,
        rows=free_rows,
        weighted_ratio_coeff=float(weighted_ratio_coeff),
        cluster_shortlist=float(cluster_shortlist),
    )
    pos = STRATEGIES[strategy](cand)
    rows = free_rows[pos].cpu().numpy()  # device -> host: the chosen rows only
    cand.timer.finish()
    ids = gids[rows]
    want = budget if pixels is None else len(ids)
    if np.unique(ids).size != want:  # a strategy bug must not reach the oracle
        raise RuntimeError(f"strategy {strategy!r} returned {np.unique(ids).size} distinct ids, expected {want}")
    timings["total"] = time.perf_counter() - t0
    labels = cand.fitted.get("cluster")
    clusters_of = None if labels is None else labels[pos].cpu().numpy()  # device -> host: the chosen rows' clusters
    return Selection(ids=ids, timings=timings, k=cand.k, clusters=clusters_of, kmeans_fits=cand.kmeans_fits,
                     rows=free_rows, fitted=cand.fitted, peak_memory_mib=cand.peak_memory_mib)
