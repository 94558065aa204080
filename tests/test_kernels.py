"""fastal.kernels against hand-computed cases, a naive float64 numpy twin, and the torch reference.

Every behavioural test runs on each device: the CPU (numba), numba's CUDA simulator (calling the
``fastal.kernels.cuda`` functions directly on CPU tensors, as CI has no GPU), and a real GPU when
there is one. Inputs are rounded to the tested dtype before the float64 twin sees them, so the
tolerances only cover float32 accumulation. The simulator is slow: inputs stay tiny.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastal.kernels as K
from fastal.errors import FastalError
from fastal.kernels import reference

OPS = ("segment_sum", "segment_mean", "segment_argmax", "superpixel_mean_features", "superpixel_entropy_sum",
       "superpixel_prediction_stats")  # fmt: skip
# Composed once in ops.py, no backend function: segment_mean from segment_sum and the segment sizes,
# superpixel_entropy_sum from superpixel_prediction_stats.
COMPOSED = ("segment_mean", "superpixel_entropy_sum")


def _simulated() -> bool:
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


DEVICES = [
    "cpu",
    pytest.param("cuda-sim", marks=pytest.mark.skipif(not _simulated(), reason="CUDA simulator is off (GPU present)")),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
# All four float dtypes are supported on every device; halves are accumulated in float32.
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def run(device: str, op: str, *args):
    """Call kernel ``op`` on ``device`` with CPU tensors in, CPU tensors out."""
    if device == "cuda-sim":
        from fastal.kernels import cuda
        from fastal.kernels.ops import divide_by_counts

        if op == "segment_mean":  # as ops.py composes it, over the simulated segment_sum
            return divide_by_counts(cuda.segment_sum(*args), args[1], args[2])
        if op == "superpixel_entropy_sum":
            return cuda.superpixel_prediction_stats(*args)[0]
        return getattr(cuda, op)(*args)
    moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(K, op)(*moved)
    return tuple(t.cpu() for t in out) if isinstance(out, tuple) else out.cpu()


def tol(dtype: torch.dtype) -> dict:
    # Inputs are already rounded to dtype: what is left is the accumulator's rounding.
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- naive float64 twins


def naive_segment_sum(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *values.shape[1:]))
    for v, s in zip(values, seg):
        out[s] += v
    return out


def naive_segment_mean(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(seg, minlength=n).reshape(-1, *([1] * (values.ndim - 1)))
    return naive_segment_sum(values, seg, n) / np.maximum(counts, 1)


def naive_argmax(scores: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1)
    for i, (v, s) in enumerate(zip(scores, seg)):
        j = out[s]
        if j < 0 or (np.isnan(v) and not np.isnan(scores[j])) or (not np.isnan(scores[j]) and v > scores[j]):
            out[s] = i
    return out


def naive_upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, C, h, w) -> (B, C, H, W) by torch's align_corners=False rule, pixel by pixel in float64."""

    def source(dst: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), min(max(src - i0, 0.0), 1.0)

    b, c, h, w = maps.shape
    out = np.zeros((b, c, height, width))
    for y in range(height):
        ya, yb, ly = source(y, h, height)
        for x in range(width):
            xa, xb, lx = source(x, w, width)
            out[:, :, y, x] = (1 - ly) * ((1 - lx) * maps[:, :, ya, xa] + lx * maps[:, :, ya, xb]) + ly * (
                (1 - lx) * maps[:, :, yb, xa] + lx * maps[:, :, yb, xb]
            )
    return out


def naive_mean_features(feat: np.ndarray, sp: np.ndarray, n: int) -> np.ndarray:
    up = naive_upsample(feat, *sp.shape[1:])
    return naive_segment_mean(up.transpose(0, 2, 3, 1).reshape(-1, feat.shape[1]), sp.reshape(-1), n)


def naive_entropy_sum(logits: np.ndarray, sp: np.ndarray, n: int) -> np.ndarray:
    z = naive_upsample(logits, *sp.shape[1:])
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=1)
    return naive_segment_sum(entropy.reshape(-1), sp.reshape(-1), n)


