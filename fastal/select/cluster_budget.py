"""How many clusters fit a pixel budget: the search over k behind ``cluster_budget = "fit"``.

A clustering strategy (``contrastive``, ``kmeans-entropy``) takes the most uncertain member of
each KMeans cluster. With a budget in pixels, k decides how many pixels those representatives
weigh; cutting a too long list to the budget (``"prefix"``) drops whole clusters, the least
uncertain ones. :func:`fit_clusters` instead searches the number of picks m (k = KMeans
clusters for m picks: m, or more with ``clusters`` > 1) so that all m picks fit.

The pixels of m picks do not grow monotonically with m (each m is a new KMeans fit), so the
search keeps a bracket ``lo`` (fits) < ``hi`` (does not) and stops when ``hi = lo + 1``: the
returned m fits and m + 1 does not -- a local maximum, within 1 of the boundary it found, not
necessarily the global one (which would need every m fitted). Guesses are secant steps on the
picks' pixels (near linear in m), a bisection step when two steps did not halve the bracket,
so the number of KMeans fits stays small and never exceeds ~3 log2 of the range of m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastal.errors import FastalError


@dataclass
class ClusterFit:
    """The final fit of a search: ``picks`` (positions, most uncertain first, one per non-empty
    cluster when ``per_pick`` is 1), the ``k`` KMeans clusters and each candidate's ``labels``."""

    picks: torch.Tensor  # (m,) int64 positions
    k: int
    labels: torch.Tensor  # (Nc,) int64 cluster of each candidate
    fits: int  # KMeans fits the search ran


def stable_partition(keep: torch.Tensor) -> torch.Tensor:
    """The permutation that puts the positions where ``keep`` is True first, then the others,
    each group in its order. A sort of one byte per position: no host sync on CUDA."""
    return torch.sort((~keep).to(torch.uint8), stable=True).indices


def representatives_padded(
    entropy: torch.Tensor, labels: torch.Tensor, k: int, order: torch.Tensor | None = None
) -> torch.Tensor:
    """(k,) int64: the highest-entropy member of each non-empty cluster of ``labels`` (0..k-1),
    most uncertain first (equal entropies: the lower cluster first), then -1 per empty cluster.

    Sync-free: fixed-size tensor ops only (no boolean indexing, no size read from the data), so
    on CUDA nothing waits for the host. A cluster's member is its first in ``order``, the stable
    descending argsort of ``entropy`` (computed unless given): equal entropies go to the lower
    position, NaN counts as the largest, as in :func:`fastal.kernels.segment_argmax` (not used:
    on CUDA it reads the ids' range and torch's bincount reads the largest id on the host).
    """
    n = entropy.shape[0]
    if order is None:
        order = torch.sort(entropy, descending=True, stable=True).indices
    rank = torch.arange(n, device=entropy.device)
    first = torch.full((k,), n, dtype=torch.int64, device=entropy.device)
    first.scatter_reduce_(0, labels.long()[order], rank, reduce="amin")  # each cluster's first rank; n: empty
    best = torch.cat([order, order.new_full((1,), -1)])[first]
    # entropy[-1] for an empty cluster is any value: stable_partition moves it last anyway.
    ranked = best[torch.sort(entropy[best], descending=True, stable=True).indices] if n else best
    return ranked[stable_partition(ranked >= 0)]


def representatives(entropy: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The highest-entropy member of each non-empty cluster of ``labels`` (0..k-1), most uncertain first."""
    best = representatives_padded(entropy, labels, k)
    return best[best >= 0]  # host sync: the pixel search decides on the host anyway


def clusters_for(picks: int, per_pick: float, n: int) -> int:
    """KMeans clusters for ``picks`` picks: ``per_pick`` x picks, at least ``picks``, at most ``n``."""
    return min(n, max(picks, round(per_pick * picks)))


def fit_clusters(
    cluster: Callable[[int], torch.Tensor],
    entropy: torch.Tensor,
    sizes: torch.Tensor,
    pixels: float,
    first: int,
    per_pick: float = 1.0,
) -> ClusterFit:
    """Search the number of picks m whose cluster representatives fit ``pixels``.

    ``cluster(k)`` returns KMeans labels (Nc,) with k clusters (deterministic for the seed);
    ``entropy``, ``sizes`` (Nc,) score and weigh the candidates; ``first`` is the first guess.
    m picks are the m most uncertain representatives of ``clusters_for(m, per_pick)`` clusters
    (with ``per_pick`` 1: every non-empty cluster's). Returns the largest m found such that the
    picks' sizes sum to <= ``pixels`` and m + 1's do not (see the module docstring); m = 1 when
    the one cluster's representative does not fit (a cycle labels at least one region).
    """
    n = int(entropy.shape[0])
    if n == 0:
        raise FastalError("no unlabelled superpixel to choose from")
    # No m larger than the count of the smallest regions that fit can fit: the bracket's top.
    smallest = torch.cumsum(torch.sort(sizes.double()).values, 0)
    ceiling = int((smallest <= pixels).sum())  # host sync: the search's bounds

    def evaluate(m: int) -> tuple[float, ClusterFit]:
        k = clusters_for(m, per_pick, n)
        labels = cluster(k)
        picks = representatives(entropy, labels, k)[:m]
        return float(sizes[picks].double().sum()), ClusterFit(picks, k, labels, 0)  # host sync: the cost

    lo, best = 0, None  # m = 0 fits, with nothing
    hi = ceiling + 1  # does not fit
    points = [(0, 0.0)]  # (m, pixels of m's picks) evaluated, the origin first
    widths = [hi - lo]  # the bracket's width before each evaluation
    guess = min(max(first, 1), max(ceiling, 1))
    while True:
        cost, fit = evaluate(guess)
        points.append((guess, cost))
        if cost <= pixels:
            lo, best = guess, fit
        else:
            hi = guess
            if hi == 1:  # one cluster's representative does not fit: a cycle still takes one region
                best = fit
        if hi - lo <= 1:
            break
        # A secant step through the last two points (pixels grow near linearly in m); a bisection
        # when the last two steps did not halve the bracket.
        (m0, c0), (m1, c1) = points[-2:]
        stalled = len(widths) >= 2 and (hi - lo) * 2 > widths[-2]
        root = (lo + hi) / 2 if stalled or c1 == c0 else m1 + (pixels - c1) * (m1 - m0) / (c1 - c0)
        guess = min(max(int(root), lo + 1), hi - 1)
        widths.append(hi - lo)
    assert best is not None  # lo > 0 holds a fit, or hi == 1 set one
    best.fits = len(points) - 1
    return best
