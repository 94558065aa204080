"""Trainer, evaluation and normalisation: hand-computed cases, round trips, error paths, learning."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from fastal.errors import FastalError
from fastal.train import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainConfig,
    Trainer,
    collate,
    confusion_metrics,
    evaluate,
    to_tensor_batch,
)

TINY = dict(backbone="resnet18", batch_size=2, negatives=16, bank_size=40, anchors_per_class=6, per_image=4)


class Samples(torch.utils.data.Dataset):
    """Random uint8 images and labels (some ignore) of one size."""

    def __init__(self, n=4, h=16, w=24, classes=3, seed=0, ignore_all=False):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        self.labels = rng.integers(0, classes, (n, h, w)).astype(np.uint8)
        self.labels[:, :4] = 255
        if ignore_all:
            self.labels[:] = 255

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


# ---------------------------------------------------------------- normalisation and batching


def test_to_tensor_batch_matches_numpy_float64():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = to_tensor_batch(images, "cpu")
    expected = (images / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    assert to_tensor_batch(torch.as_tensor(images[0]), "cpu").shape == (1, 3, 5, 7)
    assert to_tensor_batch(images, "cpu", channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_to_tensor_batch_rejects_float_and_grey():
    with pytest.raises(FastalError, match="uint8"):
        to_tensor_batch(np.zeros((2, 5, 7, 3), np.float32), "cpu")
    with pytest.raises(FastalError, match=r"\(2, 5, 7\)"):
        to_tensor_batch(np.zeros((2, 5, 7), np.uint8), "cpu")


def test_collate_rejects_mixed_sizes():
    a = (np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8))
    b = (np.zeros((4, 8, 3), np.uint8), np.zeros((4, 8), np.uint8))
    with pytest.raises(FastalError, match="one size"):
        collate([a, b])


def test_config_rejects_bad_values():
    with pytest.raises(FastalError, match="resnet18, resnet34"):
        TrainConfig(backbone="resnet7")
    with pytest.raises(FastalError, match="amp 'fp8'"):
        TrainConfig(amp="fp8")
    with pytest.raises(FastalError, match="batch_size"):
        TrainConfig(batch_size=0)


# ---------------------------------------------------------------- metrics


def test_confusion_metrics_hand_computed():
    conf = np.array([[3, 1, 0, 0], [2, 4, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    m = confusion_metrics(conf)
    # IoU = TP / (row + col - TP); class 2 absent from truth and prediction; class 3 never predicted.
    iou = [3 / (4 + 5 - 3), 4 / (6 + 6 - 4), None, 0.0]
    assert m["per_class_iou"][0] == pytest.approx(iou[0])
    assert m["per_class_iou"][1] == pytest.approx(iou[1])
    assert np.isnan(m["per_class_iou"][2])
    assert m["per_class_iou"][3] == 0.0
    assert m["miou"] == pytest.approx((iou[0] + iou[1] + 0.0) / 3)


class RedChannelModel(nn.Module):
    """Predicts class = red value % C at every pixel, at stride 1: an exactly known segmenter."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        red = torch.round((x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).long()
        logits = nn.functional.one_hot(red % self.classes, self.classes).permute(0, 3, 1, 2).float()
        return logits, logits


def test_evaluate_against_naive_confusion():
    C = 3
    data = Samples(n=5, h=6, w=9, classes=C, seed=1)
    data.labels[0, 5, 5] = 255
    model = RedChannelModel(C).train()
    m = evaluate(model, data, C, "cpu", batch_size=2)
    expected = np.zeros((C, C), np.int64)
    for img, lab in zip(data.images, data.labels):
        for t, p in zip(lab.ravel(), img[..., 0].ravel() % C):
            if t != 255:
                expected[t, p] += 1
    np.testing.assert_array_equal(m["confusion"], expected)
    assert m["miou"] == pytest.approx(confusion_metrics(expected)["miou"])
    assert model.training  # mode restored


def test_evaluate_rejects_out_of_range_labels():
    data = Samples(n=2, h=6, w=9, classes=3)
    data.labels[1, 5, 5] = 7
    with pytest.raises(FastalError, match="outside 0..2"):
        evaluate(RedChannelModel(3), data, 3, "cpu")


# ---------------------------------------------------------------- trainer


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_cpu_gives_finite_loss_and_moves_weights(amp, dtype):
    trainer = Trainer(TrainConfig(amp=amp, **TINY), num_classes=3, device="cpu")
    assert trainer.amp_dtype == dtype
    assert trainer.scaler.is_enabled() == (amp == "fp16")  # GradScaler only for fp16
    with torch.autocast("cpu", dtype=dtype):
        assert trainer.student(torch.zeros(1, 3, 16, 16))[0].dtype == dtype
    before = _params(trainer.student).clone()
    images, labels = collate([Samples()[i] for i in range(2)])
    out = [trainer.train_step(images, labels) for _ in range(2)]
    assert all(np.isfinite(o["loss"]) for o in out)
    assert out[1]["nce"] > 0  # the bank was filled by step 1, so step 2 has a contrastive term
    assert not torch.equal(before, _params(trainer.student))
    assert trainer.step == 2


