"""Named ranges for profiling the selection: torch.profiler ranges, NVTX on CUDA, peak memory per stage.

Example::

    peaks = {}
    with stage_range("kmeans", device, peaks):
        labels = km.fit_predict(emb)
    peaks["kmeans"]  # MiB: CUDA peak allocated during the stage, or the process's peak RSS so far on CPU
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def stage_range(name: str, device: torch.device, peaks: dict[str, float] | None = None) -> Iterator[None]:
    """A ``record_function`` range called ``name`` (and an NVTX range on CUDA) around the block.

    ``peaks[name]`` gets the stage's peak memory in MiB: on CUDA the most memory allocated by
    tensors during the block; on the CPU the process's peak resident set so far (the kernel
    keeps no per-interval peak).
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if cuda:
            torch.cuda.nvtx.range_pop()
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        if peaks is not None:
            peaks[name] = max(peaks.get(name, 0.0), peak)
