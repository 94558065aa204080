"""The typed configuration of one active-learning run: TOML file, then CLI overrides, validated.

Budgets are percentages of the training pixels: every cycle spends pixels, not a count of
regions (:mod:`fastal.select.pixel_budget`), and results.json records the pixel fraction
actually labelled.

The budget schedule has two spellings: ``initial`` + ``cycles`` x ``budget_per_cycle``, or
``budgets``, the cumulative % at each evaluated cycle (``[1, 2, 4, 8]``: a random 1 %, then
cycles of 1, 2 and 4 %). One file (or one command line) sets one spelling: ``budgets`` with
any of the other three is an error. A ``budgets`` override (``--budgets``) replaces the
file's ``initial``/``budget_per_cycle``/``cycles``; an override of one of those three over a
file's ``budgets`` is an error (half a schedule would be ambiguous). :meth:`RunConfig.schedule`
gives the schedule whichever spelling was used.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastal.errors import FastalError, check_path_names

if typing.TYPE_CHECKING:
    from fastal.select.umap.params import UMAPParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


@dataclass
class RunConfig:
    # Optional fields default to None: TOML has no null, so None is written as a missing key.
    # --- data ---
    dataset: str = "synthetic"  # synthetic | camvid | cityscapes | folder
    data_root: str | None = None  # dataset folder (not used by synthetic)
    scale: float | None = None  # resize factor applied to images and labels
    image_size: list[int] = field(default_factory=lambda: [48, 64])  # [H, W] of synthetic images (unless scale)
    train_images: int = 48  # synthetic: images generated; others: the first N (0 = all)
    val_images: int = 24  # same, for the validation split
    data_seed: int = 0  # generator seed of the synthetic dataset (fixed across run seeds)
    superpixels: int = 192  # SEEDS superpixels requested per image (at 48x64 the finest grid SEEDS has)
    cache_dir: str | None = None  # superpixel cache location (None = the dataset's default)
    # --- active learning ---
    strategy: str = "contrastive"  # see fastal.select.STRATEGIES
    labels: Literal["dominant", "full"] = "full"  # full: every pixel of a queried region; dominant: its majority class
    initial: float = 4.0  # % of pixels labelled at random before the first cycle
    budget_per_cycle: float = 2.0  # % of pixels queried per cycle
    cycles: int = 4  # selection cycles after the initial set
    budgets: list[float] | None = None  # cumulative % at each evaluated cycle; replaces the three above
    target_ratio: float | None = None  # stop once mIoU >= target_ratio * full_miou (needs the reference)
    full_reference: bool = True  # train a fully supervised model first; its mIoU is `full_miou`
    full_epochs: int | None = None  # epochs of the reference (None: as many as the last cycle's model had)
    full_shared: str | None = None  # a reference JSON shared by runs: reused when there, else trained and written
    # --- training ---
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101 | efficientnet_lite0
    weights: str | None = None  # local backbone weights file, or "imagenet" for efficientnet_lite0 (nothing downloads)
    epochs: int = 6  # epochs per cycle
    batch_size: int = 8
    lr: float = 5e-4
    retrain: Literal["finetune", "scratch"] = "finetune"  # start each cycle from the last model or anew
    amp: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # --- selection ---
    engine: Literal["auto", "torch", "cuml"] = "auto"  # UMAP/KMeans backend
    region_entropy: Literal["sum", "mean"] = "sum"  # a region's uncertainty: summed (the paper's) or per-pixel entropy
    clusters: float = 1.0  # KMeans clusters per queried region (contrastive, kmeans-entropy); 1 = the paper's k = budget
    # fit: k searched so that every cluster's most uncertain region fits the cycle's pixels (one pick per
    # cluster; the shortfall goes to the next cycle); prefix: k from the mean region size, picks cut to the pixels
    cluster_budget: Literal["fit", "prefix"] = "fit"
    umap_components: int = 2  # UMAP's n_components (contrastive selection)
    umap_neighbors: int = 15  # UMAP's n_neighbors; the memory bank must hold more features
    umap_min_dist: float = 0.1  # UMAP's min_dist, in [0, 1] (spread is 1)
    # weighted-ratio, contrastive-balanced: class weight (coeff x pool-mean class probability + 1)^-2
    # (MulActSeg's cls_weight_coeff: 6 on Cityscapes, 12 on VOC)
    weighted_ratio_coeff: float = 6.0
    cluster_shortlist: float = 10.0  # contrastive-uncertain clusters the cluster_shortlist x picks most uncertain regions
    # --- method (training) ---
    contrastive_weight: float = 0.1  # lambda, the InfoNCE term's weight; 0 = cross-entropy only
    temperature: float = 0.1  # tau of the InfoNCE loss
    bank_lifetime: Literal["run", "cycle"] = "run"  # run: the memory bank is kept across cycles; cycle: each
    # cycle's training starts with an empty bank (the paper's; selection still fits UMAP on the bank just filled)
    bank_from: Literal["teacher", "student"] = "teacher"  # whose features (of correct, uncertain pixels) enter the bank
    # selection/cycle-K.parquet per selecting cycle: every candidate, the picked ones only, or none (large pools)
    selection_table: Literal["all", "picked", "none"] = "all"
    selection_plot: bool = False  # also selection/embedding-cycle-K.png (strategies with an embedding; needs "all")
    # --- run ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    keep_checkpoints: bool = False  # keep every cycle's checkpoint, not only the latest
    nproc: int = 1  # processes (one per GPU) `fastal run` and `fastal sweep` start for the run, under torchrun
    log: Literal["none", "tensorboard"] = "none"  # tensorboard: RUN_DIR/tensorboard/ (needs fastal[log])

    def schedule(self) -> list[float]:
        """Cumulative % of pixels labelled at each evaluated cycle (cycle k: entry k - 1); the
        first entry is the random initial set, each later step one cycle's selection."""
        if self.budgets is not None:
            return list(self.budgets)
        return [self.initial + k * self.budget_per_cycle for k in range(self.cycles + 1)]

    def reference_epochs(self) -> int:
        """Epochs of the fully supervised reference: ``full_epochs``, else as many as the last
        cycle's model has trained (every cycle's when fine-tuning, one cycle's when retraining), so
        that the reference line is what the same training gives with every pixel labelled."""
        if self.full_epochs is not None:
            return self.full_epochs
        return self.epochs * (len(self.schedule()) if self.retrain == "finetune" else 1)

    def budget_pct(self) -> float:
        """Total % of pixels the run may label."""
        return self.schedule()[-1]

    def umap_params(self) -> UMAPParams:
        """The UMAP settings of the run's contrastive selection (the flat ``umap_*`` keys)."""
        from fastal.select.umap.params import UMAPParams

        return UMAPParams(**{name: getattr(self, key) for key, name in UMAP_KEYS.items()})

    def strategy_knobs(self) -> dict[str, float]:
        """The knobs of the field's strategies, as ``fastal.select.select`` takes them."""
        return {"weighted_ratio_coeff": self.weighted_ratio_coeff, "cluster_shortlist": self.cluster_shortlist}


