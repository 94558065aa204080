"""A synthetic Cityscapes: street scenes written in Cityscapes' layout, for runs at its size.

``generate_cityscapes(out)`` writes::

    out/leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png   RGB
    out/gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelIds.png     8-bit labelIds
    out/fastal_generate.json                                                  what drew it

so that ``load_dataset("cityscapes", root=out)`` reads it like the real thing (default 2,975
train and 500 val images at 1024x2048, Cityscapes' counts). The scenes are
:func:`fastal.data.synthetic.render`'s, on their own seed stream; its 11 CamVid classes become
labelIds, each connected region of a class drawing one of several (car -> car, truck, bus, train
or caravan; building -> building or wall; ...), so that all 19 evaluated classes and some void
ones (parking, guard rail, caravan, static, dynamic, the ego vehicle's bonnet) occur. Image ``i``
of a split is a pure function of ``(seed, split, i, size)``.

A killed generation goes on where it stopped: every file is written atomically, and a rerun with
the same parameters skips the files already there (other parameters are refused).
"""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fastal.atomic import atomic_write_bytes, atomic_write_json
from fastal.data import synthetic as syn
from fastal.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX
from fastal.errors import FastalError

DEFAULT_COUNTS = {"train": 2975, "val": 500}
DEFAULT_SIZE = (1024, 2048)
# Cityscapes' cities of each split (train: 18, val: 3); images are spread over them in blocks.
CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
              "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich"),
    "val": ("frankfurt", "lindau", "munster"),
}  # fmt: skip
# Seed streams apart from the synthetic dataset's (0, 1, 2): the scenes are not its images.
STREAM = {"train": 10, "val": 11}
MANIFEST = "fastal_generate.json"
GENERATOR_VERSION = 1
EGO_VEHICLE = 1  # labelId of the car's own bonnet at the bottom of every Cityscapes frame

# Per synthetic class: (labelIds, probabilities) drawn once per connected region.
VARIANTS: dict[int, tuple[tuple[int, ...], tuple[float, ...]]] = {
    syn.SKY: ((23,), (1.0,)),
    syn.BUILDING: ((11, 12), (0.8, 0.2)),  # building, wall
    syn.POLE: ((17,), (1.0,)),
    syn.ROAD: ((7,), (1.0,)),
    syn.PAVEMENT: ((8, 22, 9), (0.75, 0.2, 0.05)),  # sidewalk, terrain, parking (void)
    syn.TREE: ((21,), (1.0,)),
    syn.SIGN: ((20, 19), (0.6, 0.4)),  # traffic sign, traffic light
    syn.FENCE: ((13, 14), (0.85, 0.15)),  # fence, guard rail (void)
    syn.CAR: ((26, 27, 28, 31, 29), (0.66, 0.12, 0.1, 0.07, 0.05)),  # car, truck, bus, train, caravan (void)
    syn.PEDESTRIAN: ((24, 25), (0.8, 0.2)),  # person, rider
    syn.BICYCLIST: ((33, 32, 25), (0.5, 0.25, 0.25)),  # bicycle, motorcycle, rider
    syn.IGNORE: ((4, 5), (0.5, 0.5)),  # static, dynamic (void)
}


def image_id(split: str, i: int, n: int) -> str:
    """``<city>_<seq>_000019`` of image ``i`` of ``n``: cities in alphabetical blocks, so that the
    loader's (sorted) order is the generation order and ``--limit N`` takes images 0..N-1."""
    cities = CITIES[split]
    per_city = -(-n // len(cities))
    return f"{cities[i // per_city]}_{i % per_city:06d}_000019"


def to_label_ids(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthetic classes -> Cityscapes labelIds, one variant drawn per connected region."""
    import cv2

    out = np.zeros(lab.shape, np.uint8)  # 0 = unlabeled, for anything no variant covers
    for cls, (ids, p) in VARIANTS.items():
        mask = (lab == cls).astype(np.uint8)
        if len(ids) == 1:
            out[mask > 0] = ids[0]
            continue
        n, comp = cv2.connectedComponents(mask, connectivity=8)
        if n < 2:
            continue
        choice = np.asarray(ids, np.uint8)[rng.choice(len(ids), size=n, p=p)]
        out[mask > 0] = choice[comp[mask > 0]]
    return out


def _ego_vehicle(image: np.ndarray, label_ids: np.ndarray, rng: np.random.Generator) -> None:
    """The bonnet: a dark curved band along the bottom, as in every Cityscapes frame (void)."""
    h, w = label_ids.shape
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    top = h * (1 - rng.uniform(0.04, 0.09) * (1 - 0.6 * x**2))  # highest in the middle
    mask = np.arange(h, dtype=np.float32)[:, None] >= top[None, :]
    label_ids[mask] = EGO_VEHICLE
    shade = np.asarray(rng.uniform(20, 45, 3), np.float32)
    image[mask] = np.clip(shade + rng.normal(0, 3, (int(mask.sum()), 3)), 0, 255).astype(np.uint8)


def draw(seed: int, split: str, i: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``i`` of ``split``: (H, W, 3) uint8 RGB and (H, W) uint8 labelIds."""
    image, lab = syn.render(seed, STREAM[split], i, height, width)
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM[split], i, 1]))
    label_ids = to_label_ids(lab, rng)
    _ego_vehicle(image, label_ids, rng)
    return image, label_ids


