"""Rank of each element within its group: the vectorised "top-k per group" used by the
memory bank (highest entropy per image and class) and anchor sampling (random per class)."""

from __future__ import annotations

import torch


def rank_within_groups(groups: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """For 1-D ``groups`` (int64 >= 0) and ``keys`` of equal length: the 0-based position of
    each element among the elements of its group sorted by ascending key (ties by index).

    >>> rank_within_groups(torch.tensor([1, 0, 1, 1]), torch.tensor([0.5, 0.1, 0.2, 0.9]))
    tensor([1, 0, 0, 2])
    """
    n = groups.numel()
    if n == 0:
        return groups.new_empty(0)
    # Two stable sorts = lexicographic order by (group, key, index).
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups)
    starts = torch.cumsum(counts, 0) - counts  # first sorted position of each group
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=groups.device) - starts[sorted_groups]
    return rank