# The other spelling of the schedule, which `budgets` replaces.
SCHEDULE_KEYS = ("initial", "budget_per_cycle", "cycles")
# The run's UMAP keys and UMAPParams' names for them.
UMAP_KEYS = {"umap_neighbors": "n_neighbors", "umap_components": "n_components", "umap_min_dist": "min_dist"}

# What a fully supervised reference depends on: runs that differ only in the other keys share one
# (fastal.reference checks it, DATA_KEYS through the datasets' fingerprints and device as
# resolved; fastal.sweep.spec names references by it). epochs, retrain and the schedule count
# through RunConfig.reference_epochs(); nproc does not (a sweep trains its references in one
# process). Every key is in one of the two lists (tests/test_config.py).
DATA_KEYS = ("dataset", "data_root", "scale", "image_size", "train_images", "val_images", "data_seed")
REFERENCE_KEYS = (*DATA_KEYS, "full_reference", "backbone", "weights", "batch_size", "lr", "amp", "seed", "device",
                  "contrastive_weight", "temperature", "bank_from")  # fmt: skip
NOT_REFERENCE_KEYS = ("strategy", "labels", "superpixels", "cache_dir", "initial", "budget_per_cycle", "cycles",
                      "budgets", "target_ratio", "full_shared", "full_epochs", "epochs", "retrain", "engine",
                      "region_entropy", "clusters", "keep_checkpoints", "cluster_budget", "umap_components",
                      "umap_neighbors", "umap_min_dist", "bank_lifetime", "selection_table", "selection_plot",
                      "weighted_ratio_coeff", "cluster_shortlist", "log", "nproc")  # fmt: skip

# What acts only from cycle 2 on (the selection, and what training reads only after cycle 1): runs
# that differ only in these have the same cycle 1 (a seeded random set, trained and evaluated alike),
# which a sweep with share_first_cycle trains once (fastal.sweep.spec names the groups by the
# others). Every key is in one of the two lists (tests/test_config.py).
LATER_CYCLE_KEYS = ("strategy", "engine", "region_entropy", "clusters", "cluster_budget", "umap_components",
                    "umap_neighbors", "umap_min_dist", "weighted_ratio_coeff", "cluster_shortlist", "selection_table",
                    "selection_plot", "bank_lifetime", "keep_checkpoints")  # fmt: skip
