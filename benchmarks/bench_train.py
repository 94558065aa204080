"""Training throughput (images/s) of the full training step, fp32 against bf16 autocast.

The step is what ``Trainer.train_step`` does: student forward and backward, CE + InfoNCE
with the default sampling (50 anchors per class, 1024 negatives, a full 11 x 1000 bank),
Adam, EMA update, teacher forward and bank push. Synthetic images, fixed size.

    python benchmarks/bench_train.py                       # CPU, writes benchmarks/results/train_cpu.json
    python benchmarks/bench_train.py --device cuda --batch-size 8 --cases resnet50:360x480 \
        --out benchmarks/results/train_cuda.json     # the GPU protocol's step (CamVid full size)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from fastal.atomic import atomic_write_json
from fastal.data import load_dataset
from fastal.machine import command_line, machine_info
from fastal.train import TrainConfig, Trainer, collate

CASES = ["resnet18:120x160", "resnet50:64x96"]


def parse_case(text: str) -> tuple[str, tuple[int, int]]:
    """``backbone:HxW`` -> (backbone, (H, W))."""
    backbone, _, size = text.partition(":")
    h, _, w = size.partition("x")
    return backbone, (int(h), int(w))


def measure(backbone: str, size: tuple[int, int], amp: str, device: str, batch: int, steps: int) -> dict:
    ds = load_dataset("synthetic", split="train", size=size, num_images=batch)
    images, labels = collate([ds[i] for i in range(batch)])
    trainer = Trainer(TrainConfig(backbone=backbone, amp=amp, batch_size=batch), ds.num_classes, device)
    # A full bank, so that sampling and the loss cost what they cost in a long run.
    trainer.bank.data.normal_()
    trainer.bank.data = torch.nn.functional.normalize(trainer.bank.data, dim=2)
    trainer.bank.count.fill_(trainer.bank.size)
    trainer.train_step(images, labels)  # warm-up: allocator, kernels selection
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels)  # ends with a host sync (loss.item())
    seconds = time.perf_counter() - start
    return {
        "backbone": backbone,
        "size": list(size),
        "amp": amp,
        "batch_size": batch,
        "steps": steps,
        "seconds": round(seconds, 3),
        "images_per_s": round(batch * steps / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch thread counts to measure (default: torch's choice)")
    parser.add_argument("--cases", nargs="+", default=CASES, help="backbone:HxW (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_cpu.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for backbone, size in map(parse_case, args.cases):
            for amp in ("fp32", "bf16"):
                r = {"threads": threads, **measure(backbone, size, amp, args.device, args.batch_size, args.steps)}
                print(f"{threads} threads {backbone} {size[0]}x{size[1]} {amp}: {r['images_per_s']:.2f} images/s",
                      flush=True)  # fmt: skip
                results.append(r)
    atomic_write_json(
        args.out,
        {
            "benchmark": "train_step_throughput",
            "command": command_line(["python", *sys.argv]),
            "device": args.device,
            "machine": machine_info(),
            # The cores are shared; the load says how much of them the run had.
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
