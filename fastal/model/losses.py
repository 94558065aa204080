"""Cross-entropy on labelled pixels plus pixel InfoNCE against the memory bank.

Resolutions: labels come at image resolution, logits and embeddings at feature resolution
(1/8). The CE upsamples the logits (C channels, cheap) bilinearly to the labels, as
torchvision's references do. The contrastive part works at feature resolution on labels
nearest-downsampled to it (:func:`downsample_labels`): upsampling 128-D embeddings to image
size would cost 128 x H x W floats per image, too much on a CPU.

Sampling (:func:`sample_contrastive`, random and nearest-neighbour choices, no gradient) is
separate from the loss math (:func:`contrastive_loss`), so a reference implementation can
score the very same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastal.data.base import IGNORE
from fastal.model.ranking import rank_within_groups



def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, h, w) int64, nearest (the pixel at each cell's centre)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    out = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].long()


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE over the labelled pixels of ``labels`` (B, H, W) int64, 255 ignored, with
    ``logits`` (B, C, h, w) upsampled to (H, W). Returns (loss, number of labelled pixels);
    the loss is 0 (still in the graph) when no pixel is labelled, not NaN."""
    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    n = (labels != IGNORE).sum()
    total = F.cross_entropy(up, labels, ignore_index=IGNORE, reduction="sum")
    return total / n.clamp(min=1), n


@dataclass
class ContrastiveSample:
    """Which pixels are anchors and which bank rows are their negatives.

    anchors (M,) int64: rows of the (B*h*w, D) pixel-embedding matrix (batch, row, column order).
    classes (M,) int64: the anchor's class (its positive is that class's queue mean).
    negatives (M, K) int64: rows of ``bank.features()``; the first K//2 nearest, then random.
    valid (M, K) bool: False where fewer than K other-class rows exist (padding).
    """

    anchors: torch.Tensor
    classes: torch.Tensor
    negatives: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def sample_contrastive(
    emb: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    bank_features: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    anchors_per_class: int = 50,
    negatives: int = 1024,
    generator: torch.Generator | None = None,
) -> ContrastiveSample:
    """Draw anchors and negatives for one batch at feature resolution.

    emb (B, D, h, w) L2-normalised; labels (B, h, w) int64, 255 = ignore; pred (B, h, w) the
    student's argmax. Per class that is labelled in the batch and has a non-empty queue:
    ``anchors_per_class`` anchors, up to half hard (misclassified, chosen at random), the
    rest random among the class's other pixels (so random fills when too few are hard).
    Per anchor ``negatives`` bank rows of other classes: half the most cosine-similar, half
    random among the remaining ones. Deterministic for a given ``generator`` state.
    """
    B, D, h, w = emb.shape
    device = emb.device
    has_queue = torch.bincount(bank_labels, minlength=num_classes) > 0
    lab = labels.flatten()
    ok = (lab != IGNORE) & (lab < num_classes)
    ok &= has_queue[lab.clamp(max=num_classes - 1)]
    idx = ok.nonzero().squeeze(1)  # host sync: number of candidate pixels
    cls = lab[idx]
    hard = pred.flatten()[idx] != cls
    n_hard = anchors_per_class // 2
    r1 = torch.rand(idx.numel(), generator=generator, device=device)
    take_hard = hard & (rank_within_groups(cls * 2 + (~hard).long(), r1) < n_hard)
    got_hard = torch.bincount(cls[take_hard], minlength=num_classes)
    r2 = torch.rand(idx.numel(), generator=generator, device=device)
    rest_rank = rank_within_groups(cls * 2 + take_hard.long(), r2)
    take_rest = ~take_hard & (rest_rank < (anchors_per_class - got_hard)[cls])
    take = take_hard | take_rest
    anchors, classes = idx[take], cls[take]

    rows = emb.permute(0, 2, 3, 1).reshape(-1, D)[anchors].float()  # (M, D)
    other = bank_labels[None, :] != classes[:, None]  # (M, N)
    k = min(negatives, bank_labels.numel())
    k_near, k_rand = k // 2, k - k // 2
    sim = (rows @ bank_features.float().T).masked_fill(~other, float("-inf"))
    near_val, near_idx = torch.topk(sim, k_near, dim=1)
    r3 = torch.rand(sim.shape, generator=generator, device=device).masked_fill(~other, float("-inf"))
    r3.scatter_(1, near_idx, float("-inf"))
    rand_val, rand_idx = torch.topk(r3, k_rand, dim=1)
    return ContrastiveSample(
        anchors=anchors,
        classes=classes,
        negatives=torch.cat([near_idx, rand_idx], 1),
        valid=torch.cat([near_val, rand_val], 1) > float("-inf"),
    )


def contrastive_loss(
    emb: torch.Tensor,
    sample: ContrastiveSample,
    positives: torch.Tensor,
    bank_features: torch.Tensor,
    tau: float = 0.1,
) -> torch.Tensor:
    """InfoNCE, mean over the anchors that have at least one negative (0 if none):
    ``-log(exp(a.p/tau) / (exp(a.p/tau) + sum_n exp(a.n/tau)))`` in fp32, with ``a`` the anchor's
    embedding (rows of emb (B, D, h, w)), ``p`` = ``positives[class]`` (C, D) and ``n`` the
    sampled rows of ``bank_features`` (N, D). Computed in fp32, or fp64 for fp64 input."""
    D = emb.shape[1]
    dtype = torch.promote_types(emb.dtype, torch.float32)  # fp32 under AMP, fp64 kept for tests
    a = emb.permute(0, 2, 3, 1).reshape(-1, D)[sample.anchors].to(dtype)  # (M, D)
    pos = (a * positives[sample.classes].to(dtype)).sum(1, keepdim=True) / tau  # (M, 1)
    # One (M, N) product then a gather: cheaper in memory than gathering (M, K, D) bank rows.
    neg = (a @ bank_features.to(dtype).T).gather(1, sample.negatives) / tau  # (M, K)
    neg = neg.masked_fill(~sample.valid, float("-inf"))
    per_anchor = torch.logsumexp(torch.cat([pos, neg], 1), dim=1) - pos[:, 0]
    used = sample.valid.any(1)
    return (per_anchor * used).sum() / used.sum().clamp(min=1)