# The rest; retrain and the schedule among them: they decide the reference's epochs and cycle 1's stop.
FIRST_CYCLE_KEYS = (*REFERENCE_KEYS, "labels", "superpixels", "cache_dir", "initial", "budget_per_cycle", "cycles",
                    "budgets", "target_ratio", "full_shared", "full_epochs", "epochs", "retrain", "log", "nproc")  # fmt: skip


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _coerce(name: str, value: Any, hint: Any, what: str | None = None) -> Any:
    """``value`` checked against ``hint``; ints widen to floats. Raises naming ``what`` (default
    ``name = value``; a command-line option is named as given: ``--labels partial``)."""
    what = what or f"{name} = {value!r}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner, what)
    if origin is Literal:
        if value not in args:
            raise FastalError(f"config: {what}: choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise FastalError(f"config: {what}: expected a list")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    ok = (
        isinstance(value, bool)
        if hint is bool
        else isinstance(value, hint) and not isinstance(value, bool)
        if hint is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is float
        else isinstance(value, hint)
    )
    if not ok:
        raise FastalError(f"config: {what}: expected {hint.__name__}, got {type(value).__name__}")
    return float(value) if hint is float else value


def validate(cfg: RunConfig) -> RunConfig:
    """Every check of a configuration that needs no data (the one place for them): ranges, names
    of strategies and backbones, and a budget that fits in 100% of the pixels."""
    from fastal.model import BACKBONES
    from fastal.select import STRATEGIES
    from fastal.select.umap.params import range_problems

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise FastalError(f"config: {msg}")

    if cfg.budgets is not None:
        b = cfg.budgets
        need(len(b) >= 1, "budgets = []: give at least the initial %, e.g. [1, 2, 4, 8]")
        need(all(math.isfinite(v) for v in b) and b[0] > 0, f"budgets = {b}: percentages of pixels > 0")
        need(all(x < y for x, y in zip(b, b[1:])), f"budgets = {b}: must be strictly increasing (cumulative %)")
        need(b[-1] <= 100, f"budgets = {b}: budget larger than the pool: {b[-1]:g}% of pixels > 100%")
    else:
        for name in ("initial", "budget_per_cycle"):
            v = getattr(cfg, name)
            need(math.isfinite(v) and 0 < v <= 100, f"{name} = {v}: a percentage of pixels in (0, 100]")
        need(cfg.cycles >= 0, f"cycles = {cfg.cycles}: must be >= 0")
        need(
            cfg.budget_pct() <= 100,
            f"budget larger than the pool: initial {cfg.initial}% + {cfg.cycles} cycles x "
            f"{cfg.budget_per_cycle}% = {cfg.budget_pct():g}% of pixels > 100%",
        )
    need(cfg.full_shared is None or cfg.full_reference, "full_shared needs full_reference = true")
    if cfg.target_ratio is not None:
        need(0 < cfg.target_ratio <= 1, f"target_ratio = {cfg.target_ratio}: a fraction in (0, 1]")
        need(cfg.full_reference, "target_ratio needs full_reference = true (the fully supervised mIoU)")
    for name in ("epochs", "batch_size", "superpixels", "nproc"):
        need(getattr(cfg, name) >= 1, f"{name} = {getattr(cfg, name)}: must be >= 1")
    need(cfg.full_epochs is None or cfg.full_epochs >= 1, f"full_epochs = {cfg.full_epochs}: must be >= 1")
    for name in ("train_images", "val_images"):
        need(getattr(cfg, name) >= 0, f"{name} = {getattr(cfg, name)}: must be >= 0 (0 = all)")
    for name in ("seed", "data_seed"):  # numpy seeds are non-negative (SeedSequence, default_rng)
        need(0 <= getattr(cfg, name) < 2**63, f"{name} = {getattr(cfg, name)}: must be in 0..2**63-1")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"lr = {cfg.lr}: must be > 0")
    need(math.isfinite(cfg.clusters) and cfg.clusters >= 1, f"clusters = {cfg.clusters}: must be >= 1 (KMeans clusters per queried region)")
    need(cfg.strategy in STRATEGIES, f"strategy {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    need(cfg.backbone in BACKBONES, f"backbone {cfg.backbone!r}: choose one of {', '.join(BACKBONES)}")
    key_of = {name: key for key, name in UMAP_KEYS.items()}
    for name, rule in range_problems({name: getattr(cfg, key) for key, name in UMAP_KEYS.items()}):
        need(False, f"{key_of[name]} = {getattr(cfg, key_of[name])}: {rule}")
    need(math.isfinite(cfg.weighted_ratio_coeff) and cfg.weighted_ratio_coeff >= 0,
         f"weighted_ratio_coeff = {cfg.weighted_ratio_coeff}: must be >= 0 (0: no class weighting)")  # fmt: skip
    need(math.isfinite(cfg.cluster_shortlist) and cfg.cluster_shortlist >= 1,
         f"cluster_shortlist = {cfg.cluster_shortlist}: must be >= 1 (regions clustered per pick)")  # fmt: skip
    need(math.isfinite(cfg.contrastive_weight) and cfg.contrastive_weight >= 0,
         f"contrastive_weight = {cfg.contrastive_weight}: must be >= 0 (0: cross-entropy only)")  # fmt: skip
    need(math.isfinite(cfg.temperature) and cfg.temperature > 0, f"temperature = {cfg.temperature}: must be > 0")
    need(not cfg.selection_plot or cfg.selection_table == "all",
         f"selection_plot needs selection_table = \"all\" (it draws every candidate), not {cfg.selection_table!r}")
    need(cfg.scale is None or 0 < cfg.scale <= 8, f"scale = {cfg.scale}: a factor in (0, 8]")
    need(
        len(cfg.image_size) == 2 and min(cfg.image_size) >= 16,
        f"image_size = {cfg.image_size}: expected [H, W], each >= 16",
    )
    return cfg


def make_config(values: dict[str, Any], source: str = "config") -> RunConfig:
    """A validated RunConfig from ``values`` (defaults for what is missing)."""
    hints = _hints()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise FastalError(
            f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(hints))})"
        )
    if values.get("budgets") is not None:
        both = [k for k in SCHEDULE_KEYS if k in values]
        if both:
            raise FastalError(f"{source}: budgets replaces initial, budget_per_cycle and cycles: "
                              f"drop {both[0]} = {values[both[0]]!r} (or budgets)")
    try:
        checked = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    except FastalError as e:
        raise FastalError(f"{source}: {str(e).removeprefix('config: ')}") from None
    try:
        return validate(RunConfig(**checked))
    except FastalError as e:  # named as the values' source: a file, a sweep's sweep.json, the options
        raise FastalError(f"{source}: {str(e).removeprefix('config: ')}") from None


