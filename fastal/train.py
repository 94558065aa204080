"""Training and evaluation: a plain loop in the style of torchvision's segmentation references.

One step (:meth:`Trainer.train_step`): student forward -> CE on labelled pixels + lambda *
InfoNCE against the memory bank -> Adam step -> EMA update of the teacher -> the teacher's
features of the batch go into the bank (the teacher is the model that scores the pool; with
``bank_from = "student"``, the student's of this step). ``lam = 0`` is a CE-only step.
The EMA rate at step t is min(ema, 1 - 1/t), the mean-teacher warm-up.

Mixed precision (:mod:`fastal.model.precision`): ``amp="auto"`` is bf16 autocast on CUDA and
fp32 on CPU; ``"bf16"``, ``"fp16"`` (with a GradScaler) and ``"fp32"`` force one. Losses are
computed in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fastal.atomic import atomic_open
from fastal.config import RunConfig
from fastal.data.base import IGNORE
from fastal.errors import FastalError
from fastal.model import (
    BACKBONES,
    MemoryBank,
    build_model,
    ce_loss,
    contrastive_loss,
    downsample_labels,
    ema_update,
    sample_contrastive,
)
from fastal.model.efficientnet import LITE0
from fastal.model.network import IMAGENET_MEAN, IMAGENET_STD, exception_summary
from fastal.model.precision import AMP_MODES, autocast, resolve_amp, to_tensor_batch

# Re-exported: the input normalisation and the precision rules live with the model.
__all__ = ["AMP_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "autocast", "resolve_amp", "to_tensor_batch"]
_RUN = RunConfig()  # TrainConfig's defaults for the settings a run shares with it


@dataclass
class TrainConfig:
    # The settings a run shares with it default as a run's do (RunConfig).
    backbone: str = _RUN.backbone  # one of fastal.model.BACKBONES
    weights: str | None = _RUN.weights  # local state_dict file or torchvision weights name (backbone)
    lr: float = _RUN.lr  # Adam
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 2e-4
    batch_size: int = _RUN.batch_size
    epochs: int = _RUN.epochs  # default for fit()
    ema: float = 0.99  # teacher = ema * teacher + (1 - ema) * student
    lam: float = _RUN.contrastive_weight  # weight of the InfoNCE term (lambda); 0: CE only
    tau: float = _RUN.temperature  # InfoNCE temperature
    bank_from: str = _RUN.bank_from  # teacher | student: whose features enter the memory bank
    anchors_per_class: int = 50
    negatives: int = 1024  # K_n per anchor: half nearest, half random
    per_image: int = 10  # P_i: bank entries per image and class per step
    bank_size: int = 1000  # T = 100 x P_i per class
    proj_dim: int = 128
    flip: bool = True  # random horizontal flip, joint image/mask
    amp: str = _RUN.amp  # auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA, fp32 on CPU)
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool = False  # torch.compile the student
    seed: int = 0
    num_workers: int = 0  # DataLoader workers

    @classmethod
    def from_run(cls, cfg: RunConfig, seed: int) -> TrainConfig:
        """The training settings of run ``cfg``, seeded with ``seed`` (the phase's)."""
        return cls(backbone=cfg.backbone, weights=cfg.weights, batch_size=cfg.batch_size, lr=cfg.lr,
                   epochs=cfg.epochs, amp=cfg.amp, lam=cfg.contrastive_weight, tau=cfg.temperature,
                   bank_from=cfg.bank_from, seed=seed)  # fmt: skip

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.backbone not in BACKBONES:
            raise FastalError(f"unknown backbone {self.backbone!r}; valid backbones: {', '.join(BACKBONES)}")
        if self.amp not in AMP_MODES:
            raise FastalError(f"amp {self.amp!r}: use one of {', '.join(AMP_MODES)}")
        for name in ("batch_size", "epochs", "anchors_per_class", "negatives", "per_image", "bank_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                raise FastalError(f"train config {name} = {value!r}: must be a positive integer")
        if not 0.0 <= self.ema <= 1.0:
            raise FastalError(f"train config ema = {self.ema}: must be in [0, 1]")
        if self.tau <= 0 or self.lr <= 0:
            raise FastalError(f"train config tau = {self.tau}, lr = {self.lr}: both must be > 0")
        if not self.lam >= 0:
            raise FastalError(f"train config lam = {self.lam}: must be >= 0")
        if self.bank_from not in ("teacher", "student"):
            raise FastalError(f"train config bank_from = {self.bank_from!r}: use teacher or student")


def collate(batch: Sequence[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (H, W, 3) uint8, label (H, W) uint8)] -> uint8 tensors (B, H, W, 3), (B, H, W)."""
    shapes = {(np.shape(img)[:2], np.shape(lab)) for img, lab in batch}
    if len(shapes) != 1 or any(s[0] != s[1] for s in shapes):
        raise FastalError(
            f"a batch needs images and labels of one size; got (image, label) sizes {sorted(shapes)} "
            "(resize the dataset to a fixed size)"
        )
    images = torch.as_tensor(np.stack([np.asarray(img) for img, _ in batch]))
    labels = torch.as_tensor(np.stack([np.asarray(lab) for _, lab in batch]))
    return images, labels


def random_hflip(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (image (3, H, W), mask (H, W)) pair of the batch with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None], y.flip(-1), y)
    return x, y


class NonFiniteLoss(FastalError):
    """The loss became NaN or infinite; ``step`` is the 1-based step that produced it."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class Trainer:
    """Student, EMA teacher, Adam, memory bank and AMP state for one training run.

    >>> trainer = Trainer(TrainConfig(backbone="resnet18", epochs=2), num_classes=11, device="cpu")
    >>> trainer.fit(train_samples)                    # Dataset of (uint8 HWC image, uint8 HW label)
    >>> evaluate(trainer.teacher, val_samples, 11, "cpu")["miou"]
    """

    def __init__(self, cfg: TrainConfig, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        # channels_last: faster on CUDA; on a CPU only for Lite0's depthwise convs.
        default_cl = self.device.type == "cuda" or cfg.backbone == LITE0
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else default_cl
        # Initialisation draws from the global RNG; seeding it makes a run reproducible.
        torch.manual_seed(cfg.seed)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.student = build_model(cfg.backbone, num_classes, cfg.weights, cfg.proj_dim)
        self.student.to(self.device, memory_format=fmt)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self._student_forward = torch.compile(self.student) if cfg.compile else self.student
        self.optimizer = torch.optim.Adam(
            self.student.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.bank = MemoryBank(num_classes, cfg.proj_dim, cfg.per_image, cfg.bank_size, self.device)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)  # flips, anchors, negatives
        self.step = 0  # optimiser steps taken
        self.epoch = 0  # epochs completed
        self.train_seconds = 0.0  # seconds spent in those epochs, across resumes

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float] | None:
        """One optimiser step on a batch of uint8 images (B, H, W, 3) and labels (B, H, W);
        returns the losses, labelled pixels and InfoNCE anchors drawn (in all, and per class),
        or None when the batch has no labelled pixel (no step taken)."""
        cfg, C = self.cfg, self.num_classes
        x = to_tensor_batch(images, self.device, self.channels_last)  # (B, 3, H, W)
        y = torch.as_tensor(labels).to(self.device, non_blocking=True).long()  # (B, H, W)
        if cfg.flip:
            x, y = random_hflip(x, y, self.generator)
        self.student.train()
        with autocast(self.device, self.amp_dtype):
            logits, emb = self._student_forward(x)  # (B, C, h, w), (B, D, h, w)
        ce, labelled = ce_loss(logits, y)
        # Host sync: skip batches without labels, reject out-of-range labels before CE does.
        labelled, bad = torch.stack([labelled, ((y >= C) & (y != IGNORE)).sum()]).tolist()
        if bad:
            raise FastalError(f"{bad} label values outside 0..{C - 1} (and not 255 = ignore) in a training batch")
        if labelled == 0:
            return None
        y_feat = downsample_labels(y, logits.shape[-2:])  # (B, h, w)
        if cfg.lam > 0:
            bank_features, bank_labels = self.bank.features(), self.bank.labels()
            sample = sample_contrastive(
                emb, y_feat, logits.argmax(1), bank_features, bank_labels, C,
                cfg.anchors_per_class, cfg.negatives, self.generator,
            )  # fmt: skip
            nce = contrastive_loss(emb, sample, self.bank.class_means(), bank_features, cfg.tau)
            loss = ce + cfg.lam * nce
            # Anchors drawn per class: a probe of how much the InfoNCE term sees (one sync with the losses).
            anchors = torch.bincount(sample.classes, minlength=C).to(loss.dtype)
        else:  # the ablation: a CE-only step (InfoNCE not computed, reported as 0; no anchors drawn)
            nce, loss = torch.zeros((), device=ce.device), ce
            anchors = torch.zeros(C, dtype=loss.dtype, device=ce.device)
        values = torch.cat([torch.stack([loss, ce, nce]).detach(), anchors]).tolist()  # host sync: NaN check and progress
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(f"loss is {values[0]} at step {self.step + 1} (epoch {self.epoch + 1})", self.step + 1)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Mean-teacher warm-up: early on the teacher follows the student closely, so a short
        # run (a small AL cycle) does not leave it near the random initialisation.
        ema_update(self.teacher, self.student, min(cfg.ema, 1.0 - 1.0 / (self.step + 1)))
        bank_logits, bank_emb = logits.detach(), emb.detach()  # bank_from student: this step's forward
        if cfg.bank_from == "teacher":
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                bank_logits, bank_emb = self.teacher(x)
        self.bank.push(bank_emb, bank_logits, y_feat)
        self.step += 1
        return {"loss": values[0], "ce": values[1], "nce": values[2], "labelled": labelled,
                "anchors": int(sum(values[3:])), "anchors_per_class": [int(a) for a in values[3:]]}

    def loader(self, samples: Dataset, shuffle: bool = True) -> DataLoader:
        """Batches of ``samples``; the shuffle order depends only on (seed, epoch), so a
        resumed run sees the same order."""
        order = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        return DataLoader(
            samples, batch_size=self.cfg.batch_size, shuffle=shuffle, generator=order, collate_fn=collate,
            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip

    def fit(
        self,
        train_samples: Dataset,
        epochs: int | None = None,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
    ) -> list[dict[str, float]]:
        """Train ``epochs`` (default ``cfg.epochs``) more epochs; saves ``checkpoint`` after
        each epoch when given. Returns one dict of mean losses and throughput per epoch.

        FastalError when no pixel of the whole set is labelled, and when the loss becomes
        NaN/inf (naming the step; the checkpoint of the last good epoch is left as it was)."""
        epochs = self.cfg.epochs if epochs is None else epochs
        require_labelled(train_samples)
        history = []
        with _maybe_progress(progress) as bar:
            task = bar.add_task("train", total=epochs * math.ceil(len(train_samples) / self.cfg.batch_size))
            for _ in range(epochs):
                try:
                    stats = train_one_epoch(
                        self, self.loader(train_samples),
                        lambda loss: bar.update(task, advance=1, description=f"epoch {self.epoch + 1} loss {loss:.3f}"),
                    )  # fmt: skip
                except NonFiniteLoss as e:
                    saved = checkpoint is not None and os.path.isfile(checkpoint)
                    kept = f"the last good checkpoint {checkpoint} is kept" if saved else "no checkpoint was saved"
                    raise NonFiniteLoss(f"{e}; training stopped, {kept}", e.step) from None
                self.epoch += 1
                self.train_seconds += stats["seconds"]
                stats["epoch"] = self.epoch
                history.append(stats)
                if checkpoint is not None:
                    self.save(checkpoint)
        return history

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state(), "device": self.device.type}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "bank": self.bank.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "train_seconds": self.train_seconds,
            "num_classes": self.num_classes,
            "config": dataclasses.asdict(self.cfg),
            "rng": rng,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (a crash leaves the previous one)."""
        with atomic_open(path, "wb") as f:
            try:
                torch.save(self.state_dict(), f)
            except RuntimeError as e:
                # torch reports a failed write (a full disk) as a RuntimeError raised over the
                # OSError; hand atomic_open the OSError so it names the file and the cause.
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu", num_classes: int | None = None
    ) -> Trainer:
        """The trainer saved at ``path``, on ``device``, ready to continue (RNG states restored).
        ``num_classes``: FastalError unless the checkpoint's model has that many classes."""
        if not os.path.isfile(path):
            raise FastalError(f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            cfg = TrainConfig(**{**state["config"], "weights": None})  # weights live in the state
        except FastalError:
            raise
        except Exception as e:  # unpickling / key errors: not a fastal checkpoint
            raise FastalError(f"checkpoint {path}: not a fastal training checkpoint ({exception_summary(e)})") from e
        if num_classes is not None and state["num_classes"] != num_classes:
            raise FastalError(f"checkpoint {path} has {state['num_classes']} classes, the dataset has {num_classes}")
        trainer = cls(cfg, state["num_classes"], device)
        trainer.cfg = TrainConfig(**state["config"])
        trainer.student.load_state_dict(state["student"])
        trainer.teacher.load_state_dict(state["teacher"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        trainer.bank.load_state_dict(state["bank"])
        trainer.step, trainer.epoch = state["step"], state["epoch"]
        trainer.train_seconds = state.get("train_seconds", 0.0)  # absent from older checkpoints
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["device"] == trainer.device.type:
            trainer.generator.set_state(rng["generator"])
        else:  # CPU and CUDA generator states do not convert; a fresh stream per step count
            trainer.generator.manual_seed(cfg.seed * 1_000_003 + trainer.step)
        if "cuda" in rng and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], trainer.device)
        return trainer


def train_one_epoch(
    trainer: Trainer, loader: DataLoader, on_batch: Callable[[float], None] | None = None
) -> dict[str, float]:
    """One pass over ``loader``; mean loss, CE, InfoNCE and anchors over the steps taken, and throughput.
    ``on_batch(loss)`` follows every batch (NaN for a batch without labels, skipped)."""
    sums = {"loss": 0.0, "ce": 0.0, "nce": 0.0, "anchors": 0.0}
    steps = images = skipped = 0
    start = time.perf_counter()
    for batch_images, batch_labels in loader:
        out = trainer.train_step(batch_images, batch_labels)
        images += len(batch_images)
        if out is None:
            skipped += 1
        else:
            steps += 1
            for k in sums:
                sums[k] += out[k]
        if on_batch is not None:
            on_batch(float("nan") if out is None else out["loss"])
    seconds = time.perf_counter() - start
    stats = {k: v / max(steps, 1) for k, v in sums.items()}
    stats.update(steps=steps, skipped=skipped, images=images, seconds=seconds, images_per_s=images / seconds)
    return stats


def require_labelled(samples: Dataset) -> None:
    """FastalError unless some pixel of ``samples`` is labelled (stops at the first one found)."""
    for i in range(len(samples)):
        if (np.asarray(samples[i][1]) != IGNORE).any():
            return
    raise FastalError(
        f"the training set ({len(samples)} images) has no labelled pixel: every label is 255 (ignore)"
    )


@contextlib.contextmanager
def _maybe_progress(show: bool) -> Iterator[Any]:
    from fastal.progress import progress

    bar = progress(transient=True)
    bar.disable = not show
    with bar:
        yield bar


def confusion_metrics(confusion: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """mIoU and per-class IoU from a (C, C) confusion matrix (rows = truth, columns = prediction).

    IoU_c = TP / (TP + FP + FN). A class absent from both truth and prediction has no IoU
    (NaN in ``per_class_iou``) and is left out of the mean, so an evaluation set that lacks
    a class is not penalised for it; a class that is predicted but absent counts with IoU 0.
    """
    conf = torch.as_tensor(confusion).double().cpu()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    present = union > 0
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return {"miou": miou, "per_class_iou": iou.tolist(), "confusion": conf.long().numpy()}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    samples: Dataset,
    num_classes: int,
    device: torch.device | str,
    batch_size: int = 4,
    amp: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Segment ``samples`` (Dataset of uint8 HWC image, uint8 HW label) with ``model`` at full
    resolution (bilinear upsampling of the logits) and score it: ``{"miou": float,
    "per_class_iou": list (NaN for classes absent from truth and prediction), "confusion":
    (C, C) int64 numpy array}``. The confusion matrix is accumulated on the device as
    ``bincount(C * truth + pred)`` over non-ignored pixels."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FastalError(f"evaluation batch size {batch_size!r}: must be a positive integer")
    device = torch.device(device)
    dtype = resolve_amp(amp, device)
    was_training = model.training
    model.eval()
    C = num_classes
    conf = torch.zeros(C * C, dtype=torch.int64, device=device)
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate)
    try:
        with _maybe_progress(progress) as bar:
            task = bar.add_task("evaluate", total=len(loader))
            for images, labels in loader:
                x = to_tensor_batch(images, device)
                y = labels.to(device).long()  # (B, H, W)
                with autocast(device, dtype):
                    logits, _ = model(x)
                pred = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
                pred = pred.argmax(1)
                keep = y != IGNORE
                if bool((y[keep] >= C).any()):  # host sync, once per batch
                    raise FastalError(f"evaluation labels outside 0..{C - 1} (and not 255 = ignore)")
                conf += torch.bincount(C * y[keep] + pred[keep], minlength=C * C)
                bar.advance(task)
    finally:
        model.train(was_training)
    return confusion_metrics(conf.view(C, C))
