"""Network, weights loading, EMA, memory bank and contrastive loss against naive references."""

from __future__ import annotations

import collections
import importlib.util
import math
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision

from fastal.errors import FastalError
from fastal.model import (
    MemoryBank,
    build_model,
    ce_loss,
    contrastive_loss,
    downsample_labels,
    ema_update,
    entropy2,
    sample_contrastive,
)
from fastal.model.ranking import rank_within_groups

# ---------------------------------------------------------------- network


_NO_TIMM = importlib.util.find_spec("timm") is None


@pytest.mark.parametrize(
    ("backbone", "stride"),
    [("resnet18", 8), ("resnet50", 8),
     pytest.param("efficientnet_lite0", 16, marks=pytest.mark.skipif(_NO_TIMM, reason="needs timm"))],
)  # fmt: skip
def test_forward_shapes_stride_and_unit_embeddings(backbone, stride):
    model = build_model(backbone, num_classes=5).eval()
    with torch.no_grad():
        logits, emb = model(torch.randn(2, 3, 4 * stride, 6 * stride))
    assert model.output_stride == stride
    assert logits.shape == (2, 5, 4, 6)
    assert emb.shape == (2, 128, 4, 6)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, 4, 6))


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(FastalError, match="resnet18, resnet34, resnet50, resnet101"):
        build_model("vgg16", 3)


def test_weights_file_of_another_architecture(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(FastalError, match=r"r18\.pt.*first mismatch: .*'layer1\.0\.conv1\.weight'"):
        build_model("resnet50", 3, weights=path)


def test_weights_file_backbone_and_whole_model(tmp_path):
    imagenet = torchvision.models.resnet18().state_dict()  # carries fc.*, which the trunk drops
    torch.save(imagenet, tmp_path / "backbone.pt")
    model = build_model("resnet18", 3, weights=tmp_path / "backbone.pt")
    torch.testing.assert_close(model.backbone.layer2[0].conv1.weight, imagenet["layer2.0.conv1.weight"])

    source = build_model("resnet18", 3).eval()
    torch.save({"student": source.state_dict()}, tmp_path / "ckpt.pt")
    loaded = build_model("resnet18", 3, weights=str(tmp_path / "ckpt.pt")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], source(x)[0])
    with pytest.raises(FastalError, match="classifier.4.weight"):  # other number of classes
        build_model("resnet18", 4, weights=tmp_path / "ckpt.pt")


def test_weights_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FastalError, match="does not exist"):
        build_model("resnet18", 3, weights=tmp_path / "nope.pt")
    with pytest.raises(FastalError, match="IMAGENET1K_V1"):
        build_model("resnet18", 3, weights="IMAGENET9K")


def test_weights_name_reads_the_torch_cache_and_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FastalError, match="downloads nothing.*--weights PATH"):
        build_model("resnet18", 3, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert not (tmp_path / "hub").exists()  # nothing written either
    # The same file in torchvision's cache is loaded into the backbone.
    source = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model = build_model("resnet18", 3, weights="IMAGENET1K_V1")
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)


# ---------------------------------------------------------------- EMA


def test_ema_update_by_hand():
    torch.manual_seed(0)
    student, teacher = build_model("resnet18", 3), build_model("resnet18", 3)
    student.train()(torch.randn(2, 3, 32, 32))  # moves the student's BN running stats
    t_before = {k: v.clone() for k, v in teacher.named_parameters()}
    ema_update(teacher, student, alpha=0.9)
    for name, s in student.named_parameters():
        expected = 0.9 * t_before[name].double() + 0.1 * s.detach().double()
        torch.testing.assert_close(dict(teacher.named_parameters())[name].double(), expected, atol=1e-6, rtol=1e-6)
    for (name, t), s in zip(teacher.named_buffers(), student.buffers()):
        assert torch.equal(t, s), name


# ---------------------------------------------------------------- ranking and labels


def test_rank_within_groups_matches_sorting_each_group():
    g = torch.Generator().manual_seed(1)
    groups = torch.randint(0, 5, (200,), generator=g)
    keys = torch.rand(200, generator=g)
    rank = rank_within_groups(groups, keys)
    for k in range(5):
        members = (groups == k).nonzero().squeeze(1)
        expected = torch.argsort(torch.argsort(keys[members]))
        assert torch.equal(rank[members], expected)


