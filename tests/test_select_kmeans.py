"""Torch KMeans against scikit-learn and its own contract (labels = nearest centre)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from fastal.errors import FastalError
from fastal.select.kmeans.estimator import TorchKMeans, assignment_ops, full_assign


def _nearest_f64(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(2)
    return d.argmin(1), d.min(1)


_CASES = [(4000, 60, 2, 60), (3000, 20, 16, 20), (3000, 150, 2, 15)]
_ONE_PERCENT = [(10000, 100, 2, 1000), (10000, 100, 2, 30)]  # k = 1 % of n (the selection's)


@pytest.mark.parametrize(
    ("n", "k", "d", "centres", "use_numba"),
    # tensor: the CUDA code path (same seeding; slower on the CPU, so on the smaller cases)
    [(*c, True) for c in _CASES + _ONE_PERCENT] + [(*c, False) for c in _CASES + _ONE_PERCENT[:1]],
)
def test_inertia_within_a_few_percent_of_sklearn(n: int, k: int, d: int, centres: int, use_numba: bool) -> None:
    # Mean over seeds: with k near the number of true clusters one seed of either side may
    # land in a local minimum (scikit-learn's own KMeans does on 3 of 10 seeds at (3000, 20, 16)).
    x, _ = make_blobs(n, d, centers=centres, cluster_std=1.5, random_state=0)
    x = x.astype(np.float32)
    ours = [TorchKMeans(k, random_state=s, use_numba=use_numba).fit(torch.from_numpy(x)) for s in range(4)]
    ref = [KMeans(k, n_init=1, random_state=s).fit(x).inertia_ for s in range(4)]
    print(f"n={n} k={k}: inertia / scikit-learn's {np.mean([o.inertia_ for o in ours]) / np.mean(ref):.4f}")
    assert np.mean([o.inertia_ for o in ours]) <= np.mean(ref) * 1.03
    # The fitted labels are each point's nearest centre, and inertia is their squared distance.
    for o in ours:
        lab, d2 = _nearest_f64(x, o.cluster_centers_.numpy())
        agree = lab == o.labels_.numpy()
        assert agree.mean() > 0.999  # float32 vs float64 near-ties only
        assert o.inertia_ == pytest.approx(d2.sum(), rel=1e-4)
        assert o.labels_.dtype == torch.int64 and o.cluster_centers_.shape == (k, d)


@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "tensor"])
def test_pruned_assignment_equals_full_scan(use_numba: bool) -> None:
    x, _ = make_blobs(5000, 3, centers=40, random_state=1)
    x = torch.from_numpy(x.astype(np.float32))
    km = TorchKMeans(300, n_candidates=8, random_state=0, use_numba=use_numba)
    centres = x[torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:300]]
    start = torch.randint(300, (5000,), generator=torch.Generator().manual_seed(1))  # bad guesses too
    ops = assignment_ops(x, use_numba, km.chunk_size, unsure_cap=5000)
    got, got_d2 = km._assign(ops, x, centres, start)
    ref, ref_d2 = full_assign(x, centres)
    torch.testing.assert_close(got_d2, ref_d2, rtol=1e-5, atol=1e-4)
    assert (got == ref).float().mean() > 0.999


@pytest.mark.parametrize("rows", [40, 600])  # all rows compared with every point; through the k-d tree
def test_seeding_distance_passes_equal_a_float64_scan(rows: int) -> None:
    # Clustered points with a heavy tail: far points have every candidate nearer than their seed
    # (the tree's list is not enough for them), near ones only a few.
    from fastal.select.kmeans.cpu import seed_gains_cpu, seed_update_cpu

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(8, 2))[rng.integers(8, size=6000)] + rng.standard_t(2, size=(6000, 2)) * 0.3).astype(np.float32)
    seeds, cand = x[rng.choice(6000, 30, replace=False)], x[rng.choice(6000, rows, replace=False)]
    d2 = _nearest_f64(x, seeds)[1]
    gains = seed_gains_cpu(torch.from_numpy(x), torch.from_numpy(d2), torch.from_numpy(cand)).numpy()
    # The kernels square float32 differences and add in float64: so does the reference, so that
    # a pair left out shows (a float64 scan differs from both by ~1e-6 relative).
    t = x[:, None, :] - cand[None]
    pair = (t[..., 0] * t[..., 0]).astype(np.float64) + (t[..., 1] * t[..., 1]).astype(np.float64)
    np.testing.assert_allclose(gains, np.where(pair < d2[:, None], d2[:, None] - pair, 0).sum(0), rtol=1e-12)
    got = torch.from_numpy(d2.copy())
    seed_update_cpu(torch.from_numpy(x), got, torch.from_numpy(cand))
    np.testing.assert_allclose(got.numpy(), np.minimum(d2, pair.min(1)), rtol=1e-12)


def _moves(centres: torch.Tensor, rounds: int) -> list[torch.Tensor]:
    """Centres moved as Lloyd moves them (small steps, shrinking) plus a few long jumps (an
    emptied cluster's centre moved onto a far point)."""
    g = torch.Generator().manual_seed(5)
    out, c = [], centres
    for r in range(rounds):
        c = c + torch.randn(c.shape, generator=g) * 0.3 / (r + 1)
        jump = torch.randperm(c.shape[0], generator=g)[:3]
        c[jump] = torch.randn(3, c.shape[1], generator=g) * 6
        out.append(c.clone())
    return out


@pytest.mark.parametrize(
    ("k", "groups", "offset"),
    # groups of 10; one group (k < 10); groups of one and two centres; far from the origin, where
    # the first scan's matmul rounding must come off the bounds
    [(120, 12, 0.0), (7, 1, 0.0), (30, 20, 0.0), (120, 12, 30.0)],
)
def test_group_bounds_find_the_nearest_centre_and_stay_lower_bounds(k: int, groups: int, offset: float) -> None:
    from fastal.select.kmeans.bounds import GroupBounds

    x = make_blobs(3000, 64, centers=30, cluster_std=2.0, random_state=6)[0] + offset
    x = torch.from_numpy(x.astype(np.float32))
    centres = x[torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:k]].clone()
    group = torch.arange(k) % groups  # the centres of a group far apart: the bounds are loose
    gb = GroupBounds(x, centres, group)
    x64 = x.double().numpy()
    for c in [centres, *_moves(centres, 6)]:
        labels, d2 = (gb.labels, gb.d2) if c is centres else gb.assign(c)
        d = np.sqrt(((x64[:, None, :] - c.double().numpy()[None]) ** 2).sum(2))  # (N, k) float64
        nearest = d.min(1)
        got = d[np.arange(3000), labels.numpy()]
        np.testing.assert_allclose(got, nearest, rtol=1e-5)  # the nearest, up to float32 ties
        assert (labels.numpy() == d.argmin(1)).mean() > 0.999
        np.testing.assert_allclose(d2.numpy(), nearest**2, rtol=1e-4)
        # Each group's bound is at most the distance to the group's centres other than the
        # point's own, up to float32 rounding of a distance.
        own = gb.order[gb.a].numpy()
        d[np.arange(3000), own] = np.inf
        for gi in range(groups):
            members = np.flatnonzero(group.numpy() == gi)
            assert (gb.low[:, gi].numpy() <= d[:, members].min(1) * (1 + 1e-6) + 1e-6).all(), f"group {gi}"