def parse_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; a missing or broken file is one FastalError naming it. A UTF-8
    byte-order mark (some Windows editors write one) is read past: TOML has none, but it is no error
    of the user's."""
    path = Path(path)
    check_path_names(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FastalError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise FastalError(f"{path}: a directory, not a {what}") from None
    except OSError as e:
        raise FastalError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise FastalError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          f"TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise FastalError(f"{path}: not valid TOML ({e})") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A run configuration file's keys (flat: no sections)."""
    data = parse_toml(path)
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise FastalError(f"{path}: unknown section [{nested[0]}] (the run config is flat key = value)")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (CLI values, ``None`` = not given;
    a wrong one is named as the option it came from, not blamed on the file)."""
    values = read_toml(path) if path is not None else {}
    check_options(overrides or {})
    return merge_config(values, overrides, str(path) if path is not None else "config", "command-line options")


def check_options(options: dict[str, Any]) -> None:
    """FastalError naming the option (``--labels partial``) whose value does not fit its key's type."""
    hints = _hints()
    for key, value in options.items():
        if value is not None and key in hints:
            try:
                _coerce(key, value, hints[key], f"--{key.replace('_', '-')} {value}")
            except FastalError as e:
                raise FastalError(str(e).removeprefix("config: ")) from None


def merge_config(values: dict[str, Any], overrides: dict[str, Any] | None, source: str = "config",
                 given_as: str | None = None) -> RunConfig:
    """Defaults, then ``values`` (a file's keys, checked first and named as ``source``), then
    ``overrides`` (``None`` = not given; what only they make wrong is named as ``given_as``,
    default ``source``); an overriding schedule replaces the values' one."""
    values = dict(values)
    make_config(values, source)  # errors name the file before any override hides them
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "budgets" in given:  # an overriding schedule replaces the file's, whichever its spelling
        for k in SCHEDULE_KEYS:
            values.pop(k, None)
    elif values.get("budgets") is not None:
        clash = [k for k in SCHEDULE_KEYS if k in given]
        if clash:
            raise FastalError(f"{source}: sets budgets = {values['budgets']}: {clash[0]} cannot change it "
                              f"(override budgets instead)")
    values.update(given)
    return make_config(values, given_as or source)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config's keys and values; with ``budgets``, the unused ``initial``/``budget_per_cycle``/
    ``cycles`` are left out (so that the dict, saved, reads back as the same config)."""
    d = dataclasses.asdict(cfg)
    if cfg.budgets is not None:
        for k in SCHEDULE_KEYS:
            del d[k]
    return d


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML (tomli-w) for a dict of scalars / lists of scalars / nested such dicts; ``None`` values
    are left out (TOML has no null; a missing key reads back as the default ``None``)."""
    import tomli_w

    def drop_none(d: dict[str, Any]) -> dict[str, Any]:
        return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    return tomli_w.dumps(drop_none(data))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from fastal.atomic import atomic_write_text

    atomic_write_text(path, dumps_toml(to_dict(cfg)))
