"""The labelling tools' files of a round, by format: written beside the round's own files by
`fastal select --format`, read back by `fastal label import --from`.

Formats: ``masks`` (the round's masks/ folder only), ``cvat`` (:mod:`fastal.labelling.cvat`),
``label-studio`` (:mod:`fastal.labelling.label_studio`). An export given to the import is
recognised by what it holds: annotations.xml (CVAT for images 1.1), labelmap.txt (CVAT's
Segmentation mask 1.1), a .json file (Label Studio's JSON export).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastal.errors import FastalError
from fastal.labelling import cvat, label_studio
from fastal.labelling.answers import NONE, UNANSWERED, Answers, ExportFiles, round_images

FORMATS = ("masks", "cvat", "label-studio")
WRITERS = {"cvat": cvat.write_task, "label-studio": label_studio.write_tasks}


def png_bytes(rgb: np.ndarray, what: str) -> bytes:
    """An RGB image as PNG bytes (FastalError naming ``what`` when it cannot be encoded)."""
    import cv2

    encoded, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise FastalError(f"{what}: could not encode the image as PNG")
    return png.tobytes()


def check_format(fmt: str, prefill: bool) -> None:
    """`fastal select`'s --format and --prefill, checked before anything is computed."""
    if fmt not in FORMATS:
        raise FastalError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if prefill and fmt == "masks":
        raise FastalError("--prefill: pre-filled labels go into a tool's task (--format cvat or label-studio)")


def check_classes(fmt: str, classes: Sequence[str]) -> None:
    """A tool's labels are the class names and :data:`UNANSWERED`: no class may be called that."""
    if fmt != "masks" and UNANSWERED in classes:
        raise FastalError(f"--format {fmt}: the dataset has a class named {UNANSWERED!r}, the label fastal "
                          f"gives regions nobody has answered")  # fmt: skip


def write_export(out: Path, fmt: str, meta: dict[str, Any], rows: Sequence[dict[str, Any]], ds: Any, cache: Any,
                 prefill: dict[int, int] | None) -> None:
    """The ``fmt`` files of the round into ``out`` (the round's temp directory)."""
    if fmt == "masks":
        return
    images = round_images(rows, ds)
    image_png = lambda i: png_bytes(ds[i][0], f"image {ds.image_id(i)}")  # noqa: E731
    WRITERS[fmt](out, meta, rows, images, lambda i: np.asarray(cache.local(i)), image_png, prefill)


def read_export(path: Path, rows: Sequence[dict[str, Any]], ds: Any) -> dict[int, np.ndarray]:
    """The class masks (255 = not answered) an export paints on the round's images; every shape
    checked (label names, images, sizes, overlapping answers, RLE) before anything is returned."""
    if not path.exists():
        raise FastalError(f"--from {path}: no such file or folder")
    answers = Answers(path, round_images(rows, ds), ds.classes)
    files = ExportFiles(path)
    xml, labelmap = files.find("annotations.xml"), files.find("labelmap.txt")
    json_files = [n for n in files.names() if n.endswith(".json")]
    if xml:
        for name in xml:
            cvat.read_annotations(files.read(name), name, answers)
    elif labelmap:
        cvat.read_segmentation_mask(files, answers)
    elif path.suffix == ".xml":
        cvat.read_annotations(files.read(path.name), path.name, answers)
    elif len(json_files) == 1:
        label_studio.read_export(files.read(json_files[0]), json_files[0], answers)
    else:
        raise FastalError(f"--from {path}: not an export fastal reads (CVAT for images 1.1 annotations.xml, "
                          f"Segmentation mask 1.1 labelmap.txt + SegmentationClass/, Label Studio JSON)")  # fmt: skip
    return answers.masks


def answered_rows(rows: Sequence[dict[str, Any]], masks: dict[int, np.ndarray], cache: Any,
                  export: str | Path) -> list[dict[str, Any]]:
    """The query rows whose region ``masks`` paint (a pixel at least); FastalError when none is."""
    answered = [r for r in rows if r["image"] in masks
                and (masks[r["image"]][np.asarray(cache.local(r["image"])) == r["local"]] != NONE).any()]  # fmt: skip
    if not answered:
        raise FastalError(f"--from {export}: answers none of the round's {len(rows)} regions")
    return answered


def predicted_classes(checkpoint: str | Path, ds: Any, cache: Any, rows: Sequence[dict[str, Any]],
                      device: Any) -> dict[int, int]:
    """The model's class for each queried superpixel: the majority of its pixels' predictions
    (the teacher of ``checkpoint``, logits upsampled to the image as in evaluation)."""
    import torch
    import torch.nn.functional as F

    from fastal.train import Trainer, to_tensor_batch

    model = Trainer.load(checkpoint, device, num_classes=ds.num_classes).teacher.eval()
    out = {}
    with torch.inference_mode():
        for i in sorted({r["image"] for r in rows}):
            logits, _ = model(to_tensor_batch(ds[i][0], device))
            pred = F.interpolate(logits.float(), size=ds.image_shape(i), mode="bilinear", align_corners=False)
            pred = pred.argmax(1)[0].cpu().numpy()
            sp = np.asarray(cache.local(i))
            for r in (r for r in rows if r["image"] == i):
                out[r["superpixel"]] = int(np.bincount(pred[sp == r["local"]], minlength=ds.num_classes).argmax())
    return out