def test_group_bounds_fit_as_full_scans_do() -> None:
    # Same seeds, same Lloyd iterations: the bounds only skip distances.
    x = torch.from_numpy(make_blobs(6000, 32, centers=40, cluster_std=3.0, random_state=7)[0].astype(np.float32))
    a = TorchKMeans(150, random_state=2).fit(x)
    b = TorchKMeans(150, random_state=2, bounds=False).fit(x)
    assert a.n_iter_ == b.n_iter_ > 3
    assert (a.labels_ == b.labels_).float().mean() > 0.999
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-5)


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    x = torch.from_numpy(make_blobs(2000, 2, centers=30, random_state=2)[0].astype(np.float32))
    a = TorchKMeans(25, random_state=4).fit(x)
    b = TorchKMeans(25, random_state=4).fit(x)
    c = TorchKMeans(25, random_state=5).fit(x)
    assert torch.equal(a.labels_, b.labels_) and torch.equal(a.cluster_centers_, b.cluster_centers_)
    assert not torch.equal(a.cluster_centers_, c.cluster_centers_)


def test_duplicate_points_leave_no_cluster_empty_when_avoidable() -> None:
    # 6 distinct values repeated; k = 6 must put one centre on each value.
    vals = torch.tensor([[0.0, 0], [5, 5], [10, 0], [0, 10], [7, 7], [3, 9]])
    x = vals.repeat(50, 1)
    km = TorchKMeans(6, random_state=0).fit(x)
    assert torch.bincount(km.labels_, minlength=6).min() > 0
    assert km.inertia_ == pytest.approx(0.0, abs=1e-6)