def test_teacher_ema_warm_up():
    trainer = Trainer(TrainConfig(ema=0.99, **TINY), num_classes=3, device="cpu")
    images, labels = collate([Samples()[i] for i in range(2)])
    trainer.train_step(images, labels)  # rate min(0.99, 1 - 1/1) = 0: the teacher copies the student
    assert torch.equal(_params(trainer.teacher), _params(trainer.student))
    teacher = _params(trainer.teacher).clone()
    trainer.train_step(images, labels)  # rate 1/2
    student = _params(trainer.student)
    torch.testing.assert_close(_params(trainer.teacher), 0.5 * teacher + 0.5 * student)


def test_fp32_is_the_cpu_default():
    assert Trainer(TrainConfig(**TINY), 3, "cpu").amp_dtype is None


def test_checkpoint_round_trip_gives_identical_next_step(tmp_path):
    data = Samples(n=4)
    trainer = Trainer(TrainConfig(epochs=1, **TINY), num_classes=3, device="cpu")
    trainer.fit(data, progress=False, checkpoint=tmp_path / "ck.pt")
    resumed = Trainer.load(tmp_path / "ck.pt", "cpu")
    assert (resumed.step, resumed.epoch) == (trainer.step, trainer.epoch) == (2, 1)
    images, labels = collate([data[i] for i in range(2)])
    rng = torch.get_rng_state()  # dropout draws from the global RNG, which both trainers share here
    a = trainer.train_step(images, labels)
    torch.set_rng_state(rng)
    b = resumed.train_step(images, labels)
    assert a == b
    assert torch.equal(_params(trainer.student), _params(resumed.student))
    assert torch.equal(_params(trainer.teacher), _params(resumed.teacher))
    assert torch.equal(trainer.bank.features(), resumed.bank.features())


def test_nan_loss_names_the_step_and_keeps_the_checkpoint(tmp_path):
    ck = tmp_path / "ck.pt"
    trainer = Trainer(TrainConfig(epochs=1, **TINY), num_classes=3, device="cpu")
    trainer.fit(Samples(n=4), progress=False, checkpoint=ck)
    digest = hashlib.sha256(ck.read_bytes()).hexdigest()
    with torch.no_grad():
        trainer.student.classifier[4].bias.fill_(float("nan"))
    with pytest.raises(FastalError, match=r"loss is nan at step 3 .*last good checkpoint .*ck\.pt is kept"):
        trainer.fit(Samples(n=4), progress=False, checkpoint=ck)
    assert hashlib.sha256(ck.read_bytes()).hexdigest() == digest
    assert Trainer.load(ck).step == 2


def test_empty_labelled_set_is_an_error():
    trainer = Trainer(TrainConfig(**TINY), num_classes=3, device="cpu")
    with pytest.raises(FastalError, match="no labelled pixel"):
        trainer.fit(Samples(n=3, ignore_all=True), epochs=1, progress=False)
    assert trainer.step == 0


def test_batches_without_labels_are_skipped():
    data = Samples(n=4)
    data.labels[2:] = 255
    trainer = Trainer(TrainConfig(**{**TINY, "batch_size": 2}), num_classes=3, device="cpu")
    stats = trainer.fit(data, epochs=1, progress=False)[0]
    assert stats["steps"] + stats["skipped"] == 2 and stats["skipped"] == 1


def test_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(FastalError, match="does not exist"):
        Trainer.load(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FastalError, match="junk.pt: not a fastal training checkpoint"):
        Trainer.load(tmp_path / "junk.pt")


def test_fully_supervised_synthetic_run_learns():
    from fastal.data import load_dataset

    train = load_dataset("synthetic", split="train", size=(32, 48), num_images=32)
    val = load_dataset("synthetic", split="val", size=(32, 48), num_images=12)
    cfg = TrainConfig(batch_size=8, epochs=4, lr=1e-3, negatives=64, bank_size=200, anchors_per_class=20)
    trainer = Trainer(cfg, train.num_classes, "cpu")
    history = trainer.fit(train, progress=False)
    assert history[-1]["ce"] < history[0]["ce"]
    for model in (trainer.student, trainer.teacher):
        m = evaluate(model, val, train.num_classes, "cpu")
        truth = m["confusion"].sum(1)
        constant = np.zeros_like(m["confusion"])
        constant[:, truth.argmax()] = truth  # the best constant predictor: the majority class everywhere
        assert m["miou"] > 2 * confusion_metrics(constant)["miou"]


def test_load_checks_the_number_of_classes(tmp_path):
    path = tmp_path / "ckpt.pt"
    Trainer(TrainConfig(backbone="resnet18"), 3, "cpu").save(path)
    assert Trainer.load(path, num_classes=3).num_classes == 3
    with pytest.raises(FastalError, match="has 3 classes, the dataset has 4"):
        Trainer.load(path, num_classes=4)


