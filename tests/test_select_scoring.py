"""score_pool against a float64 reference built from the full-resolution maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastal.errors import FastalError
from fastal.select import score_pool
from fastal.train import to_tensor_batch


class TinyTeacher(torch.nn.Module):
    """(logits (B, C, h, w), emb (B, D, h, w)) at 1/``stride`` resolution, like a strided segmentation net."""

    def __init__(self, classes: int = 4, dim: int = 6, stride: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Conv2d(3, classes + dim, 3, stride=stride, padding=1)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(x)
        return out[:, : self.classes], F.normalize(out[:, self.classes :], dim=1)


class Images:
    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], np.zeros(self.images[i].shape[:2], np.uint8)

    def image_shape(self, i: int) -> tuple[int, int]:
        return self.images[i].shape[:2]


class Cache:
    """Blocks of 4x4 pixels as superpixels (realised counts vary with the image size)."""

    def __init__(self, ds: Images) -> None:
        self.maps = []
        for im in ds.images:
            h, w = im.shape[:2]
            cols = (w + 3) // 4
            self.maps.append(((np.arange(h)[:, None] // 4) * cols + np.arange(w)[None] // 4).astype(np.uint16))
        self.counts = np.array([int(m.max()) + 1 for m in self.maps], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.num_images = len(self.maps)

    def local(self, i: int) -> np.ndarray:
        return self.maps[i]


def _reference(teacher: TinyTeacher, ds: Images, cache: Cache, images: list[int]) -> tuple[np.ndarray, ...]:
    feats, ents, margins = [], [], []
    with torch.no_grad():
        for i in images:
            logits, emb = teacher(to_tensor_batch(ds.images[i], "cpu"))
            size = ds.images[i].shape[:2]
            emb_up = F.interpolate(emb.double(), size, mode="bilinear", align_corners=False)[0]
            logit_up = F.interpolate(logits.double(), size, mode="bilinear", align_corners=False)[0]
            p = torch.softmax(logit_up, 0)
            ent = -(p * torch.log2(p)).sum(0)
            prob_lowres_up = F.interpolate(torch.softmax(logits.double(), 1), size, mode="bilinear", align_corners=False)[0]
            sp = torch.from_numpy(cache.local(i).astype(np.int64))
            for s in range(int(cache.counts[i])):
                m = sp == s
                feats.append(emb_up[:, m].mean(1).numpy())
                ents.append(float(ent[m].sum()))
                top = torch.topk(prob_lowres_up[:, m].mean(1), 2).values
                margins.append(float(top[0] - top[1]))
    return np.array(feats), np.array(ents), np.array(margins)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_scores_match_reference(batch_size: int) -> None:
    ds = Images([(16, 20), (16, 20), (12, 24), (16, 20), (12, 24)])  # two shapes, interleaved
    cache = Cache(ds)
    teacher = TinyTeacher()
    images = [4, 0, 3, 2]
    scores = score_pool(teacher, ds, cache, images, "cpu", batch_size=batch_size, show_progress=False)
    feats, ents, margins = _reference(teacher, ds, cache, images)
    expected_gids = np.concatenate([np.arange(cache.offsets[i], cache.offsets[i + 1]) for i in images])
    np.testing.assert_array_equal(scores.gids, expected_gids)
    assert len(scores) == expected_gids.size
    np.testing.assert_allclose(scores.features.numpy(), feats, atol=1e-5)
    np.testing.assert_allclose(scores.entropy.numpy(), ents, rtol=1e-4)
    np.testing.assert_allclose(scores.margin.numpy(), margins, atol=1e-5)
    assert teacher.training  # restored after scoring


def test_prediction_outputs_and_pool_statistics_match_reference() -> None:
    # Per pixel in float64: the softmax of the upsampled logits (predicted class, p2/p1) and the
    # upsampled low-res softmax (the pool's mean class probability, as the margin's means).
    ds = Images([(16, 20), (12, 24), (16, 20)])
    cache = Cache(ds)
    teacher = TinyTeacher(classes=5)
    scores = score_pool(teacher, ds, cache, [2, 0, 1], "cpu", batch_size=2, show_progress=False)
    rows: dict[str, list] = {k: [] for k in ("pixels", "predicted", "impurity", "mean_entropy", "ratio", "by_class")}
    prob_sum, total = np.zeros(5), 0
    with torch.no_grad():
        for i in [2, 0, 1]:
            logits = teacher(to_tensor_batch(ds.images[i], "cpu"))[0].double()
            size = ds.images[i].shape[:2]
            p = torch.softmax(F.interpolate(logits, size, mode="bilinear", align_corners=False)[0], 0).numpy()
            prob_sum += F.interpolate(torch.softmax(logits, 1), size, mode="bilinear", align_corners=False)[0].sum((1, 2)).numpy()
            total += size[0] * size[1]
            top = np.sort(p, 0)
            ratio, pred = top[-2] / top[-1], p.argmax(0)
            ent = -(p * np.log2(p)).sum(0)
            sp = cache.local(i).astype(np.int64)
            for s in range(int(cache.counts[i])):
                m = sp == s
                hist = np.bincount(pred[m], minlength=5)
                dist = hist[hist > 0] / m.sum()
                rows["pixels"].append(m.sum())
                rows["predicted"].append(hist.argmax())
                rows["impurity"].append(-(dist * np.log(dist)).sum() / np.log(5))
                rows["mean_entropy"].append(ent[m].mean() / np.log2(5))
                rows["ratio"].append(ratio[m].mean())
                rows["by_class"].append(np.bincount(pred[m], weights=ratio[m], minlength=5))
    assert scores.pixels.tolist() == rows["pixels"] and scores.predicted.tolist() == rows["predicted"]
    for name in ("impurity", "mean_entropy", "ratio"):
        np.testing.assert_allclose(getattr(scores, name).numpy(), rows[name], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(scores.ratio_by_class.numpy(), np.array(rows["by_class"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.class_prob.numpy(), prob_sum / total, rtol=1e-5)
    # Class frequencies of the dominant predicted classes, by regions and by pixels.
    pred, pixels = np.array(rows["predicted"]), np.array(rows["pixels"], float)
    np.testing.assert_allclose(scores.class_frequency().numpy(), np.bincount(pred, minlength=5) / pred.size)
    np.testing.assert_allclose(scores.class_frequency("pixels").numpy(),
                               np.bincount(pred, weights=pixels, minlength=5) / pixels.sum())  # fmt: skip


@pytest.mark.parametrize("amp", ["fp32", False, "auto", None])
def test_amp_settings_that_mean_fp32_on_cpu_give_exact_scores(amp) -> None:
    ds = Images([(16, 20)] * 2)
    cache = Cache(ds)
    ref = score_pool(TinyTeacher(), ds, cache, [0, 1], "cpu", amp=False, show_progress=False)
    got = score_pool(TinyTeacher(), ds, cache, [0, 1], "cpu", amp=amp, show_progress=False)
    assert torch.equal(got.features, ref.features) and torch.equal(got.entropy, ref.entropy)
    bf16 = score_pool(TinyTeacher(), ds, cache, [0, 1], "cpu", amp="bf16", show_progress=False)
    assert not torch.equal(bf16.features, ref.features)  # autocast really applies when asked
    with pytest.raises(FastalError, match="amp = 'fp8'"):
        score_pool(TinyTeacher(), ds, cache, [0, 1], "cpu", amp="fp8", show_progress=False)


def test_bad_image_indices() -> None:
    ds = Images([(8, 8)])
    with pytest.raises(FastalError, match="image_indices outside 0..0"):
        score_pool(TinyTeacher(), ds, Cache(ds), [1], "cpu", show_progress=False)


@pytest.mark.gpu
def test_cuda_scores_match_cpu() -> None:
    ds = Images([(32, 40)] * 3)
    cache = Cache(ds)
    cpu = score_pool(TinyTeacher(), ds, cache, [0, 1, 2], "cpu", show_progress=False)
    gpu = score_pool(TinyTeacher().cuda(), ds, cache, [0, 1, 2], "cuda", amp=False, show_progress=False)
    assert gpu.features.device.type == "cuda"
    torch.testing.assert_close(gpu.features.cpu(), cpu.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.entropy.cpu(), cpu.entropy, atol=1e-3, rtol=1e-4)


def test_per_pixel_entropy_divides_by_each_rows_region_size() -> None:
    from fastal.select.scoring import PoolScores, per_pixel_entropy

    sizes = np.array([10, 40, 5, 20])  # by global id
    scores = PoolScores(torch.zeros(3, 2), torch.tensor([8.0, 8.0, 2.0]), torch.zeros(3), np.array([3, 1, 2]))
    out = per_pixel_entropy(scores, sizes)
    torch.testing.assert_close(out.entropy, torch.tensor([8 / 20, 8 / 40, 2 / 5]))
    assert out.gids is scores.gids and torch.equal(scores.entropy, torch.tensor([8.0, 8.0, 2.0]))  # input kept
