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


def resolve_backend(choice: str, device: torch.device, *, choices: tuple[str, ...], gpu: str, cpu: str,
                    what: str) -> str:
    """The library ``choice`` (one of ``choices``) means on ``device``: ``"auto"`` -> ``gpu`` (a
    module name: cuml, cudf) when ``device`` is CUDA and it imports, else ``cpu``; a forced ``gpu``
    is checked. Errors name the option as ``what`` (``--engine``)."""
    if choice not in choices:
        raise FastalError(f"{what} {choice!r}: unknown; choose one of {', '.join(choices)}")
    if choice == "auto":
        return gpu if device.type == "cuda" and importable(gpu) else cpu
    if choice == gpu:
        if device.type != "cuda":
            raise FastalError(f"{what} {gpu} needs a CUDA device, the pool is on {device}")
        if not importable(gpu):
            raise FastalError(f"{what} {gpu}: {gpu} is not installed (pip install 'fastal[gpu]')")
    return choice
