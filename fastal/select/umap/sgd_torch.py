"""UMAP's SGD epochs as tensor operations (CUDA, or ``sgd="torch"``), with no host sync.

umap-learn moves a point after every sampled edge and every negative sample in turn. Here an
epoch evaluates all sampled edges at the positions of the start of the epoch (each edge's
negatives where its attraction step left the point) and adds the sum, so that an epoch is a
fixed set of tensor operations over all edges: every edge is evaluated each epoch and masked
when its schedule says it is not due, and every edge draws ``2 x negative_sample_rate``
negatives of which the first ``n_neg`` count (umap-learn's count never exceeds that: its
epochs per sample are >= 1). The schedule (epochs per sample, negative sampling, learning
rate ``initial_alpha`` decaying linearly, gradients clipped at 4) is umap-learn's. In a fit,
umap-learn also moves the other end of an edge; the graph is symmetric and both directions of
an edge share one schedule, so that move is the head step of the reverse edge, counted twice.
Negatives come from a torch generator: same distribution as umap-learn's tausworthe streams,
different draws. The steps are small (clipped, learning rate <= 1), and the tests against
umap-learn check that neighbourhoods and clusters agree.
"""

from __future__ import annotations

import math

import torch


def epochs_per_sample(w: torch.Tensor, n_epochs: int) -> torch.Tensor:
    """umap-learn's ``make_epochs_per_sample`` (float32 ratio, float64 schedule); -1 where w = 0."""
    # In place where it can be: for a pool's (N, k) weights the temporaries were the transform's
    # memory peak (five (N, k) arrays, three of them float64).
    eps = (w / w.max()).mul_(n_epochs).double()
    eps.reciprocal_().mul_(float(n_epochs))  # what torch makes of n_epochs / eps
    return eps.masked_fill_(~(w > 0), -1.0)


def _sq_norm(diff: torch.Tensor) -> torch.Tensor:
    """Squared norm over the last axis, keeping it (..., 1); a matmul with ones beats a size-2 reduction."""
    return (diff * diff) @ torch.ones(diff.shape[-1], 1, dtype=diff.dtype, device=diff.device)


def _grad_attract(diff: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Clipped attractive gradient for ``diff = current - other`` (..., dim)."""
    d2 = _sq_norm(diff)
    pow_b = torch.exp(b * torch.log(d2))  # d2^b; exp/log is faster than pow on the CPU
    coeff = -2.0 * a * b * pow_b / (d2 * (a * pow_b + 1.0))  # d2^(b-1) = d2^b / d2
    coeff = torch.where(d2 > 0, coeff, torch.zeros_like(coeff))
    return (coeff * diff).clamp_(-4.0, 4.0)


def _grad_repel(diff: torch.Tensor, a: float, b: float, gamma: float, at_zero: float) -> torch.Tensor:
    """Clipped repulsive gradient of a negative sample for ``diff = current - other``;
    ``at_zero`` where the two coincide (umap-learn's fit: 4, its transform: 0)."""
    d2 = _sq_norm(diff)
    coeff = (2.0 * gamma * b) / ((0.001 + d2) * (a * torch.exp(b * torch.log(d2)) + 1.0))
    grad = (coeff * diff).clamp_(-4.0, 4.0)
    return torch.where(d2 > 0, grad, torch.full_like(grad, at_zero))


def sgd_epochs(
    head: torch.Tensor,
    tail: torch.Tensor | None,
    src: torch.Tensor,
    dst: torch.Tensor,
    eps: torch.Tensor,
    n_epochs: int,
    a: float,
    b: float,
    *,
    gamma: float = 1.0,
    initial_alpha: float = 1.0,
    negative_sample_rate: float = 5.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Optimise ``head`` (N, dim) in place over edges ``src -> dst`` with schedule ``eps`` (E,).

    ``tail`` None: a fit (``dst`` indexes ``head`` itself, both ends move); else a transform
    against the fixed ``tail`` (M, dim). Edges with ``eps <= 0`` are ignored. Returns ``head``.
    """
    fit = tail is None
    n_vertices = head.shape[0] if fit else tail.shape[0]
    valid = eps > 0
    eps_neg = eps / negative_sample_rate
    next_sample = eps.clone()
    next_neg = eps_neg.clone()
    cap = int(math.ceil(2 * negative_sample_rate))
    slots = torch.arange(cap, device=head.device)
    attract_scale = 2.0 if fit else 1.0
    at_zero = 4.0 if fit else 0.0
    for n in range(n_epochs):
        # umap-learn lowers alpha after each epoch: epochs 0 and 1 both run at the initial rate.
        alpha = initial_alpha if n == 0 else initial_alpha * (1.0 - (n - 1) / n_epochs)
        other_pts = head.clone() if fit else tail  # positions at the start of the epoch
        act = valid & (next_sample <= n)
        cur = other_pts.index_select(0, src) if fit else head.index_select(0, src)
        step = _grad_attract(cur - other_pts.index_select(0, dst), a, b) * (act * (alpha * attract_scale))[:, None]
        n_neg = torch.where(act, ((n - next_neg) / eps_neg).trunc(), torch.zeros_like(next_neg))  # int() in umap-learn
        next_sample = torch.where(act, next_sample + eps, next_sample)
        next_neg = next_neg + n_neg * eps_neg  # also when negative, as umap-learn does
        neg = torch.randint(n_vertices, (src.shape[0], cap), device=head.device, generator=generator)
        live = slots < n_neg[:, None]  # (E, cap)
        if fit:
            live &= neg != src[:, None]  # umap-learn skips a negative that is the point itself
        pos = (cur + step)[:, None, :]  # negatives act where the attraction step left the point
        push = _grad_repel(pos - other_pts[neg], a, b, gamma, at_zero) * (live * alpha)[..., None]
        head.index_add_(0, src, step + push.sum(1))
    return head


def optimize_transform(
    head: torch.Tensor,
    tail: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    n_epochs: int,
    a: float,
    b: float,
    *,
    gamma: float = 1.0,
    initial_alpha: float = 0.25,
    negative_sample_rate: float = 5.0,
    generator: torch.Generator | None = None,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """SGD of new points ``head`` (N, dim) against the fixed ``tail`` (M, dim); edges (N, K).

    ``w`` holds the pruned weights (0 = no edge). Points are independent given the fixed tail,
    so they run in chunks of ``chunk_size`` (all epochs per chunk). Returns ``head`` (updated in place).
    """
    n, k = idx.shape
    eps = epochs_per_sample(w, n_epochs)  # (N, K); normalised by the largest weight of all points
    local = torch.arange(min(n, chunk_size), device=head.device)[:, None].expand(-1, k).reshape(-1)
    for s in range(0, n, chunk_size):
        rows = min(chunk_size, n - s)
        sgd_epochs(head[s : s + rows], tail, local[: rows * k], idx[s : s + rows].reshape(-1),
                   eps[s : s + rows].reshape(-1), n_epochs, a, b, gamma=gamma, initial_alpha=initial_alpha,
                   negative_sample_rate=negative_sample_rate, generator=generator)  # fmt: skip
    return head