def test_downsample_labels_takes_cell_centres():
    labels = torch.arange(64).view(1, 8, 8)
    out = downsample_labels(labels, (2, 2))
    centres = labels[0, 2::4, 2::4]  # rows/columns 2 and 6: the centres of the 4x4 cells
    assert torch.equal(out[0], centres)


def test_ce_loss_ignores_255_and_is_zero_without_labels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    labels[0, 0, 1] = 2
    loss, n = ce_loss(logits, labels)
    assert n.item() == 1
    torch.testing.assert_close(loss, -torch.log_softmax(logits[0, :, 0, 1], 0)[2])
    loss, n = ce_loss(logits, torch.full((1, 2, 2), 255))
    assert n.item() == 0 and loss.item() == 0.0


# ---------------------------------------------------------------- memory bank


def _naive_push(queues, emb, logits, labels, per_image):
    """Reference: loops, float64 entropy, a deque per class."""
    B, C, h, w = logits.shape
    p = torch.softmax(logits.double(), 1)
    ent = -(p * torch.log2(p)).sum(1)
    pred = p.argmax(1)
    for c in range(C):
        for b in range(B):
            cand = [
                (-ent[b, i, j].item(), i * w + j)
                for i in range(h)
                for j in range(w)
                if labels[b, i, j] == c and pred[b, i, j] == c
            ]
            for _, pix in sorted(cand)[:per_image]:
                queues[c].append(emb[b, :, pix // w, pix % w].clone())


def test_bank_matches_naive_fifo_reference():
    C, D, P, T = 3, 4, 2, 5
    bank = MemoryBank(C, dim=D, per_image=P, size=T)
    queues = [collections.deque(maxlen=T) for _ in range(C)]
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        emb = torch.randn(2, D, 3, 4, generator=g)
        logits = torch.randn(2, C, 3, 4, generator=g) * 2
        labels = torch.randint(0, C, (2, 3, 4), generator=g)
        labels[0, 0, :2] = 255
        bank.push(emb, logits, labels)
        _naive_push(queues, emb, logits, labels, P)
        for c in range(C):
            expected = torch.stack(list(queues[c])) if queues[c] else torch.zeros(0, D)
            torch.testing.assert_close(bank.queue(c), expected)
    assert bank.count.tolist() == [len(q) for q in queues]
    assert max(bank.count.tolist()) == T  # the cap was reached and old entries evicted
    assert bank.features().shape == (sum(len(q) for q in queues), D)
    assert bank.labels().tolist() == [c for c in range(C) for _ in queues[c]]


def test_bank_only_correct_pixels_highest_entropy_first_per_image():
    C, P = 2, 2
    # Image 0: every pixel labelled 1. Pixels 0..3 predicted 1 with rising entropy, pixel 4 wrong.
    margins = torch.tensor([4.0, 3.0, 2.0, 1.0, -5.0])
    logits = torch.stack([torch.zeros(5), margins]).view(1, C, 1, 5)
    emb = torch.arange(5.0).view(1, 1, 1, 5)  # the feature is the pixel index
    bank = MemoryBank(C, dim=1, per_image=P, size=100)
    bank.push(emb, logits, torch.ones(1, 1, 5, dtype=torch.long))
    assert bank.queue(1)[:, 0].tolist() == [3.0, 2.0]  # highest entropy first, wrong pixel 4 never
    assert bank.count.tolist() == [0, 2]
    # Two images: P per image, not per batch.
    bank.push(emb.repeat(2, 1, 1, 1), logits.repeat(2, 1, 1, 1), torch.ones(2, 1, 5, dtype=torch.long))
    assert bank.count.tolist() == [0, 6]


def test_bank_state_dict_round_trip_and_class_means():
    bank = MemoryBank(2, dim=2, per_image=1, size=3)
    bank.push(torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]]).view(1, 2, 1, 2),
              torch.tensor([5.0, 0.0, 5.0, 0.0]).view(1, 2, 1, 2), torch.tensor([[[0, 0]]]))  # fmt: skip
    other = MemoryBank(2, dim=2, per_image=1, size=3)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.features(), bank.features())
    means = other.class_means()
    torch.testing.assert_close(means[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert means[1].abs().sum() == 0  # empty queue
    with pytest.raises(FastalError, match="does not fit"):
        MemoryBank(3, dim=2, size=3).load_state_dict(bank.state_dict())


def test_entropy2_is_base_2():
    torch.testing.assert_close(entropy2(torch.zeros(1, 4, 1, 1)), torch.full((1, 1, 1), 2.0))


# ---------------------------------------------------------------- contrastive sampling and loss


def _setup(seed=0, C=4, D=8, B=2, h=6, w=7, T=20, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(B, D, h, w, generator=g, dtype=dtype), dim=1)
    labels = torch.randint(0, C, (B, h, w), generator=g)
    labels[:, 0] = 255
    pred = torch.randint(0, C, (B, h, w), generator=g)
    bank = MemoryBank(C, dim=D, per_image=3, size=T)
    for _ in range(3):
        bank.push(torch.nn.functional.normalize(torch.randn(B, D, h, w, generator=g), dim=1),
                  torch.randn(B, C, h, w, generator=g), torch.randint(0, C - 1, (B, h, w), generator=g))  # fmt: skip
    return emb, labels, pred, bank, g


def _naive_infonce(emb, sample, bank, tau):
    """Reference: Python loops over anchors and negatives, float64, positives from the queues."""
    B, D, h, w = emb.shape
    feats = bank.features().double()
    total, used = 0.0, 0
    for m in range(sample.anchors.numel()):
        p = sample.anchors[m].item()
        a = emb[p // (h * w), :, (p % (h * w)) // w, p % w].double()
        q = bank.queue(sample.classes[m].item()).double().mean(0)
        pos = float(a @ (q / q.norm())) / tau
        terms = [pos] + [
            float(a @ feats[n]) / tau for n, ok in zip(sample.negatives[m].tolist(), sample.valid[m].tolist()) if ok
        ]
        if len(terms) == 1:
            continue
        top = max(terms)
        total += top + math.log(sum(math.exp(t - top) for t in terms)) - pos
        used += 1
    return total / max(used, 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_infonce_matches_naive_reference(dtype, tol):
    emb, labels, pred, bank, g = _setup(dtype=dtype)
    sample = sample_contrastive(emb, labels, pred, bank.features(), bank.labels(), 4,
                                anchors_per_class=6, negatives=10, generator=g)  # fmt: skip
    assert sample.anchors.numel() > 0 and sample.valid.any()
    loss = contrastive_loss(emb, sample, bank.class_means(), bank.features(), tau=0.1)
    assert abs(loss.item() - _naive_infonce(emb, sample, bank, 0.1)) < tol


def test_infonce_gradient_flows_to_anchors_only():
    emb, labels, pred, bank, g = _setup(dtype=torch.float32)
    emb.requires_grad_(True)
    sample = sample_contrastive(emb, labels, pred, bank.features(), bank.labels(), 4, 6, 10, g)
    contrastive_loss(emb, sample, bank.class_means(), bank.features()).backward()
    touched = emb.grad.abs().sum(1).flatten().nonzero().squeeze(1)
    assert set(touched.tolist()) <= set(sample.anchors.tolist()) and touched.numel() > 0


def test_anchor_sampling_counts_hard_first():
    emb, labels, pred, bank, g = _setup(h=10, w=10)
    n_anchor = 8
    s = sample_contrastive(emb, labels, pred, bank.features(), bank.labels(), 4, n_anchor, 6, g)
    has_queue = bank.count > 0
    flat_lab, flat_pred = labels.flatten(), pred.flatten()
    assert len(set(s.anchors.tolist())) == s.anchors.numel()  # no pixel twice
    assert torch.equal(flat_lab[s.anchors], s.classes)
    for c in range(4):
        mine = s.anchors[s.classes == c]
        pixels = (flat_lab == c).sum().item()
        hard = ((flat_lab == c) & (flat_pred != c)).sum().item()
        if not has_queue[c]:
            assert mine.numel() == 0  # no positive for this class
            continue
        assert mine.numel() == min(n_anchor, pixels)
        assert (flat_pred[mine] != c).sum().item() >= min(hard, n_anchor // 2)


def test_negatives_other_class_nearest_half_then_random_distinct():
    emb, labels, pred, bank, g = _setup()
    feats, flab = bank.features(), bank.labels()
    K = 10
    s = sample_contrastive(emb, labels, pred, feats, flab, 4, 6, K, g)
    rows = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])[s.anchors]
    for m in range(s.anchors.numel()):
        c = s.classes[m].item()
        negs = s.negatives[m][s.valid[m]]
        assert (flab[negs] != c).all()
        assert len(set(negs.tolist())) == negs.numel()
        others = (flab != c).nonzero().squeeze(1)
        assert negs.numel() == min(K, others.numel())
        sims = rows[m].double() @ feats[others].double().T
        nearest = set(others[torch.argsort(sims, descending=True)[: K // 2]].tolist())
        assert set(s.negatives[m, : K // 2].tolist()) == nearest


def test_sampling_is_deterministic_for_a_generator_state():
    emb, labels, pred, bank, _ = _setup()
    draw = [
        sample_contrastive(emb, labels, pred, bank.features(), bank.labels(), 4, 6, 10,
                           torch.Generator().manual_seed(3))  # fmt: skip
        for _ in range(2)
    ]
    assert torch.equal(draw[0].anchors, draw[1].anchors) and torch.equal(draw[0].negatives, draw[1].negatives)


def test_empty_bank_gives_no_anchors_and_zero_loss():
    emb, labels, pred, _, g = _setup()
    bank = MemoryBank(4, dim=emb.shape[1])
    s = sample_contrastive(emb, labels, pred, bank.features(), bank.labels(), 4, 6, 10, g)
    assert s.anchors.numel() == 0
    assert contrastive_loss(emb, s, bank.class_means(), bank.features()).item() == 0.0


def test_sampler_skips_out_of_range_class():
    # A class id >= num_classes that is not 255 must not crash the sampler (the trainer rejects it).
    emb, labels, pred, bank, g = _setup()
    labels[0, 1, 1] = 7
    s = sample_contrastive(emb, labels, pred, bank.features(), bank.labels(), 4, 6, 10, g)
    assert not np.isin(7, s.classes.numpy())


def test_bank_ages_follow_the_fifo_through_wrap_around():
    # Channel 0 of every pushed feature is the push number, so each stored row says when it entered.
    C, D, P, T = 3, 2, 2, 5
    bank = MemoryBank(C, dim=D, per_image=P, size=T)
    g = torch.Generator().manual_seed(1)
    for t in range(1, 7):
        emb = torch.randn(2, D, 3, 4, generator=g)
        emb[:, 0] = t
        bank.push(emb, torch.randn(2, C, 3, 4, generator=g) * 2, torch.randint(0, C, (2, 3, 4), generator=g))
    assert bank.pushes == 6 and max(bank.count.tolist()) == T  # queues wrapped: old entries evicted
    assert torch.equal(bank.ages(), 6 - bank.features()[:, 0].long())
    assert bank.ages().min() == 0  # the last push's entries


def test_bank_ages_round_trip_and_old_state_without_them_loads():
    bank = MemoryBank(2, dim=2, per_image=1, size=3)
    emb, logits = torch.ones(1, 2, 1, 2), torch.tensor([5.0, 0.0, 5.0, 0.0]).view(1, 2, 1, 2)
    for _ in range(3):
        bank.push(emb, logits, torch.tensor([[[0, 0]]]))
    assert bank.ages().tolist() == [2, 1, 0]  # one entry per push (per_image = 1, one image)
    other = MemoryBank(2, dim=2, per_image=1, size=3)
    other.load_state_dict(bank.state_dict())
    assert other.pushes == 3 and torch.equal(other.ages(), bank.ages())
    old = {k: v for k, v in bank.state_dict().items() if k not in ("inserted", "pushes")}  # before age tracking
    legacy = MemoryBank(2, dim=2, per_image=1, size=3)
    legacy.load_state_dict(old)
    assert torch.equal(legacy.features(), bank.features())
    assert legacy.ages().tolist() == [-1, -1, -1]  # unknown
    legacy.push(emb, logits, torch.tensor([[[0, 0]]]))  # evicts the oldest; the new one is known
    assert sorted(legacy.ages().tolist()) == [-1, -1, 0]
