"""CVAT: a round as a task CVAT imports, and CVAT's exports of it read back.

Written (`fastal select --format cvat`), in the round directory::

    cvat/task.zip      annotations.xml ("CVAT for images 1.1") + images/<image id>.png: create the
                       task from the zip, then upload the same zip as "CVAT 1.1" annotations
    cvat/labels.json   the task's labels for CVAT's raw label editor: the run's classes and
                       "unanswered", each with the number attribute "superpixel"

One ``<mask>`` per queried superpixel: CVAT's mask RLE over the region's bounding box (``left``,
``top``, ``width``, ``height``; run lengths row-major over the box, alternating, the first one
counting background pixels, as CVAT's own cvat.py writes it), labelled "unanswered" or, with
``--prefill``, with the model's predicted class, and the superpixel's global id in the
``superpixel`` attribute.

Read (`fastal label import ROUND --run RUN --from EXPORT`): "CVAT for images 1.1"
(``annotations.xml``, alone or zipped, with masks or polygons) and "Segmentation mask 1.1"
(``labelmap.txt`` + ``SegmentationClass/<image>.png`` in the labels' colours, zipped or not).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from fastal.labelling.answers import (
    REGION_ATTRIBUTE,
    UNANSWERED,
    Answers,
    ExportFiles,
    RoundImage,
    colours,
    polygon_mask,
)

TASK, LABELS = "cvat/task.zip", "cvat/labels.json"
SHAPES = ("mask", "polygon")  # what fastal reads as an answer


def encode_rle(mask: np.ndarray) -> list[int]:
    """CVAT's mask RLE of a (h, w) bool box: run lengths row-major, background first (maybe 0)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def decode_rle(counts: Sequence[int], height: int, width: int) -> np.ndarray | None:
    """The (height, width) bool box of CVAT's RLE, or None when the counts do not fill it."""
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != height * width:
        return None
    return np.repeat(np.arange(counts.size) % 2 == 1, counts).reshape(height, width)


def label_specs(classes: Sequence[str], num_superpixels: int) -> list[dict[str, Any]]:
    """The labels as CVAT's raw label editor takes them (and as the XML's meta declares them)."""
    attribute = {"name": REGION_ATTRIBUTE, "mutable": False, "input_type": "number", "default_value": "0",
                 "values": ["0", str(num_superpixels - 1), "1"]}  # fmt: skip
    return [{"name": n, "color": c, "type": "mask", "attributes": [attribute]}
            for n, c in colours(classes).items()]  # fmt: skip


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrib: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        el.text = str(text)
    return el


def annotations_xml(meta: dict[str, Any], rows: Sequence[dict[str, Any]], images: Sequence[RoundImage],
                    locals_of: Any, prefill: dict[int, int] | None) -> bytes:
    """"CVAT for images 1.1" of the round: one <image> per image, one <mask> per query row."""
    classes = meta["classes"]
    root = ET.Element("annotations")
    _sub(root, "version", "1.1")
    task = _sub(_sub(root, "meta"), "task")
    for tag, text in [("id", 0), ("name", f"fastal round: {meta.get('run') or meta['dataset']}"),
                      ("size", len(images)), ("mode", "annotation"), ("overlap", 0),
                      ("start_frame", 0), ("stop_frame", len(images) - 1)]:  # fmt: skip
        _sub(task, tag, text)
    labels = _sub(task, "labels")
    for spec in label_specs(classes, meta["num_superpixels"]):
        label = _sub(labels, "label")
        for key in ("name", "color", "type"):
            _sub(label, key, spec[key])
        attrs = _sub(label, "attributes")
        for a in spec["attributes"]:
            attr = _sub(attrs, "attribute")
            for key in ("name", "mutable", "input_type", "default_value"):
                _sub(attr, key, a[key])
            _sub(attr, "values", "\n".join(a["values"]))
    for frame, im in enumerate(images):
        el = _sub(root, "image", id=frame, name=im.file_name, width=im.width, height=im.height)
        sp = locals_of(im.index)
        for r in (r for r in rows if r["image"] == im.index):
            box = sp[r["y0"]:r["y1"], r["x0"]:r["x1"]] == r["local"]
            label = UNANSWERED if prefill is None else classes[prefill[r["superpixel"]]]
            rle = ", ".join(map(str, encode_rle(box)))  # ", " as CVAT writes it
            mask = _sub(el, "mask", label=label, source="manual" if prefill is None else "auto", occluded=0,
                        rle=rle, left=r["x0"], top=r["y0"], width=r["x1"] - r["x0"], height=r["y1"] - r["y0"],
                        z_order=0)  # fmt: skip
            _sub(mask, "attribute", r["superpixel"], name=REGION_ATTRIBUTE)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def write_task(out: Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]], images: Sequence[RoundImage],
               locals_of: Any, image_png: Any, prefill: dict[int, int] | None) -> None:
    """``out/cvat/task.zip`` and ``out/cvat/labels.json`` (see the module's docstring)."""
    (out / "cvat").mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("annotations.xml", annotations_xml(meta, rows, images, locals_of, prefill))
        for im in images:
            z.writestr(f"images/{im.file_name}", image_png(im.index))
    (out / TASK).write_bytes(buf.getvalue())
    specs = label_specs(meta["classes"], meta["num_superpixels"])
    (out / LABELS).write_text(json.dumps(specs, indent=1) + "\n")


