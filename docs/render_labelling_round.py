"""The picture of docs/labelling-tools.md: what CVAT and Label Studio show of a round, rendered
from the files `fastal select --format ...` wrote (the masks decoded from CVAT's annotations.xml
and from Label Studio's brush RLE, drawn in the labels' colours over the image).

    python docs/render_labelling_round.py CVAT_ROUND LABEL_STUDIO_ROUND docs/labelling-round.png
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fastal.labelling import cvat, label_studio  # noqa: E402


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)], dtype=np.float64)


def _draw(ax, image: np.ndarray, regions: list[tuple[str, str, np.ndarray]], colours: dict[str, str], title: str) -> None:
    out = image.astype(np.float64)
    for _, label, mask in regions:
        out[mask] = 0.45 * out[mask] + 0.55 * _rgb(colours[label])
    ax.imshow(out.astype(np.uint8), interpolation="nearest")
    for rid, label, mask in regions:
        ys, xs = np.nonzero(mask)
        ax.contour(mask, levels=[0.5], colors="white", linewidths=0.6)
        ax.text(xs.mean(), ys.mean(), f"{rid}\n{label}", color="white", fontsize=6, ha="center", va="center")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def main(cvat_round: Path, ls_round: Path, out: Path) -> None:
    with zipfile.ZipFile(cvat_round / cvat.TASK) as z:
        root = ET.fromstring(z.read("annotations.xml"))
        image_el = max(root.iter("image"), key=lambda el: len(el.findall("mask")))  # the busiest image
        image = cv2.imdecode(np.frombuffer(z.read(f"images/{image_el.get('name')}"), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = image.shape[:2]
    colours = {lab.findtext("name"): lab.findtext("color") for lab in root.iter("label")}
    cvat_regions = []
    for m in image_el.iter("mask"):
        left, top, mw, mh = (int(m.get(k)) for k in ("left", "top", "width", "height"))
        full = np.zeros((h, w), dtype=bool)
        full[top:top + mh, left:left + mw] = cvat.decode_rle([int(c) for c in m.get("rle").split(",")], mh, mw)
        cvat_regions.append((m.find("attribute").text, m.get("label"), full))
    tasks = json.loads((ls_round / label_studio.TASKS).read_text())
    stem = image_el.get("name").rsplit(".", 1)[0]
    task = next((t for t in tasks if t["data"]["fastal_image"] == stem), tasks[0])
    ls_image = cv2.imread(str(ls_round / "label-studio" / task["data"]["image"].split("?d=")[1]))[..., ::-1]
    ls_regions = []
    for res in task["predictions"][0]["result"]:
        values = label_studio.decode_rle(res["value"]["rle"])
        mask = values.reshape(res["original_height"], res["original_width"], 4)[..., 3] > 0
        ls_regions.append((res["id"], res["value"]["brushlabels"][0], mask))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=150)
    _draw(axes[0], image, cvat_regions, colours,
          f"CVAT: {image_el.get('name')}, masks decoded from annotations.xml\n(--prefill: the model's classes)")
    _draw(axes[1], ls_image, ls_regions, colours,
          f"Label Studio: {task['data']['fastal_image']}, brush RLE decoded from tasks.json\n(no --prefill: \"unanswered\")")
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
