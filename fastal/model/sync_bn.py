"""Batch norm with statistics over the whole DDP batch (every rank's images), so a step of N
processes with B images each normalises as one process with N x B would.

On CUDA this is torch's :class:`torch.nn.SyncBatchNorm`. torch's refuses CPU tensors (its kernels
are GPU-only), and a CPU run across processes (gloo: CI, tests) still needs the same statistics, so
:class:`HostSyncBatchNorm` computes them with two autograd-aware all-reduces
(:mod:`torch.distributed.nn.functional`: sum and count, then the squared deviations), which
back-propagate the cross-rank terms as torch's does.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed.nn.functional as dist_fn
from torch import nn

# torch 2.14 points to _functional_collectives, a private module whose all_reduce has no autograd rule.
warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional\.all_reduce is deprecated", FutureWarning)


class HostSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch across all ranks (CPU, gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        total = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = dist_fn.all_reduce(centred.pow(2).sum(dims)) / n  # biased: what normalises the batch
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)  # unbiased, as BatchNorm keeps it
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y if not self.affine else y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with its BatchNorm2d layers synchronised across the ranks: torch's SyncBatchNorm
    on CUDA; on the CPU the layers become :class:`HostSyncBatchNorm` in place (same parameters,
    buffers and state_dict keys, so an optimiser built on ``module`` still holds them)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for layer in module.modules():
        if type(layer) is nn.BatchNorm2d:
            layer.__class__ = HostSyncBatchNorm
    return module