# ---- reading CVAT's exports ------------------------------------------------------------------------
def read_annotations(data: bytes, where: str, answers: Answers) -> None:
    """Paint the masks and polygons of a "CVAT for images 1.1" annotations.xml."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise answers.fail(where, f"not XML ({e})") from None
    if root.tag != "annotations":
        raise answers.fail(where, f"root element <{root.tag}>, expected CVAT's <annotations>")
    if root.find("track") is not None:
        raise answers.fail(where, "holds <track>s (CVAT for video); export the task as \"CVAT for images 1.1\"")
    for image in root.iter("image"):
        name = image.get("name", "")
        im = answers.image(name, where)
        answers.check_size(im, _int(image, "height", answers, where), _int(image, "width", answers, where),
                           f"{where}: <image name={name!r}>")  # fmt: skip
        for n, shape in enumerate(image):
            at = f"{where}: image {name}, shape {n + 1} <{shape.tag}>"
            if shape.tag not in SHAPES:
                raise answers.fail(at, f"fastal reads answers drawn as {' or '.join(SHAPES)}, not <{shape.tag}>")
            cls = answers.label(shape.get("label"), at)
            if cls is None:
                continue
            for a in shape.iter("attribute"):
                if a.get("name") == REGION_ATTRIBUTE and a.text:
                    answers.region(im, a.text, at)
            mask = _mask(shape, im, answers, at) if shape.tag == "mask" else _polygon(shape, im, answers, at)
            answers.paint(im, mask, cls, at)


def _int(el: ET.Element, key: str, answers: Answers, where: str) -> int:
    try:
        return int(el.get(key, ""))
    except ValueError:
        raise answers.fail(where, f"{key}={el.get(key)!r} is not an integer") from None


def _mask(shape: ET.Element, im: RoundImage, answers: Answers, where: str) -> np.ndarray:
    left, top, w, h = (_int(shape, k, answers, where) for k in ("left", "top", "width", "height"))
    if left < 0 or top < 0 or left + w > im.width or top + h > im.height:
        raise answers.fail(where, f"the mask's box (left {left}, top {top}, {w}x{h}) leaves the "
                                  f"{im.height}x{im.width} image {im.image_id}")  # fmt: skip
    try:
        counts = [int(c) for c in shape.get("rle", "").split(",")]
    except ValueError:
        raise answers.fail(where, "rle is not a list of integers") from None
    box = decode_rle(counts, h, w)
    if box is None:
        raise answers.fail(where, f"rle counts {sum(counts)} pixels, its {w}x{h} box has {w * h} "
                                  f"(truncated or not CVAT's mask RLE)")  # fmt: skip
    out = np.zeros((im.height, im.width), dtype=bool)
    out[top:top + h, left:left + w] = box
    return out


def _polygon(shape: ET.Element, im: RoundImage, answers: Answers, where: str) -> np.ndarray:
    try:
        pts = np.array([[float(v) for v in p.split(",")] for p in shape.get("points", "").split(";")])
    except ValueError:
        raise answers.fail(where, f"points {shape.get('points')!r} are not x,y;x,y;...") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise answers.fail(where, "a polygon needs at least 3 x,y points")
    return polygon_mask(pts, im.height, im.width)


def read_segmentation_mask(files: ExportFiles, answers: Answers) -> None:
    """Paint a "Segmentation mask 1.1" export: labelmap.txt + SegmentationClass/*.png."""
    import cv2

    labelmap = files.find("labelmap.txt")[0]
    colour_of: dict[tuple[int, int, int], str] = {}
    for line in files.read(labelmap).decode("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, rest = line.partition(":")
            rgb = rest.split(":")[0]
            try:
                colour_of[tuple(int(v) for v in rgb.split(","))] = name  # type: ignore[index]
            except ValueError:
                raise answers.fail(labelmap, f"line {line!r}: expected name:r,g,b:parts:actions") from None
    pngs = [n for n in files.names() if PurePosixPath(n).parent.name == "SegmentationClass" and n.endswith(".png")]
    if not pngs:
        raise answers.fail(labelmap, "no SegmentationClass/*.png beside it")
    for name in pngs:
        im = answers.image(name, name)
        bgr = cv2.imdecode(np.frombuffer(files.read(name), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise answers.fail(name, "not a readable PNG")
        answers.check_size(im, *bgr.shape[:2], name)
        rgb = bgr[..., ::-1].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        for c in np.unique(code).tolist():
            colour = (c >> 16, (c >> 8) & 255, c & 255)
            label = colour_of.get(colour, "background" if colour == (0, 0, 0) else None)
            if label is None:
                raise answers.fail(name, f"colour {colour} is in no line of {labelmap}")
            if label == "background" and label not in answers.classes:
                continue  # nobody painted here
            cls = answers.label(label, name)
            if cls is not None:
                answers.paint(im, code == c, cls, name)

