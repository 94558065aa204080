"""Per-class FIFO memory bank of pixel embeddings (negatives and positives of the InfoNCE
loss, and the points UMAP is fitted on during selection)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from fastal.data.base import IGNORE
from fastal.errors import FastalError
from fastal.model.ranking import rank_within_groups


def entropy2(logits: torch.Tensor) -> torch.Tensor:
    """Base-2 entropy over the class axis: (B, C, h, w) -> (B, h, w), computed in fp32."""
    p = torch.softmax(logits.float(), dim=1)
    return torch.special.entr(p).sum(1) / torch.log(torch.tensor(2.0, device=p.device))


class BankCandidates(NamedTuple):
    """Rows a batch offers the bank (:meth:`MemoryBank.candidates`): ``rows`` (n, D) float32
    features, their ``classes``, ``images`` (index in the batch) and ``ranks`` (entropy rank
    within the image and class, 0 = most uncertain), each (n,) int64."""

    rows: torch.Tensor
    classes: torch.Tensor
    images: torch.Tensor
    ranks: torch.Tensor


class MemoryBank:
    """One FIFO queue of ``size`` (T = 100 x P_i) ``dim``-D features per class, on ``device``.

    Each :meth:`push` enqueues, per image and class, the ``per_image`` (P_i) pixels that
    are correctly classified and have the highest base-2 entropy (ties: lower pixel index).
    Within one push, items enter class by class in (image, entropy descending) order.
    Each slot remembers the push that filled it (``inserted``; ``pushes`` counts the pushes,
    one per training step), so :meth:`ages` tells how stale the entries are.

    >>> bank = MemoryBank(11, device="cpu")
    >>> bank.push(emb, logits, labels)       # (B,128,h,w), (B,11,h,w), (B,h,w) 255 = ignore
    >>> bank.features().shape, bank.labels().shape   # (C*T', 128), (C*T',)
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 128,
        per_image: int = 10,
        size: int = 1000,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.dim = dim
        self.per_image = per_image
        self.size = size
        self.device = torch.device(device)
        self.data = torch.zeros(num_classes, size, dim, device=self.device)  # (C, T, D)
        self.ptr = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # next slot
        self.count = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # filled slots
        # (C, T) value of ``pushes`` when the slot was written; -1: unknown (a bank saved without it)
        self.inserted = torch.zeros(num_classes, size, dtype=torch.int64, device=self.device)
        self.pushes = 0

    @torch.no_grad()
    def push(self, emb: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Enqueue from a batch at feature resolution: emb (B, D, h, w), logits (B, C, h, w),
        labels (B, h, w) integer with 255 = ignore (see ``losses.downsample_labels``)."""
        self.enqueue(self.candidates(emb, logits, labels), emb.shape[0])

    @torch.no_grad()
    def candidates(self, emb: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> BankCandidates:
        """What :meth:`push` would enqueue from this batch, before the queues are touched: per image
        and class the ``per_image`` correct pixels of highest entropy. A process of a DDP job
        gathers every rank's candidates and enqueues them all (:meth:`enqueue`), so each rank's
        bank is the one a single process with the whole batch would hold."""
        B, D, h, w = emb.shape
        C, P = self.num_classes, self.per_image
        if D != self.dim or logits.shape != (B, C, h, w) or labels.shape != (B, h, w):
            raise FastalError(
                f"MemoryBank.push: shapes emb {tuple(emb.shape)}, logits {tuple(logits.shape)}, "
                f"labels {tuple(labels.shape)} do not match (dim {self.dim}, {C} classes)"
            )
        ent = entropy2(logits).flatten()  # (B*h*w,)
        lab = labels.flatten().long()
        correct = (lab != IGNORE) & (lab == logits.argmax(1).flatten())
        idx = correct.nonzero().squeeze(1)  # host sync: the number of candidates
        image = idx // (h * w)
        cls = lab[idx]
        rank = rank_within_groups(image * C + cls, -ent[idx])
        keep = rank < P
        rows = emb.permute(0, 2, 3, 1).reshape(-1, D)[idx[keep]].float()
        return BankCandidates(rows, cls[keep], image[keep], rank[keep])

    @torch.no_grad()
    def enqueue(self, cand: BankCandidates, batch: int) -> None:
        """Enqueue ``cand`` of a batch of ``batch`` images: class by class, then by image, then
        entropy descending; one push."""
        C, T, P = self.num_classes, self.size, self.per_image
        order = torch.argsort((cand.classes * batch + cand.images) * P + cand.ranks)
        rows, cls = cand.rows[order], cand.classes[order]
        n = torch.bincount(cls, minlength=C)  # (C,) items per class in this push
        pos = torch.arange(cls.numel(), device=cls.device) - (torch.cumsum(n, 0) - n)[cls]
        # Item j of class c goes to slot (ptr + j) % T; with more than T items only the last T survive.
        last = pos >= (n - T)[cls]
        slots = (self.ptr[cls[last]] + pos[last]) % T
        self.data[cls[last], slots] = rows[last]
        self.pushes += 1
        self.inserted[cls[last], slots] = self.pushes
        self.ptr = (self.ptr + n) % T
        self.count = torch.clamp(self.count + n, max=T)

    def _filled(self) -> torch.Tensor:
        # Until a queue wraps, its filled slots are 0..count-1; after, all T are.
        return torch.arange(self.size, device=self.device)[None, :] < self.count[:, None]  # (C, T)

    def features(self) -> torch.Tensor:
        """(C*T', D) the filled entries, class by class."""
        return self.data[self._filled()]

    def labels(self) -> torch.Tensor:
        """(C*T',) int64 class of each row of :meth:`features`."""
        classes = torch.arange(self.num_classes, device=self.device)[:, None].expand(-1, self.size)
        return classes[self._filled()]

    def ages(self) -> torch.Tensor:
        """(C*T',) int64 pushes since each row of :meth:`features` was written (0: by the last
        push); -1 where unknown (a bank loaded from a checkpoint that predates age tracking)."""
        inserted = self.inserted[self._filled()]
        return torch.where(inserted >= 0, self.pushes - inserted, -1)

    def queue(self, c: int) -> torch.Tensor:
        """(count_c, D) the queue of class ``c``, oldest first."""
        n = int(self.count[c])
        start = int(self.ptr[c]) if n == self.size else 0
        return torch.roll(self.data[c], -start, dims=0)[:n]

    def class_means(self) -> torch.Tensor:
        """(C, D) L2-normalised mean of each queue (zero rows for empty queues): the positives."""
        total = (self.data * self._filled()[..., None]).sum(1)
        return torch.nn.functional.normalize(total, dim=1)

    def clear(self) -> None:
        """Empty every queue and forget the pushes: the bank is as a new one is."""
        self.data.zero_()
        self.ptr.zero_()
        self.count.zero_()
        self.inserted.zero_()
        self.pushes = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "ptr": self.ptr,
            "count": self.count,
            "per_image": self.per_image,
            "inserted": self.inserted,
            "pushes": self.pushes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["data"].shape) != tuple(self.data.shape):
            raise FastalError(
                f"memory bank of shape {tuple(state['data'].shape)} does not fit "
                f"(classes, size, dim) = {tuple(self.data.shape)}"
            )
        self.data = state["data"].to(self.device, torch.float32)
        self.ptr = state["ptr"].to(self.device)
        self.count = state["count"].to(self.device)
        self.per_image = int(state["per_image"])
        # Checkpoints written before age tracking lack these: their entries' ages are unknown.
        self.pushes = int(state.get("pushes", 0))
        inserted = state.get("inserted")
        self.inserted = (torch.full_like(self.inserted, -1) if inserted is None
                         else inserted.to(self.device, torch.int64))  # fmt: skip

    def to(self, device: torch.device | str) -> MemoryBank:
        self.device = torch.device(device)
        self.data, self.ptr, self.count, self.inserted = (
            t.to(self.device) for t in (self.data, self.ptr, self.count, self.inserted)
        )
        return self
