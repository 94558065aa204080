"""Label Studio: a round as tasks with pre-annotations, and Label Studio's JSON export read back.

Written (`fastal select --format label-studio`), in the round directory::

    label-studio/config.xml    the labelling interface: <BrushLabels> (and <PolygonLabels>) of the
                               run's classes, plus "unanswered" for brush regions not yet answered
    label-studio/tasks.json    one task per image; its ``predictions`` hold one ``brushlabels``
                               region per queried superpixel, region ``id`` = the superpixel's
                               global id, labelled "unanswered" or, with ``--prefill``, the model's class
    label-studio/images/<image id>.png   what ``data.image`` points at through Label Studio's
                               local-files storage (document root: the label-studio folder)

The brush regions use Label Studio's RLE (the thi.ng rle-pack stream that
label_studio_converter.brush encodes and decodes): a 32-bit count of values, a 5-bit word size
minus one, four 4-bit run-length field sizes minus one, then blocks: a flag bit (1: one value
repeated, 0: a list of values), a 2-bit field-size index, the block length minus one in that
many bits, then the value(s). The values are the RGBA bytes of the mask, row-major (painted: 255).

Read (`fastal label import ROUND --run RUN --from EXPORT.json`): Label Studio's JSON export of
those tasks: each annotation's ``brushlabels`` (RLE) and ``polygonlabels`` (points in % of the
image) results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from fastal.labelling.answers import UNANSWERED, Answers, RoundImage, colours, polygon_mask

CONFIG, TASKS, IMAGES = "label-studio/config.xml", "label-studio/tasks.json", "label-studio/images"
BRUSH, POLYGON, IMAGE = "label", "polygon", "image"  # the config's from_name / to_name
RUN_SIZES = (3, 4, 8, 16)  # bits of the four run-length fields (label_studio_converter's defaults)


def encode_rle(values: np.ndarray) -> list[int]:
    """Label Studio's RLE of a 1-D uint8 array: every run a repeat block of at most 2**16 values."""
    values = np.asarray(values, dtype=np.uint8)
    header = f"{values.size:032b}{8 - 1:05b}" + "".join(f"{s - 1:04b}" for s in RUN_SIZES)
    edges = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], edges]).tolist() if values.size else []
    ends = [*starts[1:], values.size]
    blocks = []
    for start, end in zip(starts, ends):
        value = f"{int(values[start]):08b}"
        for left in range(end - start, 0, -(2**16)):
            n = min(left, 2**16)
            field = next(k for k, s in enumerate(RUN_SIZES) if n - 1 < 2**s)
            blocks.append(f"1{field:02b}{n - 1:0{RUN_SIZES[field]}b}{value}")
    bits = header + "".join(blocks)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def decode_rle(rle: Sequence[int]) -> np.ndarray | None:
    """The values of Label Studio's RLE (uint8 for word sizes up to 8), or None when the stream
    ends before its count of values."""
    data = np.asarray(rle, dtype=np.int64)
    if data.ndim != 1 or ((data < 0) | (data > 255)).any():
        return None
    bits = (np.unpackbits(data.astype(np.uint8)) + ord("0")).tobytes().decode()
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise EOFError
        pos += n
        return int(bits[pos - n:pos], 2) if n else 0

    try:
        num, word = read(32), read(5) + 1
        sizes = [read(4) + 1 for _ in range(4)]
        out = np.zeros(num, dtype=np.uint8 if word <= 8 else np.uint32)
        i = 0
        while i < num:
            repeat = read(1)
            j = min(num, i + 1 + read(sizes[read(2)]))
            if repeat:
                out[i:j] = read(word)
            else:
                out[i:j] = [read(word) for _ in range(j - i)]
            i = j
    except EOFError:
        return None
    return out


def brush_rle(mask: np.ndarray) -> list[int]:
    """The RLE of a (H, W) bool mask as Label Studio's brush stores it (RGBA, 255 where painted)."""
    return encode_rle(np.repeat(np.asarray(mask, dtype=np.uint8).ravel() * 255, 4))


