"""Numeric precision of the network's forward passes: input conversion, AMP resolution, autocast.

The one place that says what ``amp`` means, for training, evaluation and pool scoring alike:
``"auto"`` is bf16 autocast on CUDA and fp32 on a CPU; ``"bf16"`` and ``"fp16"`` force that
autocast dtype; ``"fp32"`` is no autocast.

Example::

    dtype = resolve_amp("fp16", device)         # torch.float16
    with autocast(device, dtype):
        logits, emb = model(to_tensor_batch(images, device))
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from fastal.errors import FastalError
from fastal.model.network import IMAGENET_MEAN, IMAGENET_STD

AMP_MODES = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_amp(amp: str | bool | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means plain fp32.

    ``amp`` is one of :data:`AMP_MODES`; None is ``"auto"``, and a bool (older callers of
    ``score_pool``) is ``"bf16"`` / ``"fp32"``.
    """
    if amp is None or isinstance(amp, bool):
        amp = "auto" if amp is None else ("bf16" if amp else "fp32")
    if amp not in AMP_MODES:
        raise FastalError(f"amp = {amp!r}: use one of {', '.join(AMP_MODES)}")
    if amp == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    return _DTYPES[amp]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` for the block; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_tensor_batch(
    images: np.ndarray | torch.Tensor, device: torch.device | str, channels_last: bool = False
) -> torch.Tensor:
    """The one image normalisation: uint8 (B, H, W, 3) or (H, W, 3) RGB -> float32
    (B, 3, H, W) on ``device``, scaled to [0, 1] and standardised with the ImageNet mean/std."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise FastalError(f"images must be uint8 (B, H, W, 3) or (H, W, 3), got {x.dtype} {tuple(x.shape)}")
    if x.ndim == 3:
        x = x[None]
    # Copy uint8 (4x fewer bytes than float) and convert on the device.
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return ((x - mean) / std).contiguous(memory_format=fmt)