@pytest.mark.parametrize("room", [0, 10**6])
def test_checkpoint_on_a_full_disk_is_one_fastal_error(tmp_path, disk_with_room, room):
    # With some room left torch.save raises a RuntimeError over the write's OSError (as seen in
    # CI); with none, the OSError itself. Both must name the file and the cause.
    trainer = Trainer(TrainConfig(backbone="resnet18"), 3, "cpu")
    path = tmp_path / "ckpt.pt"
    disk_with_room(room)
    with pytest.raises(FastalError, match=f"cannot write {path}: No space left on device"):
        trainer.save(path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the method's knobs


def test_lambda_zero_is_a_cross_entropy_only_step(monkeypatch):
    # Independent reference: the same forward (same dropout draws) on a copy and torch's own
    # cross-entropy over the labelled pixels; the trainer's loss and gradients must be its.
    import copy

    import torch.nn.functional as F

    import fastal.train

    trainer = Trainer(TrainConfig(lam=0.0, flip=False, **TINY), num_classes=3, device="cpu")
    images, labels = collate([Samples()[i] for i in range(2)])
    trainer.train_step(images, labels)  # fills the bank: a contrastive term would now be nonzero
    assert trainer.bank.features().shape[0] > 0
    ref = copy.deepcopy(trainer.student)
    rng = torch.get_rng_state()
    logits, _ = ref(to_tensor_batch(images, "cpu"))
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, labels.long(), ignore_index=255)
    ce.backward()

    def no_contrastive(*a, **k):
        raise AssertionError("lambda = 0 must not sample the contrastive term")

    monkeypatch.setattr(fastal.train, "sample_contrastive", no_contrastive)
    torch.set_rng_state(rng)
    out = trainer.train_step(images, labels)
    assert out["loss"] == out["ce"] and out["nce"] == 0.0
    assert out["ce"] == pytest.approx(ce.item(), rel=1e-5)
    for (name, p), q in zip(trainer.student.named_parameters(), ref.parameters()):
        if q.grad is None:  # the projection head: no gradient without the InfoNCE term
            assert p.grad is None and name.startswith("proj"), name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bank_from_student_pushes_this_steps_student_features():
    import copy

    from fastal.model import MemoryBank, downsample_labels

    cfg = TrainConfig(bank_from="student", flip=False, **TINY)
    trainer = Trainer(cfg, num_classes=3, device="cpu")
    images, labels = collate([Samples()[i] for i in range(2)])
    student = copy.deepcopy(trainer.student).train()
    rng = torch.get_rng_state()
    with torch.no_grad():
        logits, emb = student(to_tensor_batch(images, "cpu"))
    expected = MemoryBank(3, cfg.proj_dim, cfg.per_image, cfg.bank_size)
    expected.push(emb, logits, downsample_labels(labels.long(), logits.shape[-2:]))
    torch.set_rng_state(rng)
    trainer.train_step(images, labels)
    assert expected.features().shape[0] > 0
    torch.testing.assert_close(trainer.bank.features(), expected.features())
    with pytest.raises(FastalError, match="bank_from = 'ema'"):
        TrainConfig(bank_from="ema")
    with pytest.raises(FastalError, match="lam = -1"):
        TrainConfig(lam=-1.0)


def test_bank_clear_leaves_a_new_bank():
    from fastal.model import MemoryBank

    trainer = Trainer(TrainConfig(**TINY), num_classes=3, device="cpu")
    images, labels = collate([Samples()[i] for i in range(2)])
    trainer.train_step(images, labels)
    assert trainer.bank.features().shape[0] > 0
    trainer.bank.clear()
    fresh = MemoryBank(3, 128, TINY["per_image"], TINY["bank_size"])
    assert trainer.bank.features().shape == (0, 128)
    for k, v in fresh.state_dict().items():
        assert torch.equal(torch.as_tensor(trainer.bank.state_dict()[k]), torch.as_tensor(v)), k
def test_train_step_counts_the_anchors_it_draws():
    from fastal.model import downsample_labels

    cfg = TrainConfig(**TINY)
    trainer = Trainer(cfg, num_classes=4, device="cpu")
    images, labels = collate([Samples(classes=3)[i] for i in range(2)])  # class 3 never labelled
    first = trainer.train_step(images, labels)
    assert first["anchors_per_class"] == [0, 0, 0, 0]  # empty bank: no class has a queue yet
    has_queue = (trainer.bank.count > 0).tolist()
    assert any(has_queue)
    second = trainer.train_step(images, labels)
    # Each class with a queue gets min(anchors_per_class, its labelled feature cells); a flip
    # does not change how many cells a class has.
    h, w = trainer.student(torch.zeros(1, 3, 16, 24))[0].shape[-2:]
    y = downsample_labels(labels.long(), (h, w)).flatten()
    cells = torch.bincount(y[y != 255], minlength=4).tolist()
    expected = [min(cfg.anchors_per_class, cells[c]) if has_queue[c] else 0 for c in range(4)]
    assert second["anchors_per_class"] == expected and second["anchors"] == sum(expected) > 0
