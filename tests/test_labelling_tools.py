"""CVAT and Label Studio: what `fastal select --format` writes, parsed by the tools' own
libraries (Datumaro, label_studio_converter); people's answers simulated from the ground truth,
written in each tool's export format by those libraries (or by hand after the format's
documentation), imported by `fastal label import --from`: the labels of the built-in oracle.
Bad exports: one line, exit 2, the run byte for byte as it was."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import cv2
import numpy as np
import pytest
from test_run_guard import cli, one_line, snapshot

from fastal.data import load_dataset
from fastal.data.superpixels import build_cache
from fastal.labelling import cvat, label_studio
from fastal.labelling.answers import UNANSWERED, colours
from fastal.oracle import SimulatedOracle
from fastal.pool import RegionPool

brush = pytest.importorskip("label_studio_converter.brush")


@dataclass
class World:
    base: Path
    run: Path
    ds: Any
    cache: Any
    rounds: dict[str, Path]

    def rows(self, fmt: str) -> list[dict]:
        return json.loads((self.rounds[fmt] / "queries.json").read_text())["queries"]

    def region(self, r: dict) -> np.ndarray:
        return np.asarray(self.cache.local(r["image"])) == r["local"]

    def fresh_run(self, name: str) -> Path:
        out = self.base / name
        shutil.copytree(self.run, out)
        return out


@pytest.fixture(scope="module")
def world(reference: Path, tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("labeltools")
    run_dir = base / "run"
    shutil.copytree(reference, run_dir)
    ds = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    cache = build_cache(ds, superpixels=12, cache_dir=tiny["cache_dir"], show_progress=False)
    from fastal.cli import main

    rounds = {}
    for fmt, extra in (("cvat", ["--prefill"]), ("label-studio", [])):
        rounds[fmt] = base / f"round-{fmt}"
        with pytest.raises(SystemExit) as e:
            main(["select", "--run", str(run_dir), "--budget", "4", "--out", str(rounds[fmt]), "--format", fmt, *extra])
        assert e.value.code == 0
    return World(base, run_dir, ds, cache, rounds)


def person(world: World, rows: list[dict]) -> list[tuple[dict, str, np.ndarray]]:
    """A person's answers from the ground truth: per queried region, one (row, class name, mask) per
    class present in it (the region painted pixel by pixel as the truth has it)."""
    out = []
    for r in rows:
        truth = world.ds[r["image"]][1]
        region = world.region(r)
        for c in np.unique(truth[region]).tolist():
            if c != 255:
                out.append((r, world.ds.classes[c], region & (truth == c)))
    return out


def drawn_as_polygon(answers: list[tuple[dict, str, np.ndarray]], r: dict) -> tuple[list, str, np.ndarray]:
    """``answers`` without region ``r``'s, and the polygon a person draws for ``r`` instead: around
    the largest part of its dominant class (so dominant label mode gives it the oracle's class)."""
    mine = [a for a in answers if a[0] is r]
    _, c, m = max(mine, key=lambda a: a[2].sum())  # the first of the largest: the lowest class, as the oracle's
    contours = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
    return [a for a in answers if a[0] is not r], c, max(contours, key=len)[:, 0, :].astype(np.float64)


def expected(world: World, rows: list[dict], left_out: set[int]) -> dict[int, int]:
    """The built-in oracle's classes for the regions the person answered (a region that is all
    ignore gets no answer: nothing to paint)."""
    gids = np.array([r["superpixel"] for r in rows if r["superpixel"] not in left_out], dtype=np.int64)
    answer = SimulatedOracle(world.ds, world.cache, mode="dominant").query(gids)
    return {int(g): int(c) for g, c in zip(answer.ids, answer.classes) if c >= 0}


def imported(world: World, fmt: str, export: Path, capsys, name: str) -> tuple[dict[int, int], RegionPool]:
    run_dir = world.fresh_run(name)
    before = RegionPool.load(run_dir / "pool.npz")
    code, err = cli(["label", "import", world.rounds[fmt], "--run", run_dir, "--from", export], capsys)
    assert code == 0, err
    after = RegionPool.load(run_dir / "pool.npz")
    new = np.flatnonzero(after.labelled_mask & ~before.labelled_mask)
    return {int(g): int(after.classes[g]) for g in new}, after


# ---- what fastal writes, read by the tools' libraries --------------------------------------------------
def test_cvat_rle_by_hand() -> None:
    # CVAT's mask RLE: run lengths over the box row-major, background first (0 when the box starts set).
    assert cvat.encode_rle(np.array([[0, 1, 1], [1, 0, 0]], bool)) == [1, 3, 2]
    assert cvat.encode_rle(np.array([[1, 1], [0, 1]], bool)) == [0, 2, 1, 1]
    np.testing.assert_array_equal(cvat.decode_rle([0, 2, 1, 1], 2, 2), [[1, 1], [0, 1]])
    assert cvat.decode_rle([0, 2, 1], 2, 2) is None  # truncated


def test_cvat_task_read_by_datumaro(world: World, tmp_path: Path) -> None:
    dm = pytest.importorskip("datumaro")
    rows = world.rows("cvat")
    with zipfile.ZipFile(world.rounds["cvat"] / cvat.TASK) as z:
        z.extractall(tmp_path)
    dataset = dm.Dataset.import_from(str(tmp_path), "cvat")
    names = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
    assert names == [*world.ds.classes, UNANSWERED]
    seen = {}
    for item in dataset:
        assert item.media.data.shape[:2] == world.ds.image_shape(0)  # the image itself is in the zip
        for a in item.annotations:
            seen[int(a.attributes["superpixel"])] = (item.id, names[a.label], a.image.astype(bool))
    assert sorted(seen) == sorted(r["superpixel"] for r in rows)
    for r in rows:
        image_id, label, mask = seen[r["superpixel"]]
        assert image_id == r["image_id"] and label in world.ds.classes  # --prefill: the model's class
        np.testing.assert_array_equal(mask, world.region(r))
    labels = json.loads((world.rounds["cvat"] / cvat.LABELS).read_text())
    assert [s["name"] for s in labels] == names and labels[0]["attributes"][0]["name"] == "superpixel"


def test_label_studio_tasks_decoded_by_converter(world: World) -> None:
    rows = {r["superpixel"]: r for r in world.rows("label-studio")}
    folder = world.rounds["label-studio"] / "label-studio"
    tasks = json.loads((folder / "tasks.json").read_text())
    regions = []
    for task in tasks:
        assert (folder / task["data"]["image"].split("?d=")[1]).is_file()
        for res in task["predictions"][0]["result"]:
            r = rows[int(res["id"])]
            assert res["value"]["brushlabels"] == [UNANSWERED] and task["data"]["fastal_image"] == r["image_id"]
            h, w = res["original_height"], res["original_width"]
            alpha = brush.decode_rle(res["value"]["rle"]).reshape(h, w, 4)[..., 3]
            np.testing.assert_array_equal(alpha, world.region(r) * 255)
            regions.append(int(res["id"]))
    assert sorted(regions) == sorted(rows)
    view = ET.fromstring((folder / "config.xml").read_text())
    brush_labels = [lab.get("value") for lab in view.find("BrushLabels")]
    assert brush_labels == [*world.ds.classes, UNANSWERED]
    assert view.find("BrushLabels").get("toName") == view.find("Image").get("name") == "image"


@pytest.mark.parametrize("shape", [(3, 5), (300, 300), (1, 70000)])
def test_label_studio_rle_both_ways_with_the_converter(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    mask = np.zeros(shape, dtype=np.uint8)
    mask[: shape[0] // 2 + 1, rng.integers(0, shape[1]):] = 255  # long runs (> 2**16 values at 300x300)
    mask.ravel()[rng.integers(0, mask.size, 5)] ^= 255  # and single values
    values = np.repeat(mask.ravel(), 4)
    np.testing.assert_array_equal(brush.decode_rle(label_studio.brush_rle(mask > 0)), values)
    np.testing.assert_array_equal(label_studio.decode_rle(brush.encode_rle(values)), values)
    assert label_studio.decode_rle(brush.encode_rle(values)[:-2]) is None


# ---- round trips: a person's answers in each tool's export format ------------------------------------
def test_cvat_xml_written_by_datumaro_gives_the_oracles_labels(world: World, tmp_path: Path, capsys) -> None:
    dm = pytest.importorskip("datumaro")
    rows = world.rows("cvat")
    skip, polygon_of = rows[0], rows[1]  # one left "unanswered" (it stays unlabelled), one drawn as a polygon
    names = [*world.ds.classes, UNANSWERED]
    answers, polygon_class, polygon = drawn_as_polygon(person(world, rows), polygon_of)
    items = []
    for image_id in sorted({r["image_id"] for r in rows}):
        i = next(r["image"] for r in rows if r["image_id"] == image_id)
        anns = [dm.Mask(image=m.astype(np.uint8), label=names.index(c), attributes={"superpixel": r["superpixel"]})
                for r, c, m in answers if r["image_id"] == image_id and r is not skip]  # fmt: skip
        if polygon_of["image_id"] == image_id:
            anns.append(dm.Polygon(points=polygon.ravel().tolist(), label=names.index(polygon_class)))
        if skip["image_id"] == image_id:
            anns.append(dm.Mask(image=world.region(skip).astype(np.uint8), label=names.index(UNANSWERED),
                                attributes={"superpixel": skip["superpixel"]}))  # fmt: skip
        items.append(dm.DatasetItem(id=image_id, media=dm.Image.from_numpy(world.ds[i][0]), annotations=anns))
    dataset = dm.Dataset.from_iterable(items, categories=names)
    dataset.export(str(tmp_path / "export"), "cvat", save_media=True, allow_undeclared_attrs=True)
    (xml,) = (tmp_path / "export").glob("*.xml")
    xml.rename(xml.with_name("annotations.xml"))  # CVAT's name for it in an export zip
    assert "<polygon " in (tmp_path / "export" / "annotations.xml").read_text()
    got, _ = imported(world, "cvat", tmp_path / "export", capsys, "run-cvat-xml")
    assert len(got) >= 2 and polygon_of["superpixel"] in got and got == expected(world, rows, {skip["superpixel"]})


def test_cvat_segmentation_mask_by_datumaro_gives_the_oracles_labels(world: World, tmp_path: Path, capsys) -> None:
    dm = pytest.importorskip("datumaro")
    rows = world.rows("cvat")
    skip = rows[-1]  # left out: stays unlabelled
    items = []
    for image_id in sorted({r["image_id"] for r in rows}):
        i = next(r["image"] for r in rows if r["image_id"] == image_id)
        anns = [dm.Mask(image=m.astype(np.uint8), label=world.ds.classes.index(c))
                for r, c, m in person(world, rows) if r["image_id"] == image_id and r is not skip]  # fmt: skip
        items.append(dm.DatasetItem(id=image_id, media=dm.Image.from_numpy(world.ds[i][0]), annotations=anns))
    dataset = dm.Dataset.from_iterable(items, categories=list(world.ds.classes))
    # Coloured as CVAT colours its labels (its labelmap.txt always names the colours).
    rgb = {n: tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for n, c in colours(world.ds.classes).items()}
    label_map = {"background": ((0, 0, 0), [], []), **{n: (rgb[n], [], []) for n in world.ds.classes}}
    dataset.export(str(tmp_path / "seg"), "voc_segmentation", label_map=label_map, save_media=False)
    assert (tmp_path / "seg" / "labelmap.txt").is_file()
    export = shutil.make_archive(str(tmp_path / "segmentation-mask"), "zip", tmp_path / "seg")
    got, _ = imported(world, "cvat", Path(export), capsys, "run-cvat-seg")
    assert len(got) >= 2 and got == expected(world, rows, {skip["superpixel"]})


def label_studio_export(world: World, rows: list[dict], polygon_of: dict | None = None,
                        unanswered: dict | None = None, repaint: tuple[dict, str] | None = None) -> list[dict]:
    """Label Studio's JSON export (a list of tasks with ``annotations``, as its docs describe it):
    brush results RLE-encoded by label_studio_converter; ``polygon_of`` drawn as a polygon
    (:func:`drawn_as_polygon`); ``repaint`` (row, class): that region painted whole in that class."""
    tasks = json.loads((world.rounds["label-studio"] / label_studio.TASKS).read_text())
    answers = person(world, rows)
    if repaint is not None:
        answers = [a for a in answers if a[0] is not repaint[0]] + [(repaint[0], repaint[1], world.region(repaint[0]))]
    if polygon_of is not None:
        answers, polygon_class, polygon = drawn_as_polygon(answers, polygon_of)
        answers.append((polygon_of, polygon_class, polygon))
    for n, task in enumerate(tasks, start=1):
        h, w = world.ds.image_shape(0)
        result = []
        for r, c, m in answers:
            if r["image_id"] != task["data"]["fastal_image"] or r is unanswered:
                continue
            if r is polygon_of:  # m: the polygon's (x, y) points
                pts = (m / [w, h] * 100).tolist()
                result.append({"id": f"p{r['superpixel']}x{c}", "type": "polygonlabels", "from_name": "polygon",
                               "to_name": "image", "original_width": w, "original_height": h,
                               "value": {"points": pts, "polygonlabels": [c]}})  # fmt: skip
                continue
            result.append({"id": f"{r['superpixel']}" if len(result) % 2 else f"LS{len(result)}",
                           "type": "brushlabels", "from_name": "label", "to_name": "image", "origin": "manual",
                           "original_width": w, "original_height": h, "image_rotation": 0,
                           "value": {"format": "rle", "rle": brush.mask2rle(m.astype(np.uint8) * 255),
                                     "brushlabels": [c]}})  # fmt: skip
        task.update({"id": n, "annotations": [{"id": 100 + n, "was_cancelled": False, "result": result}]})
    return tasks


def test_label_studio_export_gives_the_oracles_labels(world: World, tmp_path: Path, capsys) -> None:
    rows = world.rows("label-studio")
    polygon_of, unanswered = rows[1], rows[2]
    export = tmp_path / "project-1-at-2026-12-07.json"
    tasks = label_studio_export(world, rows, polygon_of, unanswered)
    # A task whose image was uploaded to Label Studio (which prefixes the file name) rather than made by fastal.
    tasks[0]["data"] = {"image": f"/data/upload/1/8f3a2b1c-{tasks[0]['data']['fastal_image']}.png"}
    export.write_text(json.dumps(tasks))
    got, _ = imported(world, "label-studio", export, capsys, "run-ls")
    assert len(got) >= 2 and polygon_of["superpixel"] in got
    assert got == expected(world, rows, {unanswered["superpixel"]})


# ---- bad exports ------------------------------------------------------------------------------------
def _cvat_xml(world: World) -> str:
    with zipfile.ZipFile(world.rounds["cvat"] / cvat.TASK) as z:
        return z.read("annotations.xml").decode()


def _ls(world: World) -> list[dict]:
    return label_studio_export(world, world.rows("label-studio"))


def _first_result(tasks: list[dict], change) -> str:
    """The export with its first brush result's value changed."""
    first = next(res for t in tasks for res in t["annotations"][0]["result"] if res["type"] == "brushlabels")
    first["value"] = change(first["value"])
    return json.dumps(tasks)


def _first_mask(text: str, change) -> str:
    return re.sub(r"<mask [^>]*>", lambda m: change(m.group(0)), text, count=1)


def _overlap(text: str) -> str:
    m = re.search(r"(<mask [^>]*>.*?</mask>)", text, re.DOTALL)
    label = re.search(r'label="([^"]*)"', m.group(1)).group(1)
    return text.replace(m.group(1), m.group(1) + m.group(1).replace(f'label="{label}"', 'label="sky"' if label != "sky"
                                                                     else 'label="road"'), 1)  # fmt: skip


BAD = {
    "cvat-label": ("xml", lambda w: _first_mask(_cvat_xml(w), lambda s: re.sub(r'label="[^"]*"', 'label="cat"', s)),
                   "label 'cat' is none of the run's classes"),
    "cvat-image": ("xml", lambda w: re.sub(r'name="train_\d+\.png"', 'name="train_000099.png"', _cvat_xml(w), count=1),
                   "image 'train_000099.png' is not in the round"),
    "cvat-size": ("xml", lambda w: re.sub(r'width="48"', 'width="64"', _cvat_xml(w), count=1),
                  "the mask is 32x64, image train_"),
    "cvat-overlap": ("xml", lambda w: _overlap(_cvat_xml(w)), "one answer per region"),
    "cvat-rle": ("xml", lambda w: _first_mask(_cvat_xml(w), lambda s: re.sub(r'rle="([^"]*), \d+"', r'rle="\1"', s)),
                 "truncated"),
    "ls-rle": ("json", lambda w: _first_result(_ls(w), lambda v: {**v, "rle": v["rle"][:-3]}),
               "truncated or unreadable RLE"),
    "ls-label": ("json", lambda w: _first_result(_ls(w), lambda v: {**v, "brushlabels": ["Sky"]}),
                 "label 'Sky' is none of the run's classes"),
    "ls-image": ("json", lambda w: re.sub(r'"fastal_image": "train_\d+"', '"fastal_image": "elsewhere"',
                                          json.dumps(_ls(w)), count=1), "image 'elsewhere' is not in the round"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_export_is_refused_in_one_line_and_the_run_untouched(world: World, tmp_path: Path, capsys,
                                                                  case: str) -> None:
    suffix, make, message = BAD[case]
    export = tmp_path / f"export.{suffix}"
    export.write_text(make(world))
    before = snapshot(world.run)
    fmt = "cvat" if case.startswith("cvat") else "label-studio"
    code, err = cli(["label", "import", world.rounds[fmt], "--run", world.run, "--from", export], capsys)
    assert code == 2 and message in one_line(err), err
    assert str(export) in one_line(err)
    assert snapshot(world.run) == before


def test_select_refuses_unknown_formats_at_once(world: World, tmp_path: Path, capsys) -> None:
    for args, message in ((["--format", "coco"], "--format coco: expected one of masks, cvat, label-studio"),
                          (["--prefill"], "--prefill: pre-filled labels go into a tool's task")):  # fmt: skip
        code, err = cli(["select", "--run", world.run, "--budget", "3", "--out", tmp_path / "r", *args], capsys)
        assert code == 2 and message in one_line(err) and not (tmp_path / "r").exists()


def test_a_segmentation_mask_of_the_wrong_size(world: World, tmp_path: Path, capsys) -> None:
    rows = world.rows("cvat")
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\n")
    cv2.imwrite(str(tmp_path / "SegmentationClass" / f"{rows[0]['image_id']}.png"), np.zeros((10, 10, 3), np.uint8))
    before = snapshot(world.run)
    code, err = cli(["label", "import", world.rounds["cvat"], "--run", world.run, "--from", tmp_path], capsys)
    assert code == 2 and "the mask is 10x10" in one_line(err)
    assert snapshot(world.run) == before


@pytest.mark.camvid
def test_camvid_round_through_both_tools(camvid_root: Path, tmp_path: Path) -> None:
    """At CamVid's size and classes (360x480 at full scale; 11 classes and void): regions of three
    images written for both tools, checked with label_studio_converter, answered from the truth
    in each tool's export format, read back: the built-in oracle's classes."""
    from fastal.labelling.exports import read_export, write_export
    from fastal.oracle import MaskOracle
    from fastal.labelling.query_round import query_rows

    ds = load_dataset("camvid", root=camvid_root, split="train", limit=3)
    cache = build_cache(ds, superpixels=200, cache_dir=tmp_path / "cache", show_progress=False)
    gids = np.random.default_rng(0).choice(cache.num_superpixels, 12, replace=False)
    rows = query_rows(cache, ds, gids)
    meta = {"classes": list(ds.classes), "num_superpixels": cache.num_superpixels, "dataset": "camvid",
            "strategy": "random"}  # fmt: skip
    for fmt in ("cvat", "label-studio"):
        write_export(tmp_path, fmt, meta, rows, ds, cache, None)
    world = World(tmp_path, tmp_path, ds, cache, {"label-studio": tmp_path})
    answers = person(world, rows)
    tasks = label_studio_export(world, rows)
    for task in tasks:  # the brush regions of tasks.json decode, with the converter, to the superpixels
        for res in task["predictions"][0]["result"]:
            r = next(r for r in rows if r["superpixel"] == int(res["id"]))
            alpha = brush.decode_rle(res["value"]["rle"]).reshape(*ds.image_shape(r["image"]), 4)[..., 3]
            np.testing.assert_array_equal(alpha, world.region(r) * 255)
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    # CVAT: the person's masks in CVAT's own XML (boxes cut to each answer, as CVAT exports masks).
    root = ET.fromstring(zipfile.ZipFile(tmp_path / cvat.TASK).read("annotations.xml"))
    for image in root.iter("image"):
        for m in list(image):
            image.remove(m)
        for r, c, m in answers:
            if r["image_id"] + ".png" == image.get("name"):
                ys, xs = np.nonzero(m)
                box = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                ET.SubElement(image, "mask", label=c, source="manual", occluded="0", z_order="0",
                              rle=", ".join(map(str, cvat.encode_rle(box))), left=str(xs.min()), top=str(ys.min()),
                              width=str(box.shape[1]), height=str(box.shape[0]))  # fmt: skip
    (tmp_path / "annotations.xml").write_bytes(ET.tostring(root))
    answered = np.array(sorted({r["superpixel"] for r, _, _ in answers}), dtype=np.int64)
    want = SimulatedOracle(ds, cache, mode="full").query(answered)
    for export in (tmp_path / "ls.json", tmp_path / "annotations.xml"):
        got = MaskOracle(read_export(export, rows, ds), cache, ds.num_classes, mode="full").query(answered)
        for name in ("classes", "pixels", "clicks", "valid"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{export.name} {name}")


def test_full_label_mode_takes_the_painted_pixels(tiny: dict, tmp_path: Path, capsys) -> None:
    """In full label mode (the default) the painted pixels are the labels: labels/<image>.png holds
    them inside the answered regions (one region painted all "sky", against the truth), and the
    pool the answers."""
    from fastal.config import make_config
    from fastal.loop import run_experiment

    run_dir, round_dir = tmp_path / "run", tmp_path / "round"
    run_experiment(make_config({**tiny, "labels": "full", "strategy": "random", "cycles": 0}), run_dir)
    code, err = cli(["select", "--run", run_dir, "--budget", "3", "--out", round_dir, "--format", "label-studio"], capsys)
    assert code == 0, err
    ds = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    world = World(tmp_path, run_dir, ds, build_cache(ds, superpixels=12, cache_dir=tiny["cache_dir"],
                                                     show_progress=False), {"label-studio": round_dir})  # fmt: skip
    rows = world.rows("label-studio")
    sky = rows[1]
    tasks = label_studio_export(world, rows, unanswered=rows[0], repaint=(sky, "sky"))
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    code, err = cli(["label", "import", round_dir, "--run", run_dir, "--from", tmp_path / "export.json"], capsys)
    assert code == 0, err
    pool = RegionPool.load(run_dir / "pool.npz")
    answered = np.array([r["superpixel"] for r in rows[1:]], dtype=np.int64)
    want = SimulatedOracle(ds, world.cache, mode="full").query(answered).classes
    want[0] = ds.classes.index("sky")
    assert pool.classes[answered].tolist() == want.tolist() and not pool.labelled_mask[rows[0]["superpixel"]]
    for r in rows[1:]:
        kept = cv2.imread(str(run_dir / "labels" / f"{r['image_id']}.png"), cv2.IMREAD_UNCHANGED)[world.region(r)]
        truth = ds[r["image"]][1][world.region(r)]
        np.testing.assert_array_equal(kept, np.full_like(truth, want[0]) if r is sky else truth)
