"""People as the oracle: `fastal select` writes one round of queries, `fastal label import` reads the masks back.

A round directory (``--out DIR``)::

    queries.json   what was asked: dataset, classes, and per superpixel: image index and id,
                   global and local superpixel id, bbox [x0, y0, x1, y1) in pixels, pixels
    queries.csv    the same rows, for a spreadsheet
    overlays/<image id>.png   the image with the chosen superpixels outlined and numbered
    masks/         where the person puts <image id>.png: single-channel 8-bit class ids
                   (0..C-1, 255 = not labelled); only pixels of queried superpixels are read
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from fastal.cli import app

label_app = typer.Typer(help="Labels from people: import returned masks into a run.", no_args_is_help=True)
app.add_typer(label_app, name="label")

COLUMNS = ("image", "image_id", "superpixel", "local", "x0", "y0", "x1", "y1", "pixels")


def query_rows(cache: Any, ds: Any, gids: np.ndarray) -> list[dict[str, Any]]:
    """One row per chosen superpixel, ordered by image then superpixel id."""
    from fastal.pool import global_to_local

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


def write_round(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]], ds: Any, cache: Any) -> None:
    """The round directory, built whole in a temp sibling (nothing half-written)."""
    import cv2

    from fastal.atomic import atomic_dir
    from fastal.errors import FastalError

    with atomic_dir(out) as tmp:
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
            # imencode + write_bytes, not imwrite: imwrite reports a failed write (a full disk) only
            # by returning False.
            encoded, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if not encoded:
                raise FastalError(f"{out}: could not encode the overlay of image {ds.image_id(i)}")
            (tmp / "overlays" / f"{ds.image_id(i)}.png").write_bytes(png.tobytes())


@app.command("select")
def select_cmd(
    out: Path = typer.Option(..., "--out", help="Round directory to create (queries, overlays, masks/)."),
    budget: int = typer.Option(..., "--budget", help="Superpixels to query."),
    run: Path | None = typer.Option(None, "--run", help="Run directory: its config, pool and latest checkpoint."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Trainer checkpoint (without --run)."),
    dataset: str | None = typer.Option(None, help="Dataset (without --run)."),
    data_root: str | None = typer.Option(None, "--data-root"),
    scale: float | None = typer.Option(None),
    superpixels: int | None = typer.Option(None),
    strategy: str | None = typer.Option(None),
    engine: str | None = typer.Option(None),
    device: str | None = typer.Option(None),
    seed: int | None = typer.Option(None),
) -> None:
    """One round for people: which superpixels to label next, as JSON/CSV and outlined PNGs."""
    from fastal.config import load_config
    from fastal.errors import FastalError
    from fastal.loop import Run, open_run, prepare, score_amp
    from fastal.progress import console
    from fastal.select import score_pool, select
    from fastal.train import Trainer

    overrides = {"dataset": dataset, "data_root": data_root, "scale": scale, "superpixels": superpixels,
                 "strategy": strategy, "engine": engine, "device": device, "seed": seed}  # fmt: skip
    # Checked before the superpixel cache is built: that can take minutes.
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FastalError(f"--checkpoint {checkpoint}: file not found")
    if out.exists():
        raise FastalError(f"--out {out}: already exists")
    if run is not None:
        open_run(run)  # checks it is a run directory
        cfg = load_config(run / "config.toml", overrides)
        setup = prepare(cfg)
        r = Run(setup, run)
        if r.pool.current_cycle != len(r.results["cycles"]):
            raise FastalError(f"{run}: cycle {r.pool.current_cycle} is not trained yet; run `fastal run --resume {run}` first")
        checkpoint = checkpoint or r.ckpt(r.pool.current_cycle)
        labelled = r.pool.labelled_mask
    else:
        if checkpoint is None:
            raise FastalError("select: give --run RUN_DIR, or --checkpoint PATH with --dataset")
        cfg = load_config(None, overrides)
        setup = prepare(cfg)
        labelled = np.zeros(setup.cache.num_superpixels, dtype=bool)
    if not Path(checkpoint).is_file():
        raise FastalError(f"--checkpoint {checkpoint}: file not found")
    free = int((~labelled).sum())
    if not 1 <= budget <= free:
        raise FastalError(f"--budget {budget}: must lie in 1..{free} (unlabelled superpixels in the pool)")
    trainer = Trainer.load(checkpoint, setup.device, num_classes=setup.train.num_classes)
    images = np.unique(setup.cache.image_of(np.flatnonzero(~labelled)))
    scores = score_pool(trainer.teacher, setup.train, setup.cache, images, setup.device, amp=score_amp(cfg.amp),
                        region_entropy=cfg.region_entropy)
    sel = select(cfg.strategy, scores, trainer.bank.features(), trainer.bank.labels(), budget=budget,
                 labelled_mask=labelled, seed=cfg.seed, engine=cfg.engine, clusters=cfg.clusters)
    rows = query_rows(setup.cache, setup.train, np.asarray(sel.ids))
    meta = {"dataset": cfg.dataset, "fingerprint": setup.train.fingerprint(), "classes": list(setup.train.classes),
            "superpixels": cfg.superpixels, "strategy": cfg.strategy, "checkpoint": str(checkpoint),
            "run": None if run is None else str(run), "budget": budget}  # fmt: skip
    write_round(out, meta, rows, setup.train, setup.cache)
    console.print(f"{len(rows)} superpixels in {len({r['image'] for r in rows})} images -> {out}/queries.csv, "
                  f"{out}/overlays/; put label PNGs in {out}/masks/ and run `fastal label import {out} --run RUN_DIR`")


@label_app.command("import")
def import_cmd(
    round_dir: Path = typer.Argument(..., help="Round directory written by `fastal select`, with masks/ filled."),
    run: Path = typer.Option(..., "--run", help="Run directory whose pool receives the labels."),
) -> None:
    """Feed returned masks into a run's pool as its next cycle; `fastal run --resume RUN` then trains on them."""
    from fastal.loop import import_masks
    from fastal.progress import console

    cycle, n = import_masks(round_dir, run)
    console.print(f"cycle {cycle}: {n} superpixels labelled; continue with `fastal run --resume {run}`")
