"""Sweep files: parsing and validation, the grid of runs, their names, and the references they share.

A sweep file names a base run configuration, the axes to cross and the keys set on every run::

    base = "configs/default.toml"      # any `fastal run` configuration; relative to this file
    [axes]                             # crossed: 2 x 2 = 4 runs
    strategy = ["contrastive", "random"]
    seed = [0, 1]
    [set]                              # applied to every run
    cycles = 2

``share_first_cycle = true`` (top level) trains cycle 1 once for the runs that differ only in
what acts from cycle 2 on (:data:`fastal.config.LATER_CYCLE_KEYS`: the strategy, its knobs).

It resolves to a :class:`Sweep`: the configuration every run starts from (base, then ``[set]``,
with ``data_root`` and ``cache_dir`` made absolute, since workers may start elsewhere) and the
axes. The sweep directory keeps it as ``sweep.json``; a sweep file that resolves to another one
is refused there, naming the first key that differs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastal.config import FIRST_CYCLE_KEYS, REFERENCE_KEYS, RunConfig, load_config, merge_config, parse_toml, read_toml, to_dict
from fastal.errors import NAME_MAX, TEMP_ROOM, FastalError

SHARE = "share_first_cycle"
SWEEP_KEYS = ("base", "axes", "set", SHARE)
SPEC = "sweep.json"  # DIR/sweep.json: the resolved sweep
RUNS, REFERENCES = "runs", "references"  # DIR/runs/<run name>/, DIR/references/<name>/ and <name>.json
FIRST = "first"  # DIR/first/<name>/: a first cycle shared by the runs that match it
# A run directory is made in a temp sibling ".<name>.<8 random>.tmp", beside <name>.lock and <name>.log.
RUN_NAME_MAX = NAME_MAX - TEMP_ROOM
PATH_KEYS = ("data_root", "cache_dir")  # made absolute: a worker's working directory may be another


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its name, its point on the axes, its configuration, its reference."""

    name: str
    point: dict[str, Any]  # axis -> value
    cfg: RunConfig  # full_shared points at the reference's JSON when it has one
    reference: str | None  # name of the reference it reads (DIR/references/<name>.json)
    first: str | None = None  # name of the first cycle it starts from (DIR/first/<name>/), when shared


@dataclass(frozen=True)
class Sweep:
    config: dict[str, Any]  # base + [set], as fastal.config.to_dict gives it
    axes: dict[str, list[Any]]  # in the file's order
    source: str  # the sweep file, for messages
    share_first_cycle: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"sweep_file": self.source, "config": self.config, "axes": self.axes, SHARE: self.share_first_cycle}

    def runs(self, out: Path | None = None) -> list[RunSpec]:
        """The grid, the last axis varying fastest; under sweep directory ``out`` (absolute), each
        run's ``full_shared`` is its reference's JSON there."""
        runs = []
        for values in itertools.product(*self.axes.values()):
            point = dict(zip(self.axes, values))
            cfg = merge_config(self.config, point, self.source)
            ref = reference_name(cfg) if cfg.full_reference else None
            first = first_name(cfg) if self.share_first_cycle else None
            if first is not None and cfg.nproc > 1:
                raise FastalError(f"{SHARE}: runs of nproc = {cfg.nproc} processes cannot share their first "
                                  f"cycle (it is trained in one); set nproc = 1 or {SHARE} = false")  # fmt: skip
            if ref is not None and out is not None:
                cfg = replace(cfg, full_shared=str(out / REFERENCES / f"{ref}.json"))
            runs.append(RunSpec(run_name(point), point, cfg, ref, first))
        return runs


def value_name(value: Any) -> str:
    """An axis value as it appears in run names and in cycles.parquet: lists joined by '+'."""
    if isinstance(value, list):
        return "+".join(value_name(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def run_name(point: dict[str, Any]) -> str:
    """``strategy=random,seed=0``: the run's directory name under DIR/runs. A name longer than a
    file name may be (a long list on an axis) is cut, and ends in a digest of the whole name
    (the point itself is in cycles.parquet's axis columns)."""
    name = ",".join(f"{k}={value_name(v)}" for k, v in point.items())
    if len(name.encode()) <= RUN_NAME_MAX:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:RUN_NAME_MAX - 9].decode(errors='ignore')}~{digest}"


