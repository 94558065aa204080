"""A run in TensorBoard: ``RUN_DIR/tensorboard/``, written when the config says ``log = "tensorboard"``.

The event file is rebuilt from the run directory's records after every evaluated cycle (and when
a run is resumed): results.json (per cycle: mIoU, per-class IoU, labelled % of pixels, clicks,
the KMeans clusters kept, train and selection seconds), timings.json (selection seconds per
stage), epochs.json (per epoch: loss, CE, InfoNCE, learning rate; written by the loop before
each cycle's checkpoint), selection/embedding-cycle-K.png (one image per cycle), and the config
as hyper-parameters. So what TensorBoard shows is what those files say: a killed and resumed run
has no step twice, however it was killed, since the log is never appended to across processes.
The new file replaces the old by renaming folders; it starts with a session start at step 0, so a
TensorBoard already showing the run drops what it read before (TensorBoard's purge of orphaned data).

Steps: the cycle for per-cycle values, the epoch counted over the whole run for per-epoch ones.
A sweep gives every run a directory of its own: ``tensorboard --logdir SWEEP_DIR`` shows them side by side.

MLflow is not a second backend: see docs/labelling-tools.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fastal.atomic import read_json
from fastal.errors import FastalError

LOGS = ("none", "tensorboard")
LOG_DIR = "tensorboard"
EPOCHS = "epochs.json"  # per cycle, per epoch: loss, ce, nce (InfoNCE), lr


def check_backend(log: str) -> None:
    """FastalError unless the logging backend ``log`` can be used here (before a run starts)."""
    if log == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise FastalError("log = \"tensorboard\" needs the tensorboard package: "
                              "pip install 'fastal[log]' (or pip install tensorboard)") from None  # fmt: skip


def epoch_records(history: list[dict[str, Any]], lr: float) -> list[dict[str, float]]:
    """What epochs.json keeps of a :meth:`fastal.train.Trainer.fit` history."""
    return [{"epoch": int(h["epoch"]), "loss": h["loss"], "ce": h["ce"], "nce": h["nce"], "lr": lr} for h in history]


def _hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as TensorBoard's hyper-parameters take them (numbers, strings, booleans)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in cfg.items()}


def write_tensorboard(run_dir: Path, config: dict[str, Any]) -> None:
    """Rebuild ``run_dir/tensorboard/`` from the run directory's records (see the module's docstring)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    from fastal.rundir import RESULTS, TIMINGS, crash_point

    results = read_json(run_dir / RESULTS) if (run_dir / RESULTS).exists() else {"cycles": []}
    timings = read_json(run_dir / TIMINGS) if (run_dir / TIMINGS).exists() else {}
    epochs = read_json(run_dir / EPOCHS) if (run_dir / EPOCHS).exists() else {}
    final, tmp, old = run_dir / LOG_DIR, run_dir / f"{LOG_DIR}.tmp", run_dir / f"{LOG_DIR}.old"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    classes = results.get("classes") or []
    with SummaryWriter(str(tmp), purge_step=0) as w:
        step = 0
        for rec in results["cycles"]:
            c = rec["cycle"]
            for e in epochs.get(str(c), []):
                step += 1
                for key, tag in (("loss", "loss"), ("ce", "ce"), ("nce", "infonce"), ("lr", "lr")):
                    w.add_scalar(f"epoch/{tag}", e[key], step)
            w.add_scalar("cycle/miou", rec["miou"], c)
            for k, iou in enumerate(rec["per_class_iou"]):
                if iou is not None:
                    w.add_scalar(f"iou/{classes[k] if k < len(classes) else k}", iou, c)
            w.add_scalar("cycle/labelled_pixels_pct", 100 * rec["labelled_pixel_fraction"], c)
            w.add_scalar("cycle/clicks", rec["cost_clicks"], c)
            w.add_scalar("cycle/labelled_superpixels", rec["labelled_superpixels"], c)
            for key in ("clusters_kept", "k", "train_seconds", "select_seconds"):
                if rec.get(key) is not None:
                    w.add_scalar(f"cycle/{key}", rec[key], c)
            for key, seconds in sorted(timings.get(str(c), {}).items()):
                if key.startswith("stage_"):
                    w.add_scalar(f"select_stage/{key[len('stage_'):]}", seconds, c)
            picture = run_dir / "selection" / f"embedding-cycle-{c}.png"
            if picture.exists():
                w.add_image("selection/embedding", _rgb(picture), c, dataformats="HWC")
        if results["cycles"]:
            for summary in hparams(_hparams(config), {"cycle/miou": results["cycles"][-1]["miou"]}):
                w.file_writer.add_summary(summary)
    crash_point(f"tensorboard:{len(results['cycles'])}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FastalError(f"{path}: not a readable PNG")
    return np.ascontiguousarray(bgr[..., ::-1])
