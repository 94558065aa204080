"""Squared euclidean distances by matmul: |x - c|^2 = |x|^2 - 2 x.c + |c|^2.

One GEMM instead of an (n, k, D) difference tensor. The form rounds: it can go slightly
negative (clamped where a distance is returned) and is off by up to ~(2 D + 3) eps/2 (|x|^2 +
|c|^2), which callers that need exact ties or bounds account for.
"""

from __future__ import annotations

import torch


def sq_dists_less_row_norm(x: torch.Tensor, c_t: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """(n, k): |c|^2 - 2 x.c for rows ``x`` (n, D), columns ``c_t`` (D, k) and their norms ``c_sq``
    (k,): the squared distances less each row's |x|^2, which leaves a row's order unchanged."""
    return torch.addmm(c_sq, x, c_t, alpha=-2.0)


def sq_dists(x: torch.Tensor, c_t: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """(n, k) squared distances from the rows of ``x`` to the columns of ``c_t``, clamped at 0."""
    return sq_dists_less_row_norm(x, c_t, c_sq).add_((x * x).sum(1, keepdim=True)).clamp_min_(0.0)


def sq_dists_to_row(x: torch.Tensor, x_sq: torch.Tensor, i: torch.Tensor | int) -> torch.Tensor:
    """(n,) squared distances from every row of ``x`` (norms ``x_sq``) to its row ``i``, clamped at 0."""
    return (x_sq - 2.0 * (x @ x[i]) + x_sq[i]).clamp_min_(0.0)