def test_more_clusters_than_distinct_points_still_returns_valid_labels() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    km = TorchKMeans(5, random_state=0).fit(x)
    assert km.labels_.min() >= 0 and km.labels_.max() < 5
    assert km.inertia_ == pytest.approx(0.0, abs=1e-6)


def test_bad_input() -> None:
    with pytest.raises(FastalError, match="N >= n_clusters = 10"):
        TorchKMeans(10).fit(torch.zeros(5, 2))


@pytest.mark.gpu
def test_cuda_matches_cpu_inertia() -> None:
    x = torch.from_numpy(make_blobs(20000, 2, centers=100, random_state=3)[0].astype(np.float32))
    cpu = TorchKMeans(200, random_state=0).fit(x)
    gpu = TorchKMeans(200, random_state=0).fit(x.cuda())
    assert gpu.labels_.device.type == "cuda"
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=0.03)


@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "tensor"])
def test_seeding_on_a_sample_keeps_quality(use_numba: bool) -> None:
    x, _ = make_blobs(6000, 2, centers=40, cluster_std=1.5, random_state=4)
    x = x.astype(np.float32)
    ours = TorchKMeans(100, seed_sample=0, random_state=0, use_numba=use_numba).fit(torch.from_numpy(x))  # seeds from 2,000
    ref = KMeans(100, n_init=1, random_state=0).fit(x)
    assert ours.inertia_ <= ref.inertia_ * 1.03
    lab, _ = _nearest_f64(x, ours.cluster_centers_.numpy())
    assert (lab == ours.labels_.numpy()).mean() > 0.999


def test_kd_tree_neighbour_lists_match_the_tensor_ones() -> None:
    # The CPU path's k-d tree lists (kmeans.cpu.near_centres_cpu) against the matmul + top-k ones
    # (the CUDA path): the same m nearest centres, the centre itself included, and the same bound.
    from fastal.select.kmeans.cpu import near_centres_cpu
    from fastal.select.kmeans.estimator import near_centres

    centres = torch.from_numpy(make_blobs(400, 2, centers=25, random_state=3)[0].astype(np.float32))
    tree_near, tree_bound = near_centres_cpu(centres, 9)
    mm_near, mm_bound = near_centres(centres, 9, chunk_size=128)
    assert tree_near.shape == mm_near.shape == (400, 9)
    torch.testing.assert_close(tree_bound, mm_bound, rtol=1e-4, atol=1e-5)
    assert all(set(a) == set(b) for a, b in zip(tree_near.tolist(), mm_near.tolist()))
    assert (tree_near == torch.arange(400)[:, None]).any(1).all()