def naive_prediction_stats(logits: np.ndarray, sp: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """(entropy (n,), pixels by predicted class (n, C), summed p2/p1 by predicted class (n, C))."""
    z = naive_upsample(logits, *sp.shape[1:])  # (B, C, H, W)
    classes = z.shape[1]
    predicted = z.argmax(axis=1)  # the first maximum
    top2 = np.sort(z, axis=1)[:, -2:] if classes > 1 else None
    ratio = np.exp(top2[:, 0] - top2[:, 1]) if classes > 1 else np.zeros(predicted.shape)
    counts, ratios = np.zeros((n, classes)), np.zeros((n, classes))
    for s, k, r in zip(sp.reshape(-1), predicted.reshape(-1), ratio.reshape(-1)):
        counts[s, k] += 1
        ratios[s, k] += r
    return naive_entropy_sum(logits, sp, n), counts, ratios


def check_prediction_stats(got: tuple[torch.Tensor, ...], logits: torch.Tensor, sp: torch.Tensor, n: int) -> None:
    entropy, counts, ratio = got
    assert (entropy.dtype, counts.dtype, ratio.dtype) == (torch.float32, torch.int32, torch.float32)
    assert counts.shape == ratio.shape == (n, logits.shape[1])
    want = naive_prediction_stats(as64(logits), sp.numpy(), n)
    torch.testing.assert_close(entropy.double(), torch.from_numpy(want[0]), rtol=2e-5, atol=2e-5)
    assert counts.tolist() == want[1].astype(int).tolist()
    torch.testing.assert_close(ratio.double(), torch.from_numpy(want[2]), rtol=2e-5, atol=2e-5)


def as64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("device", DEVICES)
def test_segment_sum_and_mean_by_hand(device):
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    seg = torch.tensor([0, 2, 0])
    assert run(device, "segment_sum", values, seg, 4).tolist() == [[6, 8], [0, 0], [3, 4], [0, 0]]
    assert run(device, "segment_mean", values, seg, 4).tolist() == [[3, 4], [0, 0], [3, 4], [0, 0]]
    assert run(device, "segment_sum", values[:, 1], seg, 3).tolist() == [8, 0, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_segment_argmax_by_hand(device):
    scores = torch.tensor([-3.0, -1.0, -1.0, -2.0, 5.0, float("nan"), 1.0, float("nan")])
    seg = torch.tensor([0, 0, 0, 0, 2, 3, 3, 3])
    # ties -> lowest index; all-negative segment; empty -> -1; NaN counts as largest, first NaN wins
    assert run(device, "segment_argmax", scores, seg, 5).tolist() == [1, -1, 4, 5, -1]


@pytest.mark.parametrize("device", DEVICES)
def test_mean_features_by_hand(device):
    # One row [0, 1] upsampled to width 4 reads 0, 0.25, 0.75, 1 (first and last taps clamped).
    feat = torch.tensor([[[[0.0, 1.0]]]])
    sp = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    out = run(device, "superpixel_mean_features", feat, sp, 3)
    torch.testing.assert_close(out, torch.tensor([[0.125], [0.875], [0.0]]))
    whole = run(device, "superpixel_mean_features", feat, torch.zeros_like(sp), 1)
    torch.testing.assert_close(whole, torch.tensor([[0.5]]))


@pytest.mark.parametrize("device", DEVICES)
def test_entropy_by_hand(device):
    # Constant logits stay constant when upsampled: softmax [1/4, 3/4] has 0.811278 bits per pixel;
    # four equal logits have 2 bits.
    two = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 2, 3)
    sp = torch.tensor([[[0, 0, 0, 2], [0, 0, 2, 2], [2, 2, 2, 2]]])
    out = run(device, "superpixel_entropy_sum", two, sp, 3)
    bits = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    torch.testing.assert_close(out, torch.tensor([5 * bits, 0.0, 7 * bits]))
    uniform = run(device, "superpixel_entropy_sum", torch.zeros(1, 4, 2, 2), torch.zeros(1, 5, 3, dtype=torch.int64), 1)
    torch.testing.assert_close(uniform, torch.tensor([30.0]))


@pytest.mark.parametrize("device", DEVICES)
def test_prediction_stats_by_hand(device):
    # Constant logits [0, log 3]: every pixel predicts class 1 with p2/p1 = (1/4) / (3/4) = 1/3.
    two = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 2, 3)
    sp = torch.tensor([[[0, 0, 0, 2], [0, 0, 2, 2], [2, 2, 2, 2]]])
    entropy, counts, ratio = run(device, "superpixel_prediction_stats", two, sp, 3)
    assert counts.tolist() == [[0, 5], [0, 0], [0, 7]]
    torch.testing.assert_close(ratio, torch.tensor([[0.0, 5 / 3], [0.0, 0.0], [0.0, 7 / 3]]))
    # A tie predicts the lower class, with ratio 1; one class has no runner-up: ratio 0.
    _, counts, ratio = run(device, "superpixel_prediction_stats", torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64), 1)
    assert counts.tolist() == [[4, 0, 0]] and ratio.tolist() == [[4.0, 0.0, 0.0]]
    _, counts, ratio = run(device, "superpixel_prediction_stats", torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64), 1)
    assert counts.tolist() == [[4]] and ratio.tolist() == [[0.0]]