def paths(out: Path, split: str, i: int, n: int) -> tuple[Path, Path]:
    """(image, labelIds) paths of image ``i`` of ``n`` in ``split``."""
    key = image_id(split, i, n)
    city = key.split("_")[0]
    return (out / "leftImg8bit" / split / city / f"{key}{IMAGE_SUFFIX}.png",
            out / "gtFine" / split / city / f"{key}{LABEL_SUFFIX}.png")  # fmt: skip


def _write_png(path: Path, array: np.ndarray) -> None:
    import cv2

    # Level 1: a quarter of level 9's time for ~5 % more bytes; decoding speed is the same.
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array
        raise FastalError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def _write_one(out: Path, seed: int, split: str, i: int, n: int, size: tuple[int, int]) -> None:
    image_path, label_path = paths(out, split, i, n)
    if image_path.exists() and label_path.exists():  # written whole by an earlier, killed run
        return
    image, label_ids = draw(seed, split, i, *size)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(label_path, label_ids)  # the label first: the image's presence says the pair is whole
    _write_png(image_path, image[..., ::-1])  # cv2 writes BGR


def _single_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # one image per process already fills the cores


def _check_out(out: Path, params: dict[str, Any]) -> None:
    """``out`` must be new, empty, or an earlier generation with the same parameters."""
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if old != params:
            raise FastalError(f"{out}: holds a generation with other parameters ({manifest}); choose another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastalError(f"{out}: exists and is not an empty folder or an earlier `fastal generate`; "
                          "choose another --out")  # fmt: skip


def generate_cityscapes(
    out: str | os.PathLike,
    train: int = DEFAULT_COUNTS["train"],
    val: int = DEFAULT_COUNTS["val"],
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    workers: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write the tree (see the module docstring); returns the parameters, also in ``out/fastal_generate.json``.

    ``workers`` processes draw and encode (default: all cores); the result does not depend on it.
    """
    from fastal.progress import progress

    out = Path(out)
    h, w = size
    if min(train, val) < 1:
        raise FastalError(f"--train {train} / --val {val}: each split needs at least one image")
    if min(h, w) < 16:
        raise FastalError(f"size {h}x{w}: at least 16x16 (the scenes' objects need room)")
    if seed < 0:
        raise FastalError(f"seed {seed}: must be >= 0")
    if workers is not None and workers < 1:
        raise FastalError(f"workers {workers}: must be >= 1")
    params = {"dataset": "cityscapes", "generator": GENERATOR_VERSION, "seed": int(seed), "size": [h, w],
              "train": int(train), "val": int(val)}  # fmt: skip
    _check_out(out, params)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, params)
    counts = {"train": int(train), "val": int(val)}
    tasks = [(out, int(seed), split, i, n, (h, w)) for split, n in counts.items() for i in range(n)]
    # Both splits advance together: an unfinished tree already holds the first images of each
    # (a run with --train-images/--val-images limits can start on it).
    tasks.sort(key=lambda t: (t[3] / t[4], t[2]))
    workers = min(workers or len(os.sched_getaffinity(0)), len(tasks))
    bar = progress() if show_progress else contextlib.nullcontext()
    with bar:
        task = bar.add_task(f"cityscapes {h}x{w}", total=len(tasks)) if show_progress else None
        if workers == 1:
            results = (_write_one(*t) for t in tasks)
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("forkserver")
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_single_thread)
            results = pool.map(_write_one, *zip(*tasks), chunksize=4)
        try:
            for _ in results:
                if show_progress:
                    bar.advance(task)
        finally:
            if workers > 1:
                pool.shutdown(cancel_futures=True)
    return params
