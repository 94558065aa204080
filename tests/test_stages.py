"""fastal.stages: seconds and the peak resident memory of each stage, nested stages folded."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from fastal.stages import measured, overall_peak_gb, resident_bytes

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")


def touch(megabytes: int) -> np.ndarray:
    return np.ones(megabytes << 17)  # float64: 8 bytes each, every page written


@linux
def test_each_stage_sees_its_own_peak_and_an_outer_one_the_highest():
    stages: dict = {}
    # What is resident now (not the process's high-water mark: earlier tests may have set it higher).
    base = resident_bytes() / 2**30
    with measured(stages, "outer"):
        with measured(stages, "big"):
            a = touch(400)
            del a
        with measured(stages, "small"):
            time.sleep(0.05)
            b = touch(20)
            del b
    big, small, outer = stages["big"], stages["small"], stages["outer"]
    assert big["peak_rss_gb"] >= 0.38  # 400 MB lived in it
    # The big array was freed before "small" began: its peak does not carry over (reset per stage).
    assert small["peak_rss_gb"] < big["peak_rss_gb"] - 0.3
    assert outer["peak_rss_gb"] == max(big["peak_rss_gb"], small["peak_rss_gb"]) >= base
    assert small["seconds"] >= 0.05 and outer["seconds"] >= big["seconds"] + small["seconds"]
    assert overall_peak_gb(stages) == outer["peak_rss_gb"] and overall_peak_gb({}) is None


def test_a_stage_measured_again_adds_seconds_keeps_the_higher_peak_and_records_on_error():
    stages: dict = {}
    for _ in range(2):
        with measured(stages, "select"):
            time.sleep(0.02)
    assert stages["select"]["seconds"] >= 0.04
    with pytest.raises(ValueError), measured(stages, "fails"):
        raise ValueError
    assert set(stages["fails"]) == {"seconds", "cpu_seconds", "peak_rss_gb"}


def test_cpu_seconds_count_work_not_waiting():
    stages: dict = {}
    with measured(stages, "sleep"):
        time.sleep(0.3)
    with measured(stages, "work"):
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert stages["sleep"]["seconds"] >= 0.3 and stages["sleep"]["cpu_seconds"] < 0.1
    assert stages["work"]["cpu_seconds"] >= 0.3