# ---------------------------------------------------------------- random comparisons


def _segments(rng: np.random.Generator, n: int, num: int) -> torch.Tensor:
    # ids drawn from the lower 3/4 only, so the upper segments are empty
    return torch.from_numpy(rng.integers(0, max(1, num * 3 // 4), n))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(57, 5), (40,), (33, 1)])
def test_segment_ops_random(device, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    num = 9
    values = torch.from_numpy(rng.normal(size=shape) * 4).to(dtype)
    seg = _segments(rng, shape[0], num)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for op, naive in (("segment_sum", naive_segment_sum), ("segment_mean", naive_segment_mean)):
        out = run(device, op, values, seg, num)
        assert out.dtype == acc and out.shape == (num, *shape[1:])
        torch.testing.assert_close(out.double(), torch.from_numpy(naive(as64(values), seg.numpy(), num)), **tol(dtype))
        torch.testing.assert_close(out, getattr(reference, op)(values, seg, num), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_argmax_random_with_ties(device, dtype):
    rng = np.random.default_rng(7)
    scores = torch.from_numpy(rng.integers(-3, 3, 61).astype(np.float64)).to(dtype)  # many ties
    seg = _segments(rng, 61, 10)
    out = run(device, "segment_argmax", scores, seg, 10)
    assert out.dtype == torch.int64
    assert out.tolist() == naive_argmax(as64(scores), seg.numpy(), 10).tolist()
    assert out.tolist() == reference.segment_argmax(scores, seg, 10).tolist()


# (h, w) -> (H, W): ratios that do not divide, an odd upsampling, equal sizes on one axis.
SHAPES = [((3, 5), (11, 13)), ((4, 4), (9, 16)), ((2, 6), (7, 6))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("low,high", SHAPES)
def test_superpixel_functions_random(device, dtype, low, high):
    rng = np.random.default_rng(low[0] * 100 + high[1])
    num = 8
    sp = _segments(rng, 2 * high[0] * high[1], num).view(2, *high)
    feat = torch.from_numpy(rng.normal(size=(2, 5, *low))).to(dtype)
    logits = torch.from_numpy(rng.normal(size=(2, 4, *low)) * 3).to(dtype)
    mean = run(device, "superpixel_mean_features", feat, sp, num)
    assert mean.dtype == torch.float32 and mean.shape == (num, 5)
    expected = naive_mean_features(as64(feat), sp.numpy(), num)
    torch.testing.assert_close(mean.double(), torch.from_numpy(expected), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(mean, reference.superpixel_mean_features(feat, sp, num), rtol=1e-5, atol=1e-5)
    entropy = run(device, "superpixel_entropy_sum", logits, sp, num)
    assert entropy.dtype == torch.float32 and entropy.shape == (num,)
    expected = naive_entropy_sum(as64(logits), sp.numpy(), num)
    torch.testing.assert_close(entropy.double(), torch.from_numpy(expected), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(entropy, reference.superpixel_entropy_sum(logits, sp, num), rtol=1e-5, atol=1e-4)
    stats = run(device, "superpixel_prediction_stats", logits, sp, num)
    check_prediction_stats(stats, logits, sp, num)
    ref = reference.superpixel_prediction_stats(logits, sp, num)
    assert torch.equal(stats[1], ref[1])
    torch.testing.assert_close(stats[2], ref[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.normal(size=(40, 6))).float()
    values, seg = base[::2, ::2], torch.from_numpy(rng.integers(0, 5, 40))[::2]  # strided rows and columns
    assert not values.is_contiguous() and not seg.is_contiguous()
    expected = naive_segment_sum(as64(values), seg.numpy(), 5)
    torch.testing.assert_close(run(device, "segment_sum", values, seg, 5).double(), torch.from_numpy(expected))
    torch.testing.assert_close(
        run(device, "segment_argmax", base[:, 1], seg.repeat(2), 5),
        torch.from_numpy(naive_argmax(as64(base[:, 1]), seg.repeat(2).numpy(), 5)),
    )
    feat = torch.from_numpy(rng.normal(size=(1, 3, 4, 5))).float().permute(0, 1, 3, 2)  # (1, 3, 5, 4), transposed
    sp = torch.from_numpy(rng.integers(0, 6, (1, 12, 9))).transpose(1, 2)  # (1, 9, 12)
    torch.testing.assert_close(
        run(device, "superpixel_mean_features", feat, sp, 6).double(),
        torch.from_numpy(naive_mean_features(as64(feat), sp.numpy(), 6)),
        rtol=2e-5,
        atol=2e-5,
    )
    torch.testing.assert_close(
        run(device, "superpixel_entropy_sum", feat, sp, 6).double(),
        torch.from_numpy(naive_entropy_sum(as64(feat), sp.numpy(), 6)),
        rtol=2e-5,
        atol=2e-5,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    none = torch.zeros(0, dtype=torch.int64)
    assert run(device, "segment_sum", torch.zeros(0, 3), none, 2).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert run(device, "segment_argmax", torch.zeros(0), none, 2).tolist() == [-1, -1]
    assert run(device, "segment_mean", torch.zeros(0), none, 0).shape == (0,)
    no_pixels = torch.zeros(1, 0, 4, dtype=torch.int64)
    assert run(device, "superpixel_mean_features", torch.ones(1, 3, 2, 2), no_pixels, 2).tolist() == [[0] * 3] * 2
    assert run(device, "superpixel_entropy_sum", torch.ones(1, 3, 2, 2), no_pixels, 2).tolist() == [0, 0]
    _, counts, ratio = run(device, "superpixel_prediction_stats", torch.ones(1, 3, 2, 2), no_pixels, 2)
    assert counts.tolist() == [[0] * 3] * 2 and ratio.tolist() == [[0.0] * 3] * 2


def test_cpu_matches_reference_at_moderate_size():
    # Larger than the simulator can afford: SEEDS-like blocks, several threads' worth of rows.
    rng = np.random.default_rng(11)
    blocks = np.arange(12 * 16).reshape(12, 16).repeat(8, 0).repeat(8, 1)  # (96, 128), 192 blocks of 8x8
    sp = torch.from_numpy(np.stack([blocks, blocks + 192]))  # two images, global ids
    feat = torch.from_numpy(rng.normal(size=(2, 32, 12, 16))).float()
    logits = torch.from_numpy(rng.normal(size=(2, 11, 12, 16)) * 4).float()
    torch.testing.assert_close(
        K.superpixel_mean_features(feat, sp, 400), reference.superpixel_mean_features(feat, sp, 400), rtol=1e-5, atol=1e-5
    )
    got, want = K.superpixel_prediction_stats(logits, sp, 400), reference.superpixel_prediction_stats(logits, sp, 400)
    torch.testing.assert_close(got.entropy, want[0], rtol=1e-5, atol=1e-3)
    assert torch.equal(got.counts, want[1])
    torch.testing.assert_close(got.ratio, want[2], rtol=1e-5, atol=1e-4)
    values = torch.from_numpy(rng.normal(size=(70_000, 16))).float()  # > 2**20 elements: threaded
    many = torch.from_numpy(rng.integers(0, 60_000, 70_000))
    # S ~ N: counting-sort path; S << N: per-thread private sums; one column: the 1-D path
    for rows, seg, num in ((values, many, 60_000), (values, many % 7, 7), (values[:, 3], many % 5, 5)):
        torch.testing.assert_close(K.segment_mean(rows, seg, num), reference.segment_mean(rows, seg, num))


@pytest.mark.parametrize("device", DEVICES)
def test_results_are_bitwise_repeatable(device):
    rng = np.random.default_rng(5)
    sp = torch.from_numpy(rng.integers(0, 6, (2, 9, 11)))
    maps = torch.from_numpy(rng.normal(size=(2, 4, 3, 4))).float()
    values = torch.from_numpy(rng.normal(size=(99, 3))).float()
    seg = sp.reshape(-1)[:99]
    for op, args in (
        ("superpixel_mean_features", (maps, sp, 6)),
        ("superpixel_entropy_sum", (maps, sp, 6)),
        ("segment_sum", (values, seg, 6)),
    ):
        assert torch.equal(run(device, op, *args), run(device, op, *args)), op
    first, again = (run(device, "superpixel_prediction_stats", maps, sp, 6) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.gpu
def test_cuda_kernels_follow_torchs_current_stream():
    rng = np.random.default_rng(9)
    sp = torch.from_numpy(rng.integers(0, 50, (2, 64, 96))).cuda()
    feat = torch.from_numpy(rng.normal(size=(2, 32, 8, 12))).float().cuda()
    expected = reference.superpixel_mean_features(feat, sp, 50)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = K.superpixel_mean_features(feat * 1, sp, 50)  # the input is produced on the side stream too
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=25)
@given(
    low=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    high=st.tuples(st.integers(1, 14), st.integers(1, 14)),
    num=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_superpixel_functions_match_naive_for_any_sizes(low, high, num, seed):
    # Any sizes on the CPU, including downsampling (H < h) and single rows or columns.
    rng = np.random.default_rng(seed)
    sp = torch.from_numpy(rng.integers(0, num, (1, *high)))
    maps = torch.from_numpy(rng.normal(size=(1, 3, *low)) * 3).float()
    expected = naive_mean_features(as64(maps), sp.numpy(), num)
    got = K.superpixel_mean_features(maps, sp, num).double()
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=2e-5, atol=2e-5)
    check_prediction_stats(K.superpixel_prediction_stats(maps, sp, num), maps, sp, num)


# ---------------------------------------------------------------- API contract


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: K.segment_sum(torch.ones(3), torch.tensor([0, 1, 5]), 4), r"ids span \[0, 5\], outside \[0, num_segments = 4\)"),
        (lambda: K.segment_sum(torch.ones(3), torch.tensor([0, -1, 1]), 4), "outside"),
        (lambda: K.segment_mean(torch.ones(3), torch.tensor([0, 1]), 4), r"expected shape \[3\]"),
        (lambda: K.segment_sum(torch.ones(3, dtype=torch.int64), torch.tensor([0, 1, 1]), 4), "not a float type"),
        (lambda: K.segment_argmax(torch.ones(3, 2), torch.tensor([0, 1, 1]), 4), r"expected shape \[N\]"),
        (lambda: K.segment_sum(torch.ones(3), torch.tensor([0.0, 1.0, 1.0]), 4), "not an integer id type"),
        (lambda: K.segment_sum(torch.ones(3), torch.tensor([0, 1, 1]), 4.0), "num_segments = 4.0 is not an integer"),
        (lambda: K.superpixel_mean_features(torch.ones(2, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.int64), 1), r"\[2, H, W\]"),
        (lambda: K.superpixel_entropy_sum(torch.ones(3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.int64), 1), r"\[B, D, h, w\]"),
        (lambda: K.superpixel_entropy_sum(torch.ones(1, 3, 4, 4), torch.full((1, 8, 8), 3), 3), "num_sp = 3"),
        (lambda: K.segment_sum(torch.ones(3, device="meta"), torch.zeros(3, dtype=torch.int64, device="meta"), 1), "no implementation"),
    ],
)
def test_bad_input_raises_fastal_error(call, message):
    with pytest.raises(FastalError, match=message):
        call()


def test_inputs_are_not_modified():
    feat = torch.randn(1, 4, 3, 3)
    sp = torch.randint(0, 5, (1, 7, 7))
    before = feat.clone(), sp.clone()
    K.superpixel_mean_features(feat, sp, 5)
    K.superpixel_entropy_sum(feat, sp, 5)
    assert torch.equal(feat, before[0]) and torch.equal(sp, before[1])


def test_every_op_has_one_signature_per_device():
    import inspect

    from fastal.kernels import cpu, cuda

    for op in OPS:
        if op in COMPOSED:
            assert not hasattr(cpu, op) and not hasattr(cuda, op), op
            continue
        public = list(inspect.signature(getattr(K, op)).parameters)
        assert list(inspect.signature(getattr(cpu, op)).parameters) == public
        assert list(inspect.signature(getattr(cuda, op)).parameters) == public
