"""One reading of ``amp`` for training, evaluation and pool scoring (fastal.model.precision),
and the selection path of a run really scoring in the precision it was configured with."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fastal.train
from fastal.config import RunConfig
from fastal.errors import FastalError
from fastal.loop import rank_unlabelled
from fastal.model.precision import AMP_MODES, resolve_amp

from test_select_scoring import Cache, Images, TinyTeacher

WANT = {  # (amp, device type) -> autocast dtype, None = plain fp32
    ("auto", "cpu"): None, ("auto", "cuda"): torch.bfloat16,
    ("bf16", "cpu"): torch.bfloat16, ("bf16", "cuda"): torch.bfloat16,
    ("fp16", "cpu"): torch.float16, ("fp16", "cuda"): torch.float16,
    ("fp32", "cpu"): None, ("fp32", "cuda"): None,
}  # fmt: skip


@pytest.mark.parametrize(("amp", "device"), sorted(WANT))
def test_resolve_amp_table(amp: str, device: str) -> None:
    assert resolve_amp(amp, torch.device(device)) == WANT[amp, device]


def test_resolve_amp_older_spellings_and_bad_values() -> None:
    assert resolve_amp(None, "cuda") == torch.bfloat16 and resolve_amp(None, "cpu") is None  # None = auto
    assert resolve_amp(True, "cpu") == torch.bfloat16 and resolve_amp(False, "cuda") is None
    with pytest.raises(FastalError, match="amp = 'fp8': use one of auto, bf16, fp16, fp32"):
        resolve_amp("fp8", "cpu")
    assert set(AMP_MODES) == {a for a, _ in WANT}


class RecordingTeacher(TinyTeacher):
    """TinyTeacher that notes the autocast dtype (None: off) its forward passes run under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype | None] = set()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = torch.is_autocast_enabled("cpu")
        self.seen.add(torch.get_autocast_dtype("cpu") if on else None)
        return super().forward(x)


class BlockCache(Cache):
    def image_of(self, gids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, gids, side="right") - 1


@pytest.mark.parametrize("amp", AMP_MODES)
def test_a_run_scores_its_pool_in_its_own_precision(amp: str, monkeypatch) -> None:
    # The bug this guards: a run with amp = "fp16" handed scoring `True`, which scoring read as bf16.
    teacher = RecordingTeacher()
    trainer = SimpleNamespace(teacher=teacher, bank=SimpleNamespace(features=lambda: None))
    monkeypatch.setattr(fastal.train.Trainer, "load", classmethod(lambda cls, *a, **k: trainer))
    ds = Images([(16, 20)] * 3)
    ds.num_classes = 4
    cache = BlockCache(ds)
    setup = SimpleNamespace(cfg=RunConfig(amp=amp, strategy="entropy"), train=ds, cache=cache,
                            device=torch.device("cpu"))  # fmt: skip
    labelled = np.zeros(int(cache.offsets[-1]), bool)
    ids = rank_unlabelled(setup, "unused.pt", labelled, seed=0, budget=5).ids
    assert ids.shape == (5,) and not labelled.any()
    assert teacher.seen == {WANT[amp, "cpu"]}