def reference_key(cfg: RunConfig) -> dict[str, Any]:
    """What decides a run's fully supervised reference, read from its configuration alone."""
    return {**{k: getattr(cfg, k) for k in REFERENCE_KEYS}, "reference_epochs": cfg.reference_epochs()}


def reference_name(cfg: RunConfig) -> str:
    return keyed_name(cfg, reference_key(cfg))


def first_name(cfg: RunConfig) -> str:
    """The name of the first cycle ``cfg`` shares (DIR/first/<name>/): the runs that differ only in
    :data:`fastal.config.LATER_CYCLE_KEYS` have the same one."""
    return keyed_name(cfg, {k: getattr(cfg, k) for k in FIRST_CYCLE_KEYS})


def keyed_name(cfg: RunConfig, key: dict[str, Any]) -> str:
    """``seed<S>-<digest of key>``: what a sweep's runs share is named by what decides it."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"seed{cfg.seed}-{digest[:8]}"


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file: every key, every axis value and every run's configuration."""
    path = Path(path)
    data = parse_toml(path, "sweep file")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise FastalError(f"{path}: unknown key {unknown[0]!r} (a sweep file has base, {SHARE}, [axes] and [set])")
    base = data.get("base")
    if base is not None and not isinstance(base, str):
        raise FastalError(f"{path}: base = {base!r}: expected the path of a run configuration")
    axes, fixed = data.get("axes", {}), data.get("set", {})
    if not isinstance(fixed, dict):
        raise FastalError(f"{path}: set must be a table ([set]), not {type(fixed).__name__}")
    check_axes(axes, fixed, path)
    if "full_shared" in fixed:
        raise FastalError(f"{path}: full_shared: a sweep trains and shares the references itself; drop it")
    base_values: dict[str, Any] = {}
    if base is not None:
        base_path = path.parent / base
        load_config(base_path)  # its own errors name the base file
        # A base's full_shared (a single run's) gives way to the sweep's own references.
        base_values = {k: v for k, v in read_toml(base_path).items() if k != "full_shared"}
    cfg = merge_config(base_values, fixed, str(path))
    config = to_dict(replace(cfg, **{k: str(Path(v).absolute()) for k in PATH_KEYS if (v := getattr(cfg, k))}))
    sweep = Sweep(config, axes, str(path), check_share(data.get(SHARE, False), path))
    check_runs(sweep)
    return sweep


def check_share(value: Any, path: str | Path) -> bool:
    """``share_first_cycle``'s value, FastalError naming ``path`` unless it is true or false."""
    if not isinstance(value, bool):
        raise FastalError(f"{path}: {SHARE} = {value!r}: expected true or false")
    return value


def check_axes(axes: Any, fixed: dict[str, Any], path: str | Path) -> None:
    """FastalError naming ``path`` unless ``axes`` is a table of non-empty lists of distinct values,
    one per known key not also in ``fixed`` (a sweep file's [set])."""
    if not isinstance(axes, dict):
        raise FastalError(f"{path}: axes must be a table ([axes]), not {type(axes).__name__}")
    if not axes:
        raise FastalError(f"{path}: [axes] names no key to cross (e.g. seed = [0, 1])")
    known = set(RunConfig.__dataclass_fields__)
    for key, values in axes.items():
        if key not in known:
            raise FastalError(f"{path}: axes.{key}: unknown key (known: {', '.join(sorted(known))})")
        if not isinstance(values, list):
            raise FastalError(f"{path}: axes.{key} = {values!r}: expected a list of values")
        if not values:
            raise FastalError(f"{path}: axes.{key} = []: an empty axis gives no runs")
        names = [value_name(v) for v in values]
        repeated = next((v for v, n in zip(values, names) if names.count(n) > 1), None)
        if repeated is not None:
            raise FastalError(f"{path}: axes.{key} = {values!r}: {repeated!r} is there twice")
        if key in fixed:
            raise FastalError(f"{path}: {key} is both in [axes] and [set]")
    if "full_shared" in axes:
        raise FastalError(f"{path}: full_shared: a sweep trains and shares the references itself; drop it")


