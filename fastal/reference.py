"""The fully supervised reference a run's curve aims at, and its sharing between runs.

A reference does not depend on the strategy, the schedule or the superpixels: runs that differ
only in those share one through ``full_shared`` (a JSON path). The first run that needs it
trains it, under a lock, and writes it there; the others wait for the lock, check that it was
trained the way they would train it (:func:`reference_key`) and copy it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastal.atomic import atomic_write_json, read_json
from fastal.config import DATA_KEYS, REFERENCE_KEYS
from fastal.errors import FastalError
from fastal.progress import console
from fastal.run_setup import Setup
from fastal.runlock import file_lock


# The loss settings a reference written before they were run options was trained with.
FIXED_BEFORE = {"contrastive_weight": 0.1, "temperature": 0.1, "bank_from": "teacher"}


def reference_key(setup: Setup) -> dict[str, Any]:
    """Everything a fully supervised reference's training depends on (:data:`fastal.config.REFERENCE_KEYS`),
    as the prepared run has it: the data by the datasets' fingerprints, the device as resolved."""
    cfg = setup.cfg
    key: dict[str, Any] = {"train": setup.train.fingerprint(), "val": setup.val.fingerprint()}
    key.update({k: getattr(cfg, k) for k in REFERENCE_KEYS if k not in (*DATA_KEYS, "full_reference")})
    return {**key, "epochs": cfg.reference_epochs(), "device": setup.device.type}


def check_reference(path: Path, setup: Setup) -> dict[str, Any]:
    """The shared reference at ``path``, if it was trained the way ``setup``'s run would train it."""
    ref = read_json(path)
    have = ref.get("trained_with") if isinstance(ref, dict) else None
    if not isinstance(have, dict) or not isinstance(ref.get("miou"), float) or not 0 <= ref["miou"] <= 1:
        raise FastalError(f"{path}: not a fully supervised reference written by fastal run "
                          f"(no 'miou' or 'trained_with'); delete it to train it again")
    for key, want in reference_key(setup).items():
        if have.get(key, FIXED_BEFORE.get(key)) != want:
            what = (f"on other {key} data (dataset, scale, images or files differ)" if key in ("train", "val")
                    else f"with {key} = {have.get(key)!r}, this run has {want!r}")  # fmt: skip
            raise FastalError(f"{path}: this shared reference was trained {what}; full_shared serves runs "
                              f"that differ only in strategy, budgets, labels or superpixels")
    return ref


def shared_reference(shared: Path, setup: Setup, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The reference at ``shared`` (checked), or ``train()``'s, written there; one run trains it
    while the others wait on its lock and then read it."""
    with file_lock(shared):
        if shared.exists():
            ref = check_reference(shared, setup)
            console.print(f"fully supervised mIoU {ref['miou']:.4f} (shared reference {shared})")
        else:
            ref = train()
            atomic_write_json(shared, ref)
    return {**ref, "shared": str(shared)}
