"""What a run is made of before its directory exists: the data, the superpixel cache, the device
and the budget in superpixels, all checked up front (:func:`prepare`, :func:`check_before_training`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastal.config import RunConfig, validate
from fastal.errors import FastalError
from fastal.stages import measured


@dataclass
class Setup:
    """Data and derived sizes of a run; built (and checked) before the run directory exists."""

    cfg: RunConfig
    train: Any  # SegDataset
    val: Any
    cache: Any  # SuperpixelCache
    device: Any  # torch.device
    initial_k: int  # superpixels the initial set takes on average (it is drawn up to a % of pixels)
    cycle_ks: list[int]  # superpixels queried by cycles 2, 3, ..., last_cycle
    # Seconds and peak memory of opening the data ("data"), the superpixel cache ("superpixels")
    # and checking the validation labels ("check"), in this process (fastal.stages).
    stages: dict[str, Any] = field(default_factory=dict)

    @property
    def last_cycle(self) -> int:
        return 1 + len(self.cycle_ks)


def _dataset_args(cfg: RunConfig, split: str, count: int) -> dict[str, Any]:
    args: dict[str, Any] = {"root": cfg.data_root, "split": split, "scale": cfg.scale}
    if cfg.dataset == "synthetic":
        args.update(seed=cfg.data_seed, num_images=count or None)
        if cfg.scale is None:
            args["size"] = tuple(cfg.image_size)
    elif count:
        args["limit"] = count
    return args


def prepare(cfg: RunConfig) -> Setup:
    """Load both splits, build or reuse the superpixel cache, check the budget against the pool."""
    from fastal import distributed
    from fastal.data import load_dataset
    from fastal.data.superpixels import build_cache
    from fastal.device import resolve_device

    validate(cfg)  # a RunConfig built by hand has not been through make_config
    # One of several processes (torchrun): the device distributed.start gave this rank.
    device = distributed.current_device() if distributed.is_initialised() else resolve_device(cfg.device)
    stages: dict[str, Any] = {}
    with measured(stages, "data"):
        train = load_dataset(cfg.dataset, **_dataset_args(cfg, "train", cfg.train_images))
        val = load_dataset(cfg.dataset, **_dataset_args(cfg, "val", cfg.val_images))
    if train.num_classes != val.num_classes:
        raise FastalError(f"{cfg.dataset}: train has {train.num_classes} classes, val {val.num_classes}")
    with measured(stages, "superpixels"):
        cache = build_cache(train, superpixels=cfg.superpixels, cache_dir=cfg.cache_dir)
    n = cache.num_superpixels
    sched = cfg.schedule()
    initial_k = max(1, round(sched[0] / 100 * n))
    cycle_ks = [max(1, round((b - a) / 100 * n)) for a, b in zip(sched, sched[1:])]
    need = initial_k + sum(cycle_ks)
    if need > n:
        cycles = (f"{len(cycle_ks)} cycles x {cycle_ks[0]}" if len(set(cycle_ks)) == 1
                  else f"cycles of {' + '.join(map(str, cycle_ks))}")  # fmt: skip
        raise FastalError(
            f"budget larger than the pool: {initial_k} initial + {cycles} = "
            f"{need} superpixels, the pool has {n} ({len(train)} images)"
        )
    return Setup(cfg, train, val, cache, device, initial_k, cycle_ks, stages)


def check_before_training(setup: Setup) -> None:
    """What a new run would otherwise only find out cycles in: bad validation labels, backbone
    weights that do not load, and a selection engine the device cannot run."""
    from fastal.data.base import check_labels
    from fastal.model.network import build_model
    from fastal.select.engines import resolve_engine

    with measured(setup.stages, "check"):
        check_labels(setup.val)
    if setup.cfg.weights is not None:
        build_model(setup.cfg.backbone, setup.train.num_classes, setup.cfg.weights)
    resolve_engine(setup.cfg.engine, setup.device)


PHASE_SELECT, PHASE_TRAIN, PHASE_EVAL = 0, 1, 2


def phase_seed(seed: int, cycle: int, phase: int) -> int:
    """The seed of one phase of one cycle (cycle 0: the fully supervised reference)."""
    return int(np.random.SeedSequence([seed, cycle, phase]).generate_state(1)[0])