def labelling_config(classes: Sequence[str]) -> str:
    """The labelling interface: the image, brush labels (and "unanswered"), polygon labels."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE, value="$image", zoom="true")
    brush = ET.SubElement(view, "BrushLabels", name=BRUSH, toName=IMAGE)
    polygon = ET.SubElement(view, "PolygonLabels", name=POLYGON, toName=IMAGE)
    for name, colour in colours(classes).items():
        ET.SubElement(brush, "Label", value=name, background=colour)
        if name != UNANSWERED:
            ET.SubElement(polygon, "Label", value=name, background=colour)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def tasks(meta: dict[str, Any], rows: Sequence[dict[str, Any]], images: Sequence[RoundImage], locals_of: Any,
          prefill: dict[int, int] | None) -> list[dict[str, Any]]:
    """One task per image with the queried superpixels as predicted brush regions."""
    out = []
    for im in images:
        sp = locals_of(im.index)
        result = []
        for r in (r for r in rows if r["image"] == im.index):
            label = UNANSWERED if prefill is None else meta["classes"][prefill[r["superpixel"]]]
            result.append({"id": str(r["superpixel"]), "type": "brushlabels", "from_name": BRUSH, "to_name": IMAGE,
                           "original_width": im.width, "original_height": im.height, "image_rotation": 0,
                           "value": {"format": "rle", "rle": brush_rle(sp == r["local"]), "brushlabels": [label]}})  # fmt: skip
        out.append({"data": {IMAGE: f"/data/local-files/?d=images/{im.file_name}", "fastal_image": im.image_id},
                    "predictions": [{"model_version": f"fastal {meta['strategy']}", "result": result}]})  # fmt: skip
    return out


def write_tasks(out: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]], images: Sequence[RoundImage],
                locals_of: Any, image_png: Any, prefill: dict[int, int] | None) -> None:
    """``out/label-studio/`` (see the module's docstring)."""
    (out / IMAGES).mkdir(parents=True)
    (out / CONFIG).write_text(labelling_config(meta["classes"]))
    (out / TASKS).write_text(json.dumps(tasks(meta, rows, images, locals_of, prefill)) + "\n")
    for im in images:
        (out / IMAGES / im.file_name).write_bytes(image_png(im.index))


# ---- reading Label Studio's export -----------------------------------------------------------------
def read_export(data: bytes, where: str, answers: Answers) -> None:
    """Paint the brush and polygon results of Label Studio's JSON export (a list of tasks)."""
    try:
        exported = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise answers.fail(where, f"not JSON ({e})") from None
    if not isinstance(exported, list) or not all(isinstance(t, dict) for t in exported):
        raise answers.fail(where, "expected Label Studio's JSON export: a list of tasks")
    for n, task in enumerate(exported):
        data_ = task.get("data") or {}
        name = data_.get("fastal_image") or str(data_.get(IMAGE, "")).rsplit("=", 1)[-1]
        im = answers.image(name, f"{where}: task {task.get('id', n + 1)}")
        for a in task.get("annotations") or []:
            if a.get("was_cancelled"):
                continue
            for k, result in enumerate(a.get("result") or []):
                at = f"{where}: task {task.get('id', n + 1)}, annotation {a.get('id', '?')}, result {k + 1}"
                _paint_result(result, im, answers, at)


def _paint_result(result: dict[str, Any], im: RoundImage, answers: Answers, at: str) -> None:
    kind, value = result.get("type"), result.get("value") or {}
    if kind not in ("brushlabels", "polygonlabels"):
        raise answers.fail(at, f"fastal reads brushlabels and polygonlabels results, not {kind!r}")
    names = value.get(kind) or []
    if len(names) != 1:
        raise answers.fail(at, f"{kind} {names!r}: one label per region")
    cls = answers.label(names[0], at)
    if cls is None:
        return
    size = (result.get("original_height"), result.get("original_width"))
    if None not in size:
        answers.check_size(im, *size, at)
    if kind == "brushlabels":
        values = decode_rle(value.get("rle") or [])
        if values is None or values.size != im.height * im.width * 4:
            got = "a truncated or unreadable RLE" if values is None else f"{values.size} RLE values"
            raise answers.fail(at, f"{got}; the {im.height}x{im.width} image's RGBA mask has {im.height * im.width * 4}")
        mask = values.reshape(im.height, im.width, 4)[..., 3] > 0
    else:
        try:
            pts = np.array(value.get("points"), dtype=np.float64) / 100 * [im.width, im.height]
        except (TypeError, ValueError):
            raise answers.fail(at, f"points {value.get('points')!r} are not [[x%, y%], ...]") from None
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise answers.fail(at, "a polygon needs at least 3 [x%, y%] points")
        mask = polygon_mask(pts, im.height, im.width)
    rid = str(result.get("id", ""))
    if rid.isdigit():  # the id fastal gave the region (Label Studio gives new regions random letters)
        answers.region(im, rid, at)
    answers.paint(im, mask, cls, at)
