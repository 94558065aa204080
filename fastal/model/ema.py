"""Exponential moving average of the student's weights: the teacher."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float = 0.99) -> None:
    """``teacher = alpha * teacher + (1 - alpha) * student`` for every parameter; buffers
    (BatchNorm running statistics, counters) are copied from the student, since averaging
    them would mix statistics of weights the teacher no longer has.

    >>> ema_update(teacher, student, alpha=0.99)   # after each optimiser step
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"ema alpha must be in [0, 1], got {alpha}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
