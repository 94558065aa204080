"""Named ranges for profiling the selection: torch.profiler ranges, NVTX on CUDA, peak memory and
seconds per stage (:class:`StageTimer`, CUDA events on the GPU).

Example::

    peaks = {}
    with stage_range("kmeans", device, peaks):
        labels = km.fit_predict(emb)
    peaks["kmeans"]  # MiB: CUDA peak allocated during the stage, or the process's peak RSS so far on CPU
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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


@dataclass
class StageTimer:
    """Seconds (into ``timings``) and peak memory (into ``peaks``, MiB) of named stages on ``device``.

    On the CPU: wall seconds, in ``timings`` at once. On CUDA nothing waits: two timing events
    on the current stream bracket the stage's kernels (cuML's per-thread default stream is
    ordered with torch's default one), and :meth:`finish` adds the GPU seconds between them once
    the caller holds the result on the host.
    """

    device: torch.device
    timings: dict[str, float]
    peaks: dict[str, float] = field(default_factory=dict)
    # CUDA stages whose seconds finish() reads: (name, start event, end event).
    gpu_stages: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list, init=False, repr=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``, inside a :func:`stage_range` of that name."""
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with stage_range(name, self.device, self.peaks):
                start.record(stream)
                yield
                end.record(stream)
            self.gpu_stages.append((name, start, end))
            return
        t0 = time.perf_counter()
        with stage_range(name, self.device, self.peaks):
            yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def finish(self) -> None:
        """Add the CUDA stages' seconds to ``timings`` (waits for their end events: call it after
        the result reached the host, when they are done anyway). Nothing to do on the CPU."""
        for name, start, end in self.gpu_stages:
            end.synchronize()
            self.timings[name] = self.timings.get(name, 0.0) + start.elapsed_time(end) / 1000  # ms
        self.gpu_stages.clear()
