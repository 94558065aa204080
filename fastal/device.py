"""Which torch device a run uses."""

from __future__ import annotations

import importlib

import torch

from fastal.errors import FastalError


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FastalError(f"--device {name!r}: not a device (use cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastalError(f"--device {name}: no CUDA device is available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise FastalError(f"--device {name}: only cpu and cuda are supported")
    return device


def importable(module: str) -> bool:
    """True when ``module`` imports (cuML and cuDF need a CUDA runtime: any import failure counts as absent)."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True
