"""Wall time and peak resident memory of a run's stages, for results.json.

>>> stages = {}
>>> with measured(stages, "score"):
...     scores = score_pool(...)
>>> stages["score"]   # {"seconds": 41.2, "cpu_seconds": 80.5, "peak_rss_gb": 3.91}

The peak is this process's resident high-water mark during the stage (Linux: ``VmHWM``, reset at
the stage's start through ``/proc/self/clear_refs``), not counting worker processes. Stages nest:
an outer stage's peak is the highest of its own and its inner stages'. Where the mark cannot be
reset (not Linux) a stage reports the process's peak so far, an upper bound.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from typing import Any

_GB = 1 << 30
_open: list[dict[str, Any]] = []  # the stages entered and not left, outermost first


def _reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # "5": reset the peak RSS (Linux >= 4.0)


def peak_rss_bytes() -> int:
    """This process's resident high-water mark since the last reset (or since it started)."""
    return _status_bytes("VmHWM:")


def resident_bytes() -> int:
    """This process's resident size now (where Linux's ``/proc`` is missing: its peak so far, an upper bound)."""
    return _status_bytes("VmRSS:")


def _status_bytes(key: str) -> int:
    """A size that ``/proc/self/status`` gives in KiB under ``key``; else the process's peak (``ru_maxrss``)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _fold(peak: int) -> None:
    for entry in _open:
        entry["peak"] = max(entry["peak"], peak)


@contextlib.contextmanager
def measured(into: dict[str, Any], name: str) -> Iterator[None]:
    """Record ``{"seconds", "cpu_seconds", "peak_rss_gb"}`` of the block as ``into[name]`` (also
    when it raises); a stage measured again in the same record adds its seconds and keeps the higher
    peak. ``cpu_seconds`` is this process's CPU time (all its threads, not its worker processes):
    on a shared machine it tells how a stage's work grows where wall seconds tell the load."""
    _fold(peak_rss_bytes())  # what the enclosing stages reached so far, before the reset
    _reset_peak()
    entry = {"peak": 0}
    _open.append(entry)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        _open.pop()
        peak = max(entry["peak"], peak_rss_bytes())
        _fold(peak)
        before = into.get(name, {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_gb": 0.0})
        into[name] = {"seconds": round(before["seconds"] + seconds, 3),
                      "cpu_seconds": round(before.get("cpu_seconds", 0.0) + cpu, 3),
                      "peak_rss_gb": max(before["peak_rss_gb"], round(peak / _GB, 3))}  # fmt: skip


def overall_peak_gb(stages: dict[str, Any]) -> float | None:
    """The highest peak among ``stages`` (None for none)."""
    return max((s["peak_rss_gb"] for s in stages.values()), default=None)
