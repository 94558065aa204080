"""What a results file records besides its numbers: the machine, and paths and commands in a form
that means something on another machine."""

from __future__ import annotations

import os
import platform
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DESCRIBED = ("cpu", "cores", "platform", "python")  # what made_on reads of a record; the rest it reads if there


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, library versions and, where present, the GPU's name."""
    import numba
    import numpy
    import pandas
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "pandas": pandas.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def made_on(info: dict[str, Any]) -> str:
    """One line for the foot of a table: the machine and library versions of ``info`` (a
    :func:`machine_info` record)."""
    return f"Made on {_described(info)}."


def runs_made_on(info: dict[str, Any] | None, cycles: int) -> str:
    """One line per machine that made a sweep's runs: ``info`` (the :func:`machine_info` record of
    the processes that made ``cycles`` of its run-cycles; None: runs older than that record)."""
    count = f"{cycles} run-cycle{'' if cycles == 1 else 's'}"
    if info is None:
        return f"Runs made on: a machine they did not record ({count}, made before runs recorded it)."
    # Host and torch threads too: a line per distinct record, and a CPU's numbers depend on the threads.
    return (f"Runs made on: {info.get('hostname')}, {_described(info)}, {info.get('torch_threads')} torch "
            f"threads ({count}).")


def _described(info: dict[str, Any]) -> str:
    gpu = f", {info['gpu']} (CUDA {info.get('cuda')})" if info.get("gpu") else ", no GPU"
    libraries = ", ".join(f"{name} {info[key]}" for key, name in (("torch", "torch"), ("numpy", "NumPy"),
                          ("numba", "numba"), ("pandas", "pandas")) if key in info)  # fmt: skip
    return f"{info['cpu']} ({info['cores']} cores{gpu}), {info['platform']}, with Python {info['python']}, {libraries}"


def portable_path(path: str | Path, cwd: str | Path | None = None) -> str:
    """``path`` as a results file records it. Inside the working directory: relative to it
    (``sweeps/camvid``); beside it: one level up (``../shared/data/CamVid``). Anything further
    away names one machine's layout (``/tmp/...``), so only its last part is kept: ``.../feat.npy``."""
    base = Path(cwd or Path.cwd()).absolute()
    p = Path(os.path.normpath(base / Path(path).expanduser()))
    rel = Path(os.path.relpath(p, base))
    ups = rel.parts.count("..")  # relpath puts them all first
    if ups == 0 or (ups == 1 and len(base.parents) >= 2):  # a sibling of a top-level folder is not "beside"
        return rel.as_posix()
    return f".../{p.name}"


def command_line(args: Sequence[str], cwd: str | Path | None = None) -> str:
    """The command as typed (``["python", *sys.argv]``), quoted for a shell, with each absolute
    path in it (an argument, or an ``--option=`` value) made portable by :func:`portable_path`."""
    words = []
    for arg in map(str, args):
        option, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        words.append(option + eq + (portable_path(value, cwd) if value.startswith("/") else value))
    return shlex.join(words)