def kept_sweep(spec: Path) -> Sweep:
    """The sweep a sweep directory keeps in ``spec`` (sweep.json), checked as strictly as the sweep
    file it was made from: read back from disk, it may have been edited or damaged since."""
    from fastal.atomic import read_json

    kept = read_json(spec)
    # share_first_cycle: absent from the sweeps kept before it existed, which did not share
    if not isinstance(kept, dict) or sorted(k for k in kept if k != SHARE) != ["axes", "config", "sweep_file"]:
        raise FastalError(f"{spec}: expected the resolved sweep fastal wrote (keys sweep_file, config, axes), "
                          f"found {sorted(kept) if isinstance(kept, dict) else type(kept).__name__}")  # fmt: skip
    if not isinstance(kept["config"], dict) or not isinstance(kept["sweep_file"], str):
        raise FastalError(f"{spec}: config must be an object and sweep_file a string")
    check_axes(kept["axes"], {}, spec)
    merge_config(kept["config"], None, f"{spec}: config")
    share = check_share(kept.get(SHARE, False), spec)
    check_runs(Sweep(kept["config"], kept["axes"], str(spec), share))  # a message names sweep.json, not the file
    return Sweep(kept["config"], kept["axes"], kept["sweep_file"], share)


def check_runs(sweep: Sweep) -> None:
    """Every run's configuration is valid (:func:`fastal.config.validate`); errors name the sweep file."""
    try:
        sweep.runs()
    except FastalError as e:
        raise FastalError(f"{sweep.source}: {str(e).removeprefix('config: ').removeprefix(f'{sweep.source}: ')}") from None


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first key (``axes.seed``, ``epochs``, ``share_first_cycle``) whose value differs between
    two sweep.json dicts."""
    if old.get(SHARE, False) != new.get(SHARE, False):
        return SHARE
    for section in ("axes", "config"):
        a, b = old.get(section, {}), new.get(section, {})
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return f"axes.{key}" if section == "axes" else key
    if list(old.get("axes", {})) != list(new.get("axes", {})):
        return "the order of [axes]"
    return None


def value_of(kept: dict[str, Any], key: str) -> Any:
    """The value of a key :func:`first_difference` names, in a sweep.json dict."""
    if key == SHARE:
        return kept.get(SHARE, False)
    section, name = ("axes", key[5:]) if key.startswith("axes.") else ("config", key)
    return kept.get(section, {}).get(name)


def open_sweep_dir(out: Path, sweep: Sweep | None) -> Sweep:
    """The sweep kept in ``out``: checked against ``sweep`` (a changed sweep file is refused), or
    ``out`` made for ``sweep`` when new. ``sweep=None`` (``--resume``): the kept one."""
    from fastal.atomic import atomic_dir, check_writable

    check_writable(out, directory=True)
    spec = out / SPEC
    if spec.is_file():
        kept_spec = kept_sweep(spec)
        if sweep is None:
            return kept_spec
        kept = kept_spec.to_json()
        key = first_difference(kept, sweep.to_json())
        if key is not None:
            have, want = value_of(kept, key), value_of(sweep.to_json(), key)
            raise FastalError(f"{out}: made by a sweep with {key} = {have!r}; {sweep.source} now gives {want!r} "
                              f"(use another --out, or restore the sweep file)")
        return sweep
    if sweep is None:
        raise FastalError(f"{out}: not a sweep directory (no {SPEC})")
    if out.exists() and any(out.iterdir()):
        raise FastalError(f"{out}: exists and is not a sweep directory (no {SPEC}); use another --out")
    with atomic_dir(out) as tmp:
        (tmp / SPEC).write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
        (tmp / RUNS).mkdir()
        (tmp / REFERENCES).mkdir()
    return sweep
