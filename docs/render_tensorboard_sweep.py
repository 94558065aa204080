"""The picture of a sweep in docs/labelling-tools.md: what TensorBoard's Scalars tab overlays for
``tensorboard --logdir SWEEP_DIR/runs``, read with TensorBoard's own EventMultiplexer (the loader
behind its UI) from the runs' event files, drawn with matplotlib.

    python docs/render_tensorboard_sweep.py SWEEP_DIR docs/tensorboard-sweep.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

PANELS = (("cycle/miou", "mIoU"), ("cycle/labelled_pixels_pct", "labelled pixels (%)"), ("epoch/ce", "CE loss"))


def main(sweep_dir: Path, out: Path) -> None:
    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(sweep_dir / "runs"))
    runs.Reload()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 3.2), dpi=150)
    for name in sorted(runs.Runs()):
        for ax, (tag, title) in zip(axes, PANELS):
            events = runs.Scalars(name, tag)
            style = "-" if "contrastive" in name else "--"
            ax.plot([e.step for e in events], [e.value for e in events], style, marker=".", label=name.split("/")[0])
            ax.set_title(f"{tag}: {title}", fontsize=8)
            ax.set_xlabel("epoch (over the run)" if tag.startswith("epoch/") else "cycle", fontsize=7)
            ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"tensorboard --logdir {sweep_dir.name}/runs: the runs' Scalars side by side", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
