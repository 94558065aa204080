"""Segmentation network with projection head, EMA teacher, memory bank and losses."""

from fastal.model.bank import BankCandidates, MemoryBank, entropy2
from fastal.model.ema import ema_update
from fastal.model.losses import (
    ContrastiveSample,
    ce_loss,
    contrastive_loss,
    downsample_labels,
    sample_contrastive,
)
from fastal.model.network import BACKBONES, SegmentationNet, build_model

__all__ = [
    "BACKBONES",
    "BankCandidates",
    "ContrastiveSample",
    "MemoryBank",
    "SegmentationNet",
    "build_model",
    "ce_loss",
    "contrastive_loss",
    "downsample_labels",
    "ema_update",
    "entropy2",
    "sample_contrastive",
]
