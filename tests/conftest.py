"""Shared test fixtures: data locations, device lists, markers that skip what this machine lacks."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

# Without a GPU, numba.cuda kernels run under numba's simulator; the variable must be set
# before numba.cuda is first imported, so it is set here, at collection time.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a core dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from hypothesis import settings  # noqa: E402

# numba compiles on first call: a per-example deadline would fail on compilation, not on behaviour.
settings.register_profile("fastal", deadline=None, max_examples=50)
settings.load_profile("fastal")

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("FASTAL_CAMVID", ROOT.parent / "shared" / "data" / "CamVid"))


def _has_cuml() -> bool:
    try:
        import cuml  # noqa: F401
    except Exception:
        return False
    return _HAS_CUDA


def _has_cudf() -> bool:
    try:
        import cudf  # noqa: F401
    except Exception:
        return False
    return _HAS_CUDA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {
        "gpu": (not _HAS_CUDA, "needs a CUDA device"),
        "cuml": (not _has_cuml(), "needs cuML and a CUDA device"),
        "cudf": (not _has_cudf(), "needs cuDF and a CUDA device"),
        "camvid": (not (CAMVID / "train").is_dir(), f"CamVid not found at {CAMVID}"),
    }
    for item in items:
        for name, (skip, why) in skips.items():
            if skip and name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The CamVid folder (SegNet layout); tests using it carry ``@pytest.mark.camvid``."""
    return CAMVID


class _DiskWithRoom(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: a write past that fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(memoryview(b).nbytes, self.room)
        self.room -= n
        return n


@pytest.fixture
def disk_with_room(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``disk_with_room(n)``: from then on every file fastal.atomic opens has n bytes of disk left."""

    def set_room(room: int) -> None:
        def fdopen(fd: int, mode: str = "r", *args, **kwargs) -> io.IOBase:
            os.close(fd)
            binary = io.BufferedWriter(_DiskWithRoom(room))
            return binary if "b" in mode else io.TextIOWrapper(binary)

        monkeypatch.setattr("fastal.atomic.os.fdopen", fdopen)

    return set_room


# The tiny synthetic run of the loop tests: 8 train images 32x48, 4 val, 8 superpixels each, one
# step per epoch; initial set + 1 cycle. (The memory bank needs > 15 features for contrastive
# selection: hence 3 epochs.)
TINY = {
    "train_images": 8, "val_images": 4, "image_size": [32, 48], "superpixels": 12,
    "initial": 25.0, "budget_per_cycle": 5.0, "cycles": 1, "epochs": 3, "batch_size": 8,
    "full_reference": False, "device": "cpu", "strategy": "contrastive", "seed": 3, "labels": "dominant",
    "selection_plot": True,
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {**TINY, "cache_dir": str(tmp_path_factory.mktemp("spcache"))}


@pytest.fixture(scope="session")
def reference(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted tiny run, in this process (shared: copy it before changing it)."""
    from fastal.config import make_config
    from fastal.loop import run_experiment

    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_experiment(make_config(tiny), run_dir)
    return run_dir
