"""Device memory a full Cityscapes pool would need per stage (1024x2048, ResNet-50), COMPUTED on a
CPU, not measured on a GPU: the network's activation memory is measured here on the CPU (peak
resident memory of one forward, and of one forward + backward, at a small input) and scaled by
pixels (activations grow linearly with them; weights do not); the pool-sized arrays are counted
(rows x bytes); KMeans' and UMAP's working sets follow their chunk sizes. docs/cityscapes-scale.md
shows the table.

    python benchmarks/gpu_memory_estimate.py --out benchmarks/results/cityscapes_gpu_memory_estimate.json
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

from fastal.atomic import atomic_write_json
from fastal.machine import command_line, machine_info
from fastal.model.network import build_model
from fastal.stages import measured

GB = 1 << 30


def activation_bytes_per_pixel(backbone: str, hw: tuple[int, int], classes: int) -> dict[str, float]:
    """Peak resident bytes of one image's forward (inference) and forward + backward, per input pixel,
    the model's own weights (and gradients) subtracted."""
    model = build_model(backbone, classes)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    x = torch.randn(1, 3, *hw)
    stages: dict = {}
    gc.collect()
    with measured(stages, "idle"):
        pass
    model.eval()
    with measured(stages, "forward"), torch.inference_mode():
        model(x)
    gc.collect()
    model.train()
    with measured(stages, "train"):
        logits, emb = model(x)
        (logits.float().mean() + emb.float().mean()).backward()
    del logits, emb
    pixels = hw[0] * hw[1]
    base = stages["idle"]["peak_rss_gb"] * GB
    return {
        "weights_bytes": weights,
        "forward_per_pixel": (stages["forward"]["peak_rss_gb"] * GB - base) / pixels,
        "train_per_pixel": (stages["train"]["peak_rss_gb"] * GB - base - weights) / pixels,  # minus the gradients
        "measured_at": list(hw),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--measure-size", default="256x512")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in a.measure_size.split("x"))
    act = activation_bytes_per_pixel(a.backbone, (h, w), 19)
    n_sp, dim, pixels = 2975 * 2000, 128, 1024 * 2048
    k = round(0.01 * 2975 * pixels / (pixels / 2000))  # 1 % of the pixels at the mean region size: ~60,000
    bf16 = 0.5  # activations in bf16 autocast: about half of fp32 (some layers stay fp32: an optimistic factor)
    weights = act["weights_bytes"]
    stages = {
        # Scoring: one batch of maps in flight plus the pool's rows (features, entropy, margin).
        "score.batch_activations": a.batch * pixels * act["forward_per_pixel"] * bf16,
        "score.pool_rows": n_sp * (dim + 2) * 4,
        # Selection: the pool's features are the input; UMAP's embedding (2-D) and the kNN graph of the
        # bank; KMeans: (chunk 4,096 x k) distance blocks, k centres, labels and bounds per row.
        "select.embedding": n_sp * 2 * 4 + n_sp * 15 * (4 + 8),
        "select.kmeans": 4096 * k * 4 + k * 2 * 4 + n_sp * (8 + 4 * 2),
        # Training: weights, gradients, Adam's two moments, the EMA teacher; a batch's activations.
        "train.state": weights * 5,
        "train.batch_activations": a.batch * pixels * act["train_per_pixel"] * bf16,
    }
    out = {
        "computed_not_measured_on_gpu": True,
        "backbone": a.backbone,
        "batch": a.batch,
        "input": [1024, 2048],
        "superpixels": n_sp,
        "kmeans_k": k,
        "activation_bytes_per_pixel_cpu_fp32": act,
        "bf16_factor": bf16,
        "stages_gb": {s: round(v / GB, 2) for s, v in stages.items()},
        "command": command_line(["python", *sys.argv]),
        "machine": machine_info(),
    }
    atomic_write_json(a.out, out)
    print(out["stages_gb"])


if __name__ == "__main__":
    main()
