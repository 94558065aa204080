"""Results files name paths portably: nothing committed under benchmarks/ or experiments/ records
where things were on the machine that made it, and the helpers the writers use keep it so."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from fastal.machine import command_line, portable_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted([*(ROOT / "benchmarks").rglob("*.json"), *(ROOT / "experiments").rglob("*.json")])
# An absolute path: "/" then a name at the start of the text or after a space, "=", quote or bracket
# (not "tcp://host", "a/b" or "± std / n"); and the folders a machine's layout shows in any case.
ABSOLUTE = re.compile(r"(?:^|[\s=('\"\[])/[A-Za-z0-9_.~-]+/|/(?:work|root|tmp|home)/")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_there_are_results_files() -> None:
    assert len(RESULTS) >= 40  # the scan below is not vacuous


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_no_absolute_path_in_a_results_file(path: Path) -> None:
    found = [s for s in strings(json.loads(path.read_text())) if ABSOLUTE.search(s)]
    assert found == [], f"{path.relative_to(ROOT)} records absolute paths: {found[:3]}"


def test_the_scan_catches_what_the_files_held() -> None:
    for bad in ("/work/main/benchmarks/results/x.json", "--json /root/out/r/k.json", "--cache=/var/cache/x",
                "copied to /tmp/h16p_snap after cycle 2"):  # fmt: skip
        assert ABSOLUTE.search(bad), bad
    for fine in ("tcp://127.0.0.1:8799", "sweeps/sweep_camvid_signal/runs/seed=0", "0.007 ± 0.011 / 4",
                 "../shared/data/CamVid", ".../feat0.npy", "$OUT/r/kernels_cuda.json"):  # fmt: skip
        assert not ABSOLUTE.search(fine), fine


def test_portable_path_by_hand(tmp_path: Path) -> None:
    cwd = tmp_path / "repo"
    assert portable_path(cwd / "sweeps" / "a", cwd) == "sweeps/a"
    assert portable_path("sweeps/a", cwd) == "sweeps/a"
    assert portable_path(cwd, cwd) == "."
    assert portable_path(tmp_path / "shared" / "data", cwd) == "../shared/data"  # beside the working directory
    assert portable_path("/elsewhere/deep/feat.npy", cwd) == ".../feat.npy"
    assert portable_path("/tmp/x.json", "/work") == ".../x.json"  # /tmp is not "beside" /work


def test_command_line_by_hand(tmp_path: Path) -> None:
    cwd = tmp_path / "repo"
    args = ["python", "benchmarks/b.py", "--features", "/far/away/f.npy", f"--json={cwd}/r.json", "--note", "a b /c"]
    assert command_line(args, cwd) == "python benchmarks/b.py --features .../f.npy --json=r.json --note 'a b /c'"
