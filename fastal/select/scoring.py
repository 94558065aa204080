"""Score the pool: stream images through the teacher and keep one row per superpixel.

Per batch the network's per-pixel maps (B x 128 x h x w features, B x C x h x w logits) are
reduced at once by :mod:`fastal.kernels` to rows of the pool-wide matrices and then dropped,
so memory holds one batch of maps plus (N_sp x 128) floats.

Rows follow ``image_indices`` (each image's superpixels in local-id order), so row r is
superpixel ``gids[r]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastal.errors import FastalError
from fastal.select.region_scores import class_frequency, predicted_classes


@dataclass
class PoolScores:
    """Per-superpixel scores of a pool; tensors on the scoring device, ``gids`` on the host.

    ``features`` (N, D) float32 mean projection feature; ``entropy`` (N,) summed base-2 pixel
    entropy; ``margin`` (N,) top-1 minus top-2 of the superpixel's mean softmax (small = uncertain);
    ``gids`` (N,) np.int64 global superpixel ids of the rows.

    What the pixels predict (:func:`fastal.kernels.superpixel_prediction_stats`, the same pass;
    None where a caller built scores without them): ``pixels`` (N,) float32 region size;
    ``predicted`` (N,) int64 its dominant predicted class (ties: the lower class); ``impurity``
    (N,) the entropy of its predicted-class histogram over log C (0: pure, 1: uniform);
    ``mean_entropy`` (N,) its mean pixel entropy over log2 C; ``ratio`` (N,) its mean pixel p2/p1
    (second-best over best probability, 1 = undecided); ``ratio_by_class`` (N, C) the pixels'
    summed p2/p1 by predicted class. Pool statistics, once per scoring over every scored region:
    ``class_prob`` (C,) the mean softmax probability of each class over the pixels;
    ``class_regions``, ``class_pixels`` (C,) float64 the share of the regions (of the pixels)
    whose dominant predicted class is each class (:meth:`class_frequency`).
    """

    features: torch.Tensor
    entropy: torch.Tensor
    margin: torch.Tensor
    gids: np.ndarray
    pixels: torch.Tensor | None = None
    predicted: torch.Tensor | None = None
    impurity: torch.Tensor | None = None
    mean_entropy: torch.Tensor | None = None
    ratio: torch.Tensor | None = None
    ratio_by_class: torch.Tensor | None = None
    class_prob: torch.Tensor | None = None
    class_regions: torch.Tensor | None = None
    class_pixels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.gids.shape[0])

    def class_frequency(self, by: str = "regions") -> torch.Tensor:
        """``class_regions`` or, ``by="pixels"``, ``class_pixels``; FastalError when not scored."""
        share = self.class_pixels if by == "pixels" else self.class_regions
        if share is None:
            raise FastalError("class frequencies need the pool's predicted classes (score the pool with score_pool)")
        return share


def with_pool_statistics(scores: PoolScores) -> PoolScores:
    """``scores`` with ``class_regions`` and ``class_pixels`` computed from its rows (the pool's
    dominant predicted classes and region sizes; :func:`fastal.select.region_scores.class_frequency`)."""
    classes = scores.ratio_by_class.shape[1]
    return dataclasses.replace(scores, **{f"class_{by}": class_frequency(scores.predicted, scores.pixels, classes, by)
                                          for by in ("regions", "pixels")})  # fmt: skip


def per_pixel_entropy(scores: PoolScores, sizes: np.ndarray) -> PoolScores:
    """``scores`` with each region's summed entropy divided by its pixel count (``sizes``,
    indexed by global id): uncertainty that does not grow with the region. Summed entropy
    (the paper's) prefers large regions, which matters where regions differ much in size."""
    size = torch.as_tensor(np.asarray(sizes)[scores.gids], dtype=torch.float32, device=scores.entropy.device)
    return dataclasses.replace(scores, entropy=scores.entropy.float() / size)


class _ImagesWithSuperpixels(torch.utils.data.Dataset):
    """(position, image uint8 HWC, local superpixel ids HW int64) for positions in ``image_indices``."""

    def __init__(self, ds: Any, cache: Any, image_indices: np.ndarray) -> None:
        self.ds, self.cache, self.image_indices = ds, cache, image_indices

    def __len__(self) -> int:
        return len(self.image_indices)

    def __getitem__(self, pos: int) -> tuple[int, np.ndarray, np.ndarray]:
        i = int(self.image_indices[pos])
        image, _ = self.ds[i]
        sp = np.asarray(self.cache.local(i), dtype=np.int64)
        if sp.shape != image.shape[:2]:
            raise FastalError(
                f"image {i}: superpixel map {sp.shape} does not match the image {image.shape[:2]} "
                "(rebuild the cache with `fastal prepare`)"
            )
        return pos, np.ascontiguousarray(image), sp


def _collate(items: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    pos = [p for p, _, _ in items]
    images = torch.from_numpy(np.stack([im for _, im, _ in items]))
    sps = torch.from_numpy(np.stack([sp for _, _, sp in items]))
    return pos, images, sps


def _same_shape_batches(ds: Any, image_indices: np.ndarray, batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of images with one shape, in order within each shape."""
    groups: dict[tuple[int, int], list[int]] = {}
    for pos, i in enumerate(image_indices):
        groups.setdefault(tuple(ds.image_shape(int(i))), []).append(pos)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


# The per-superpixel columns score_pool keeps, with their dtypes (every rank of a sharded scoring
# sends them in this order and these dtypes, images or not); "image_prob" (I, C) is per image:
# each image's summed softmax over its pixels, for the pool's mean class probability.
_COLUMNS = {"features": torch.float32, "entropy": torch.float32, "margin": torch.float32, "pixels": torch.float32,
            "predicted": torch.int64, "impurity": torch.float32, "mean_entropy": torch.float32,
            "ratio": torch.float32, "ratio_by_class": torch.float32, "image_prob": torch.float64}  # fmt: skip
_WIDE = ("features", "ratio_by_class", "image_prob")  # (rows, width); the others (rows,)


def _checked_images(cache: Any, image_indices: np.ndarray | list[int], region_entropy: str) -> np.ndarray:
    """``image_indices`` as int64, FastalError for an image outside the cache or an unknown ``region_entropy``."""
    images = np.asarray(image_indices, dtype=np.int64).reshape(-1)
    if images.size and (images.min() < 0 or images.max() >= cache.num_images):
        raise FastalError(f"image_indices outside 0..{cache.num_images - 1}")
    if region_entropy not in ("sum", "mean"):
        raise FastalError(f"region_entropy = {region_entropy!r}: choose sum or mean")
    return images


def _score_images(
    teacher: torch.nn.Module,
    ds: Any,
    cache: Any,
    image_indices: np.ndarray,
    device: torch.device | str,
    batch_size: int = 8,
    amp: bool | str | None = None,
    num_workers: int | None = None,
    show_progress: bool = True,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """(the :data:`_COLUMNS` of the images' superpixels, rows in ``image_indices`` order; their
    global ids). Every value of an image depends on that image alone (not on its batch), so any
    split of the images scores the same rows. No images: empty columns of the same dtypes."""
    from fastal.kernels import superpixel_mean_features, superpixel_prediction_stats
    from fastal.model.precision import autocast, resolve_amp, to_tensor_batch
    from fastal.progress import progress

    device = torch.device(device)
    if batch_size < 1:
        raise FastalError(f"batch_size = {batch_size}: must be >= 1")
    cuda = device.type == "cuda"
    amp_dtype = resolve_amp(amp, device)
    counts = np.asarray(cache.counts, dtype=np.int64)[image_indices]
    row_start = np.concatenate([[0], np.cumsum(counts)])  # first row of each position
    n = int(row_start[-1])
    gids = np.concatenate(
        [np.arange(cache.offsets[i], cache.offsets[i + 1], dtype=np.int64) for i in image_indices]
        or [np.zeros(0, np.int64)]
    )
    # Empty until the first batch gives the feature and class widths (and so for no images).
    columns = {k: torch.zeros((0, 0) if k in _WIDE else 0, dtype=dtype, device=device) for k, dtype in _COLUMNS.items()}
    loader = torch.utils.data.DataLoader(
        _ImagesWithSuperpixels(ds, cache, image_indices),
        batch_sampler=_same_shape_batches(ds, image_indices, batch_size),
        collate_fn=_collate,
        num_workers=(2 if cuda else 0) if num_workers is None else num_workers,
        pin_memory=cuda,
    )
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode(), progress(transient=True) as bar:
            task = bar.add_task("scoring pool", total=len(image_indices), visible=show_progress)
            for b, (pos, images, sps) in enumerate(loader):
                x = to_tensor_batch(images, device)
                with autocast(device, amp_dtype):
                    logits, emb = teacher(x)
                logits, emb = logits.float(), emb.float()  # kernels accumulate in float32
                # Batch-local ids: each image's local ids shifted past the previous images'.
                local_counts = torch.as_tensor(counts[pos], device=device)
                shift = torch.cumsum(local_counts, 0) - local_counts
                sp = sps.to(device, non_blocking=True) + shift[:, None, None]
                num_sp = int(local_counts.sum())
                stats = superpixel_prediction_stats(logits, sp, num_sp)  # entropy, (num_sp, C) by class
                # Margin from the superpixel's mean softmax: one more C-channel mean, no extra map kept.
                p = superpixel_mean_features(torch.softmax(logits, 1), sp, num_sp)  # (num_sp, C)
                top2 = torch.topk(p, 2, dim=1).values if p.shape[1] > 1 else torch.cat([p, 0 * p], 1)
                size = stats.counts.sum(1).float()  # (num_sp,)
                predicted, impurity = predicted_classes(stats.counts)
                batch = {"features": superpixel_mean_features(emb, sp, num_sp),  # (num_sp, D)
                         "entropy": stats.entropy, "margin": top2[:, 0] - top2[:, 1], "pixels": size,
                         "predicted": predicted, "impurity": impurity,
                         "mean_entropy": stats.entropy / size.clamp(min=1) / math.log2(max(p.shape[1], 2)),
                         "ratio": stats.ratio.sum(1) / size.clamp(min=1), "ratio_by_class": stats.ratio}  # fmt: skip
                # The pool's mean class probability (MulActSeg's label distribution), from the same
                # means, summed per image: any split of the images then sums the same numbers.
                mass = p.double() * size.double()[:, None]  # (num_sp, C)
                if b == 0:
                    columns = {k: torch.zeros((n, *v.shape[1:]), dtype=_COLUMNS[k], device=device)
                               for k, v in batch.items()}  # fmt: skip
                    columns["image_prob"] = torch.zeros(len(image_indices), p.shape[1], dtype=torch.float64,
                                                        device=device)  # fmt: skip
                off = 0
                for q in pos:  # rows of each image: the batch's images need not be adjacent in the pool
                    c = int(counts[q])
                    r = int(row_start[q])
                    for k, v in batch.items():
                        columns[k][r : r + c] = v[off : off + c]
                    columns["image_prob"][q] = mass[off : off + c].sum(0)
                    off += c
                bar.advance(task, len(pos))
    finally:
        teacher.train(was_training)
    return columns, gids


def _pool_scores(columns: dict[str, torch.Tensor], gids: np.ndarray, cache: Any, region_entropy: str) -> PoolScores:
    """The PoolScores of scored ``columns`` (:func:`_score_images`'s, of the whole pool): the
    pool statistics reduced over all of them. No rows: features, entropy and margin only."""
    if gids.size == 0:
        device = columns["entropy"].device
        return PoolScores(features=torch.zeros(0, 0, device=device), entropy=torch.zeros(0, device=device),
                          margin=torch.zeros(0, device=device), gids=gids)  # fmt: skip
    rows = {k: v for k, v in columns.items() if k != "image_prob"}
    class_prob = (columns["image_prob"].sum(0) / rows["pixels"].double().sum().clamp(min=1)).float()
    scores = with_pool_statistics(PoolScores(gids=gids, class_prob=class_prob, **rows))
    return per_pixel_entropy(scores, cache.sizes) if region_entropy == "mean" else scores


def score_pool(
    teacher: torch.nn.Module,
    ds: Any,
    cache: Any,
    image_indices: np.ndarray | list[int],
    device: torch.device | str,
    batch_size: int = 8,
    amp: bool | str | None = None,
    num_workers: int | None = None,
    show_progress: bool = True,
    region_entropy: str = "sum",
) -> PoolScores:
    """Mean feature, summed entropy, margin and predicted classes of every superpixel of ``image_indices``.

    ``teacher(x)`` returns ``(logits (B, C, h, w), emb (B, D, h, w))``. ``amp``: autocast for
    the forward pass, the run config's setting as :func:`fastal.model.precision.resolve_amp`
    reads it (``"auto"`` = None: bf16 on CUDA, off on CPU; ``"bf16"``, ``"fp16"``, ``"fp32"``;
    a bool: bf16 / off). ``num_workers``: loader processes (default 2 on CUDA, 0 on
    CPU, where the network already uses every core). ``region_entropy="mean"`` divides each
    summed entropy by the region's pixel count (:func:`per_pixel_entropy`). Deterministic on CPU.

    Example::

        scores = score_pool(trainer.teacher, ds, cache, np.arange(len(ds)), "cpu")
        scores.features.shape  # (cache.num_superpixels, 128)
    """
    images = _checked_images(cache, image_indices, region_entropy)
    columns, gids = _score_images(teacher, ds, cache, images, device, batch_size, amp, num_workers, show_progress)
    return _pool_scores(columns, gids, cache, region_entropy)


def score_pool_sharded(teacher: torch.nn.Module, ds: Any, cache: Any, image_indices: np.ndarray | list[int],
                       device: torch.device | str, region_entropy: str = "sum",
                       **options: Any) -> PoolScores | None:  # fmt: skip
    """:func:`score_pool` shared by the processes of a DDP job (a collective call; alone, the same
    as score_pool): each scores its contiguous share of ``image_indices``
    (:func:`fastal.distributed.shard`, no image twice; a rank beyond the images scores none) and
    rank 0 returns the whole pool's scores, every column, rows in pool order (the shares
    concatenated in rank order), with the pool statistics reduced over the gathered rows as one
    process reduces them; the other ranks return None. ``options``: score_pool's."""
    from fastal import distributed

    if not distributed.is_distributed():
        return score_pool(teacher, ds, cache, image_indices, device, region_entropy=region_entropy, **options)
    images = _checked_images(cache, image_indices, region_entropy)  # on every rank, before any collective
    main = distributed.rank() == 0
    options["show_progress"] = options.get("show_progress", True) and main
    share = distributed.shard(images.size)
    part, part_gids = _score_images(teacher, ds, cache, images[share.start : share.stop], device, **options)
    # Every column goes flat, in _COLUMNS' order: a rank without images knows no feature or class width.
    flat = {k: distributed.gather_rows(part[k].flatten()) for k in _COLUMNS}
    gids = distributed.gather_rows(torch.as_tensor(part_gids, device=part["entropy"].device))
    if not main:
        return None
    n = gids.shape[0]
    length = {"image_prob": images.size}  # the other columns have one row per superpixel
    columns = {k: v.view(length.get(k, n), -1) if k in _WIDE and n else v for k, v in flat.items()}
    return _pool_scores(columns, gids.cpu().numpy(), cache, region_entropy)  # device -> host: the ids
