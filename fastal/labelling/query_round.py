"""One round of queries for people, and the masks they return.

`fastal select` writes a round directory (``--out DIR``)::

    queries.json   what was asked: dataset, classes, and per superpixel: image index and id,
                   global and local superpixel id, bbox [x0, y0, x1, y1) in pixels, pixels
    queries.csv    the same rows, for a spreadsheet
    overlays/<image id>.png   the image with the chosen superpixels outlined and numbered
    masks/         where the person puts <image id>.png: single-channel 8-bit class ids
                   (0..C-1, 255 = not labelled); only pixels of queried superpixels are read
    selection.parquet   the selection table (:mod:`fastal.select.selection_table`; ``class`` is -1: nobody
                   has answered yet), unless the config says ``selection_table = "none"``

With ``--format cvat`` or ``--format label-studio`` the round also holds the task for that tool
(:mod:`fastal.labelling.exports`). `fastal label import` (:func:`import_masks`) checks the masks,
or the tool's export (``--from``), and labels the round's answered superpixels as the run's next
cycle.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from fastal.atomic import atomic_dir, atomic_write_bytes, read_json
from fastal.errors import FastalError
from fastal.pool import global_to_local
from fastal.run_setup import prepare
from fastal.rundir import LABELS, RunDir, checked_config, open_run, run_record
from fastal.runlock import run_lock

COLUMNS = ("image", "image_id", "superpixel", "local", "x0", "y0", "x1", "y1", "pixels")


def query_rows(cache: Any, ds: Any, gids: np.ndarray) -> list[dict[str, Any]]:
    """One row per chosen superpixel, ordered by image then superpixel id."""
    gids = np.sort(np.asarray(gids, dtype=np.int64))
    image, local = global_to_local(np.asarray(cache.offsets), gids)
    rows = []
    for i in np.unique(image).tolist():
        sp = np.asarray(cache.local(i))  # (H, W) local ids
        for g, lid in zip(gids[image == i].tolist(), local[image == i].tolist()):
            ys, xs = np.nonzero(sp == lid)
            rows.append({"image": i, "image_id": ds.image_id(i), "superpixel": g, "local": lid,
                         "x0": int(xs.min()), "y0": int(ys.min()), "x1": int(xs.max()) + 1,
                         "y1": int(ys.max()) + 1, "pixels": int(xs.size)})  # fmt: skip
    return rows


def overlay(image: np.ndarray, sp: np.ndarray, rows: list[dict[str, Any]], first_number: int) -> np.ndarray:
    """The RGB image with each queried superpixel outlined (yellow) and numbered as in queries.csv."""
    import cv2

    out = image.copy()
    for n, r in enumerate(rows, start=first_number):
        mask = (sp == r["local"]).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
        ys, xs = np.nonzero(mask)
        cv2.putText(out, str(n), (int(xs.mean()) - 3, int(ys.mean()) + 3), cv2.FONT_HERSHEY_PLAIN, 0.7,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return out


def write_round(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]], ds: Any, cache: Any,
                table: Any = None, fmt: str = "masks", prefill: dict[int, int] | None = None) -> None:
    """The round directory, built whole in a temp sibling (nothing half-written); ``table``: the
    selection table, written as ``selection.parquet`` when given; ``fmt``: a labelling tool's
    task beside (``prefill``: its regions labelled with these classes, by superpixel)."""
    from fastal.labelling.exports import png_bytes, write_export
    from fastal.select.selection_table import write_table

    with atomic_dir(out) as tmp:
        if table is not None:
            write_table(table, tmp / "selection.parquet")
        (tmp / "queries.json").write_text(json.dumps({**meta, "queries": rows}, indent=1) + "\n")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
        (tmp / "queries.csv").write_text(buf.getvalue())
        (tmp / "overlays").mkdir()
        (tmp / "masks").mkdir()
        number = 1
        for i in sorted({r["image"] for r in rows}):
            mine = [r for r in rows if r["image"] == i]
            img = overlay(ds[i][0], np.asarray(cache.local(i)), mine, number)
            number += len(mine)
            # encoded + write_bytes, not imwrite: imwrite reports a failed write (a full disk) only
            # by returning False.
            png = png_bytes(img, f"{out}: the overlay of image {ds.image_id(i)}")
            (tmp / "overlays" / f"{ds.image_id(i)}.png").write_bytes(png)
        write_export(tmp, fmt, meta, rows, ds, cache, prefill)


def check_round(q: Any, qpath: Path, num_images: int) -> None:
    """FastalError unless ``q`` (a round's queries.json) holds a non-empty list ``queries`` of
    objects with integer ``superpixel``, ``local`` and an ``image`` index below ``num_images``."""
    rows = q.get("queries") if isinstance(q, dict) else None
    if not isinstance(rows, list) or not rows:
        raise FastalError(f"{qpath}: expected a JSON object with a non-empty list \"queries\"")
    for r in rows:
        if not isinstance(r, dict) or not all(type(r.get(k)) is int for k in ("superpixel", "image", "local")):
            raise FastalError(f"{qpath}: query {r!r} lacks an integer superpixel, image or local")
        if not 0 <= r["image"] < num_images:
            raise FastalError(f"{qpath}: query {r!r}: image {r['image']} is not in 0..{num_images - 1}")
    first: dict[int, int] = {}  # superpixel -> its first row
    for k, r in enumerate(rows, start=1):
        if first.setdefault(r["superpixel"], k) != k:
            raise FastalError(f"{qpath}: superpixel {r['superpixel']} is queried twice (rows "
                              f"{first[r['superpixel']]} and {k})")


def check_round_fits(q: dict[str, Any], qpath: Path, run_dir: Path, run_id: str, cache: Any) -> None:
    """FastalError unless the round ``q`` was selected for this run (``run_id``, when it names
    one) on these superpixels: every row's superpixel is its image's ``local`` one in ``cache``."""
    if q.get("run_id") not in (None, run_id):
        raise FastalError(f"{qpath}: the round was selected for another run ({q.get('run')}, id {q['run_id']}), "
                          f"not for {run_dir} (id {run_id})")  # fmt: skip
    if q.get("num_superpixels") not in (None, cache.num_superpixels):
        raise FastalError(f"{qpath}: the round was selected on {q['num_superpixels']} superpixels, "
                          f"the run {run_dir} has {cache.num_superpixels}")  # fmt: skip
    offsets = np.asarray(cache.offsets)
    for r in q["queries"]:
        i, lid = r["image"], r["local"]
        if not 0 <= lid < offsets[i + 1] - offsets[i] or r["superpixel"] != offsets[i] + lid:
            raise FastalError(f"{qpath}: superpixel {r['superpixel']} is not superpixel {lid} of image {i} in "
                              f"the {cache.num_superpixels} superpixels of the run {run_dir}; the round was "
                              f"selected on other superpixels")  # fmt: skip


def check_answered(answer: Any, rows: list[dict[str, Any]], masks: Path, ds: Any) -> None:
    """FastalError naming the mask when a queried superpixel was left without a labelled pixel
    (all 255): taken in, it would count as labelled, with no class, and never be asked again."""
    empty = set(np.asarray(answer.ids)[np.asarray(answer.valid) == 0].tolist())
    for number, r in enumerate(rows, start=1):
        if r["superpixel"] in empty:
            raise FastalError(f"{masks / ds.image_id(r['image'])}.png: query {number} of queries.csv (superpixel "
                              f"{r['superpixel']}) has no labelled pixel (all 255); give it its class")


def import_masks(round_dir: str | Path, run_dir: str | Path, export: str | Path | None = None) -> tuple[int, int]:
    """Label the superpixels of a `fastal select` round from the masks people put in ``round_dir/masks``,
    or from a labelling tool's ``export`` (:func:`fastal.labelling.exports.read_export`: then only
    the regions it answers, a pixel of them at least, are labelled; the others stay unlabelled).

    They become the run's next cycle; in full label mode the masks are also kept under
    ``run_dir/labels`` for training. Everything (the round against the run and its pool, every
    mask) is checked, under the run's lock, before anything is written. Returns (cycle,
    superpixels labelled).
    """
    import cv2

    from fastal.data.base import read_label
    from fastal.oracle import MaskOracle

    round_dir, run_dir = Path(round_dir), Path(run_dir)
    if round_dir.is_file():
        raise FastalError(f"{round_dir}: a file, not a round directory (give the directory that holds queries.json)")
    qpath = round_dir / "queries.json"
    q = read_json(qpath, f"is {round_dir} a round written by `fastal select`?")
    open_run(run_dir)  # a run directory, before its lock file is made in it
    with run_lock(run_dir):
        cfg, _ = checked_config(run_dir)
        setup = prepare(cfg)
        ds, cache = setup.train, setup.cache
        check_round(q, qpath, len(ds))
        if q.get("fingerprint") != ds.fingerprint():
            raise FastalError(f"{qpath}: the round was selected on other data than the run {run_dir} uses")
        check_round_fits(q, qpath, run_dir, run_record(run_dir)["run_id"], cache)
        run = RunDir(setup, run_dir)
        rows = q["queries"]
        if export is not None:
            from fastal.labelling.exports import answered_rows, read_export

            returned = read_export(Path(export), rows, ds)
            rows = answered_rows(rows, returned, cache, export)
        gids = np.array([r["superpixel"] for r in rows], dtype=np.int64)
        images = sorted({r["image"] for r in rows})
        masks = {}
        for i in images:
            path = round_dir / "masks" / f"{ds.image_id(i)}.png" if export is None else Path(export)
            if export is None and not path.exists():
                raise FastalError(f"{path}: missing (a mask is needed for every image of queries.csv)")
            m = read_label(path) if export is None else returned[i]
            if m.shape != tuple(ds.image_shape(i)):
                raise FastalError(f"{path}: mask is {m.shape[0]}x{m.shape[1]}, the image is "
                                  f"{ds.image_shape(i)[0]}x{ds.image_shape(i)[1]}")
            bad = (m >= ds.num_classes) & (m != 255)
            if bad.any():
                raise FastalError(f"{path}: value {int(m[bad][0])} is no class (0..{ds.num_classes - 1}, 255 = none)")
            masks[i] = m
        answer = MaskOracle(masks, cache, ds.num_classes, mode=cfg.labels).query(gids)
        check_answered(answer, rows, round_dir / "masks" if export is None else Path(export), ds)
        cycle = run.pool.current_cycle + 1
        try:
            run.pool.check_answer(answer, cycle)  # e.g. already labelled: refused before labels/ changes
        except FastalError as e:
            raise FastalError(f"{qpath}: {e}") from None
        run.trained_checkpoint()  # people's labels go after the cycles the run has trained
        if cfg.labels == "full":
            # Keep the returned pixels inside the queried superpixels; training reads them from labels/.
            # Written before the pool commit: a kill in between leaves masks of unlabelled superpixels,
            # which training never reads, and the import can be run again.
            for i in images:
                sp = np.asarray(cache.local(i))
                mine = [r["local"] for r in rows if r["image"] == i]
                merged = np.where(np.isin(sp, mine), masks[i], run.truth(i)).astype(np.uint8)
                _, png = cv2.imencode(".png", merged)
                atomic_write_bytes(run_dir / LABELS / f"{ds.image_id(i)}.png", png.tobytes())
        run.commit(answer, cycle)
    return cycle, int(gids.size)
