"""RegionPool: invariants against a naive model, label maps, persistence, error cases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastal.errors import FastalError
from fastal.oracle import Oracle, OracleAnswer
from fastal.pool import RegionPool, global_to_local, local_to_global, random_initial, take_until

NUM_CLASSES = 4


class StandInCache:
    """The parts of the superpixel cache the pool and oracle read, over given local maps."""

    def __init__(self, locals_: list[np.ndarray]) -> None:
        self._locals = locals_
        self.counts = np.array([int(m.max()) + 1 for m in locals_], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.sizes = np.concatenate([np.bincount(m.ravel(), minlength=c) for m, c in zip(locals_, self.counts)])
        self.num_images = len(locals_)
        self.num_superpixels = int(self.offsets[-1])

    def local(self, i: int) -> np.ndarray:
        return self._locals[i]


def random_scene(rng: np.random.Generator, num_images: int = 3, shape=(6, 8), max_sp: int = 7):
    """Local maps with every id present (random labels compacted) and truth with some ignore."""
    locals_, truths = [], []
    for _ in range(num_images):
        raw = rng.integers(0, rng.integers(1, max_sp + 1), size=shape)
        locals_.append(np.unique(raw, return_inverse=True)[1].reshape(shape).astype(np.uint16))
        y = rng.integers(0, NUM_CLASSES, size=shape).astype(np.uint8)
        y[rng.random(shape) < 0.2] = 255
        truths.append(y)
    return StandInCache(locals_), truths


def oracle_for(cache: StandInCache, truths: list[np.ndarray], mode: str) -> Oracle:
    return Oracle(lambda i: truths[i], cache, NUM_CLASSES, mode)


def fake_answer(pool: RegionPool, ids) -> OracleAnswer:
    """A consistent answer without an oracle: class = id % 3, one click, no noise."""
    ids = np.asarray(ids, dtype=np.int64)
    return OracleAnswer(
        mode=pool.label_mode,
        ids=ids,
        classes=(ids % 3).astype(np.int16),
        pixels=pool.sizes[ids],
        clicks=np.ones(ids.size, dtype=np.int64),
        noisy=np.zeros(ids.size, dtype=np.int64),
        valid=pool.sizes[ids],
    )


def assert_same_pool(a: RegionPool, b: RegionPool) -> None:
    da, db = a.state_dict(), b.state_dict()
    assert da.keys() == db.keys()
    for k in da:
        if isinstance(da[k], np.ndarray):
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
            assert da[k].dtype == db[k].dtype, k
        else:
            assert da[k] == db[k], k


# ---- invariants under random sequences of queries ---------------------------------------------
class PoolMachine(RuleBasedStateMachine):
    """Random adds (good and bad) against a dict model: the set only grows, never twice."""

    def __init__(self) -> None:
        super().__init__()
        self.cache, self.truths = random_scene(np.random.default_rng(0), num_images=3)
        self.mode = "dominant"
        self.pool = RegionPool(self.cache.offsets, self.cache.sizes, label_mode=self.mode)
        self.oracle = oracle_for(self.cache, self.truths, self.mode)
        self.model: dict[int, tuple[int, int, int]] = {}  # gid -> (cycle, class, clicks)
        self.sequence: list[int] = []
        self.cycle = 1

    @rule(data=st.data(), next_cycle=st.booleans())
    def add_fresh(self, data, next_cycle):
        free = [g for g in range(self.pool.num_superpixels) if g not in self.model]
        ids = data.draw(st.lists(st.sampled_from(free), unique=True, max_size=5) if free else st.just([]))
        self.cycle += int(next_cycle)
        answer = self.oracle.query(np.array(ids, dtype=np.int64))
        before = self.pool.state.copy()
        self.pool.add(answer, self.cycle)
        assert (self.pool.state[before > 0] == before[before > 0]).all()  # only grows
        for g, c, k in zip(ids, answer.classes.tolist(), answer.clicks.tolist()):
            self.model[g] = (self.cycle, c, k)
        self.sequence += ids

    @precondition(lambda self: self.model)
    @rule(data=st.data(), kind=st.sampled_from(["again", "duplicate", "range", "old_cycle"]))
    def add_bad(self, data, kind):
        labelled = sorted(self.model)
        free = [g for g in range(self.pool.num_superpixels) if g not in self.model]
        g = data.draw(st.sampled_from(labelled))
        cycle = self.cycle
        if kind == "again":
            ids = [g] + free[:1]
        elif kind == "duplicate":
            ids = free[:1] * 2 if free else [g, g]
        elif kind == "range":
            ids = free[:1] + [self.pool.num_superpixels + data.draw(st.integers(0, 3))]
        else:
            ids, cycle = free[:1], self.pool.current_cycle - 1
        before = self.pool.state_dict()
        answer = fake_answer(self.pool, np.clip(ids, 0, self.pool.num_superpixels - 1))
        answer = OracleAnswer(**{**answer.__dict__, "ids": np.array(ids, dtype=np.int64)})
        with pytest.raises(FastalError):
            self.pool.add(answer, cycle)
        after = self.pool.state_dict()
        for k in ("state", "classes", "clicks", "order"):
            np.testing.assert_array_equal(before[k], after[k])

    @invariant()
    def matches_naive_model(self):
        pool, sizes = self.pool, self.cache.sizes
        assert pool.num_labelled == len(self.model)
        assert pool.labelled_pixels == sum(int(sizes[g]) for g in self.model)
        assert pool.labelled_pixel_fraction == pytest.approx(pool.labelled_pixels / int(sizes.sum()))
        assert pool.cost_clicks == sum(k for _, _, k in self.model.values())
        assert pool.current_cycle == max((c for c, _, _ in self.model.values()), default=0)
        assert set(pool.labelled_ids().tolist()) == set(self.model)
        assert set(pool.unlabelled_ids().tolist()) == set(range(pool.num_superpixels)) - set(self.model)
        log = pool.log
        assert [r["superpixel"] for r in log] == self.sequence
        for r in log:
            cycle, cls, clicks = self.model[r["superpixel"]]
            assert (r["cycle"], r["class"], r["clicks"]) == (cycle, cls, clicks)
            assert r["pixels"] == sizes[r["superpixel"]]
            assert self.cache.offsets[r["image"]] + r["local"] == r["superpixel"]


TestPoolMachine = PoolMachine.TestCase


def test_full_mode_clicks_count_classes_present():
    cache, truths = random_scene(np.random.default_rng(1))
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="full")
    pool.add(oracle_for(cache, truths, "full").query(np.arange(pool.num_superpixels)), cycle=1)
    naive = 0
    for i, m in enumerate(cache._locals):
        for s in range(cache.counts[i]):
            naive += max(1, len(set(truths[i][m == s].tolist()) - {255}))
    assert pool.cost_clicks == naive
    assert pool.noisy_pixels == 0


# ---- index spaces ------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 4), min_size=1, max_size=8), st.data())
def test_index_conversions_round_trip(counts, data):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if offsets[-1] == 0:
        return
    gids = np.array(data.draw(st.lists(st.integers(0, int(offsets[-1]) - 1), max_size=10)), dtype=np.int64)
    image, local = global_to_local(offsets, gids)
    for g, i, s in zip(gids, image, local):  # naive: walk the images
        assert offsets[i] <= g < offsets[i + 1] and counts[i] > 0 and s == g - offsets[i]
    np.testing.assert_array_equal(local_to_global(offsets, image, local), gids)


def test_pool_index_conversions_check_ranges():
    pool = RegionPool([0, 3, 3, 5], [2, 2, 2, 3, 3])  # image 1 has no superpixels
    image, local = pool.to_local([4, 0, 3])
    assert image.tolist() == [2, 0, 2] and local.tolist() == [1, 0, 0]
    assert pool.to_global(image, local).tolist() == [4, 0, 3]
    assert pool.image_ids(2).tolist() == [3, 4] and pool.image_ids(1).size == 0
    with pytest.raises(FastalError, match=r"local superpixel ids out of range: \[0\] in images \[1\]"):
        pool.to_global([0, 1], [2, 0])
    with pytest.raises(FastalError, match="image indices outside 0..2"):
        pool.to_global([3], [0])
    with pytest.raises(FastalError, match="out of range"):
        pool.to_local([5])


# ---- label maps ----------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["full", "dominant"]), frac=st.floats(0, 1))
def test_label_map_equals_per_pixel_loop(seed, mode, frac):
    rng = np.random.default_rng(seed)
    cache, truths = random_scene(rng)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode=mode, seed=seed)
    pool.add(oracle_for(cache, truths, mode).query(random_initial(pool, frac)), cycle=1)
    for i in range(cache.num_images):
        got = pool.label_map(i, cache.local(i), truths[i])
        m, y = cache.local(i), truths[i]
        want = np.full(m.shape, 255, dtype=np.uint8)
        for r in range(m.shape[0]):
            for c in range(m.shape[1]):
                g = cache.offsets[i] + m[r, c]
                if pool.state[g] > 0:
                    if mode == "full":
                        want[r, c] = y[r, c]
                    else:  # majority non-ignore class of the superpixel, lowest on ties
                        vals = y[m == m[r, c]]
                        vals = vals[vals != 255]
                        want[r, c] = np.bincount(vals).argmax() if vals.size else 255
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


def test_label_map_errors():
    cache, truths = random_scene(np.random.default_rng(2))
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="full")
    m = cache.local(0)
    with pytest.raises(FastalError, match="needs the ground truth"):
        pool.label_map(0, m)
    with pytest.raises(FastalError, match="shape"):
        pool.label_map(0, m, truths[0][:-1])
    with pytest.raises(FastalError, match="image index 9"):
        pool.label_map(9, m, truths[0])
    with pytest.raises(FastalError, match="superpixel map holds ids"):
        pool.label_map(0, m + cache.counts[0], truths[0])


# ---- random initial set ---------------------------------------------------------------------------
@given(seed=st.integers(0, 2**32 - 1), frac=st.floats(0, 1), first=st.floats(0, 1))
def test_random_initial_reaches_fraction_minimally(seed, frac, first):
    cache, _ = random_scene(np.random.default_rng(seed))
    pool = RegionPool(cache.offsets, cache.sizes, seed=seed)
    pool.add(fake_answer(pool, random_initial(pool, first)), cycle=1)
    ids = random_initial(pool, frac)
    assert not pool.labelled_mask[ids].any() and np.unique(ids).size == ids.size
    total = cache.sizes.sum()
    reached = pool.labelled_pixels + cache.sizes[ids].sum()
    assert reached >= min(frac * total, total) - 1e-9 * total
    if ids.size:  # minimal: without the last one the fraction is not reached
        assert reached - cache.sizes[ids[-1]] < frac * total


def test_take_until_keeps_the_shortest_prefix_and_all_on_a_shortfall():
    sizes = np.array([10, 40, 20, 30, 50])
    order = np.array([1, 4, 0, 2, 3])  # most wanted first: sizes 40, 50, 10, 20, 30
    assert take_until(sizes, order, 75).tolist() == [1, 4]  # 90 px >= 75: two suffice
    assert take_until(sizes, order, 90).tolist() == [1, 4]  # exactly 90 px
    assert take_until(sizes, order, 91).tolist() == [1, 4, 0]
    assert take_until(sizes, order[:2], 135).tolist() == [1, 4]  # shortfall: all given
    assert take_until(sizes, order, 0).size == take_until(sizes, order, -5).size == 0


def test_random_initial_rejects_bad_fraction():
    pool = RegionPool([0, 2], [3, 4])
    for bad in (-0.1, 1.5):
        with pytest.raises(FastalError, match="fraction"):
            random_initial(pool, bad)


# ---- persistence ----------------------------------------------------------------------------------
@given(seed=st.integers(0, 2**32 - 1), cycles=st.integers(0, 4), mode=st.sampled_from(["full", "dominant"]))
def test_state_dict_round_trip_gives_same_next_selection(seed, cycles, mode):
    cache, truths = random_scene(np.random.default_rng(seed), num_images=4)
    oracle = oracle_for(cache, truths, mode)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode=mode, seed=seed)
    for k in range(1, cycles + 1):
        pool.add(oracle.query(random_initial(pool, 0.15 * k)), cycle=k)
    restored = RegionPool(cache.offsets, cache.sizes, label_mode=mode, seed=seed + 1)
    restored.load_state_dict(pool.state_dict())
    assert_same_pool(pool, restored)
    np.testing.assert_array_equal(random_initial(restored, 0.8), random_initial(pool, 0.8))


def test_save_load_round_trip(tmp_path):
    cache, truths = random_scene(np.random.default_rng(3), num_images=4)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="dominant", seed=7)
    oracle = oracle_for(cache, truths, "dominant")
    pool.add(oracle.query(random_initial(pool, 0.2)), cycle=1)
    pool.add(oracle.query(random_initial(pool, 0.4)), cycle=3)
    pool.save(tmp_path / "pool.npz")
    loaded = RegionPool.load(tmp_path / "pool.npz")
    assert_same_pool(pool, loaded)
    assert loaded.log == pool.log and loaded.summary() == pool.summary()
    assert [p.name for p in tmp_path.iterdir()] == ["pool.npz"]
    assert_same_pool(RegionPool.load(tmp_path / "pool.npz", cache.offsets, cache.sizes), pool)
    with pytest.raises(FastalError, match="other superpixels"):
        RegionPool.load(tmp_path / "pool.npz", sizes=cache.sizes + 1)
    np.testing.assert_array_equal(random_initial(loaded, 0.9), random_initial(pool, 0.9))


def test_summary_per_cycle_equals_naive_sums():
    cache, truths = random_scene(np.random.default_rng(5), num_images=4)
    pool = RegionPool(cache.offsets, cache.sizes, label_mode="dominant", seed=1)
    oracle = oracle_for(cache, truths, "dominant")
    answers = {1: oracle.query(random_initial(pool, 0.2))}
    pool.add(answers[1], cycle=1)
    answers[3] = oracle.query(random_initial(pool, 0.5))
    pool.add(answers[3], cycle=3)
    for upto, keys in ((0, []), (1, [1]), (2, [1]), (3, [1, 3]), (None, [1, 3])):
        got = pool.summary(upto)
        parts = [answers[k] for k in keys]
        pixels = sum(int(a.pixels.sum()) for a in parts)
        noisy, valid = sum(a.noisy_pixels for a in parts), sum(a.valid_pixels for a in parts)
        assert got["labelled_superpixels"] == sum(len(a) for a in parts)
        assert got["labelled_pixels"] == pixels
        assert got["labelled_pixel_fraction"] == pytest.approx(pixels / cache.sizes.sum())
        assert got["cost_clicks"] == sum(int(a.clicks.sum()) for a in parts)
        assert got["noisy_pixels"] == noisy
        assert got["label_noise"] == pytest.approx(noisy / valid if valid else 0.0)
    assert pool.summary()["cycle"] == 3


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    pool = RegionPool([0, 3, 5], [2, 2, 2, 3, 3], seed=0)
    pool.save(tmp_path / "pool.npz")
    old = (tmp_path / "pool.npz").read_bytes()
    pool.add(fake_answer(pool, [1, 4]), cycle=1)

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(FastalError, match="cannot write .*pool.npz: disk full"):
        pool.save(tmp_path / "pool.npz")
    assert (tmp_path / "pool.npz").read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["pool.npz"]  # no temp file left


def growing_pools(cycles: int = 40):
    """A deterministic sequence of pools, large enough that a save takes tens of milliseconds."""
    pool = RegionPool(np.arange(0, 200_001, 500), np.full(200_000, 7), seed=5)
    for k in range(1, cycles + 1):
        pool.add(fake_answer(pool, random_initial(pool, 0.02 * k)), cycle=k)
        yield pool


# Child process: saves the pools of `growing_pools` one after another. With a kill point, the
# second save dies there by SIGKILL: "write" after half of the bytes, "replace" just before the
# rename, "renamed" just after it.
_WRITER = textwrap.dedent(
    """
    import builtins, os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from test_pool import growing_pools

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    class HalfWriter:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def arm(point):
        if point == "write":
            for mod, name in ((os, "fdopen"), (builtins, "open")):
                real = getattr(mod, name)
                def opener(*a, _real=real, **k):
                    f = _real(*a, **k)
                    return HalfWriter(f) if "w" in getattr(f, "mode", "") else f
                setattr(mod, name, opener)
        elif point == "replace":
            os.replace = die
        elif point == "renamed":
            real_replace = os.replace
            os.replace = lambda *a: (real_replace(*a), die())

    for k, pool in enumerate(growing_pools()):
        if k == 1 and sys.argv[2] != "none":
            arm(sys.argv[2])
        pool.save(sys.argv[1])
        print(pool.current_cycle, flush=True)
    """
)


def _writer(path: Path, point: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), point, str(Path(__file__).parent)], stdout=subprocess.PIPE
    )


@pytest.mark.parametrize(("point", "cycle"), [("write", 1), ("replace", 1), ("renamed", 2)])
def test_sigkill_inside_save_leaves_old_or_new_state(tmp_path, point, cycle):
    path = tmp_path / "pool.npz"
    proc = _writer(path, point)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and out.split() == [b"1"]
    loaded = RegionPool.load(path)
    assert_same_pool(loaded, list(growing_pools(cycle))[-1])


def test_sigkill_at_random_moments_leaves_a_saved_state(tmp_path):
    path = tmp_path / "pool.npz"
    expected = {p.current_cycle: p.state_dict() for p in growing_pools()}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(4):
        proc = _writer(path, "none")
        assert proc.stdout.readline()  # one save finished: the file exists from now on
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        loaded = RegionPool.load(path)
        seen.add(loaded.current_cycle)
        assert_same_pool(loaded, RegionPool.from_state_dict(expected[loaded.current_cycle]))
    assert len(seen) > 1  # the kills landed at different points


def test_load_errors(tmp_path):
    with pytest.raises(FastalError, match="not found"):
        RegionPool.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FastalError, match="junk.npz"):
        RegionPool.load(tmp_path / "junk.npz")
    pool = RegionPool([0, 3, 5], [2, 2, 2, 3, 3])
    pool.add(fake_answer(pool, [0, 2]), cycle=1)
    pool.save(tmp_path / "pool.npz")
    data = (tmp_path / "pool.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FastalError, match="cut.npz"):
        RegionPool.load(tmp_path / "cut.npz")
    other = RegionPool([0, 2, 5], [2, 2, 2, 3, 3])
    with pytest.raises(FastalError, match="different superpixels"):
        other.load_state_dict(pool.state_dict())
    bad = pool.state_dict()
    bad["order"] = bad["order"][:1]
    with pytest.raises(FastalError, match="order"):
        RegionPool.from_state_dict(bad)


# ---- error cases of add ---------------------------------------------------------------------------
def test_add_errors_name_the_ids():
    pool = RegionPool([0, 3, 5], [2, 2, 2, 3, 3])
    pool.add(fake_answer(pool, [1]), cycle=1)
    with pytest.raises(FastalError, match=r"already labelled.*\[1\]"):
        pool.add(fake_answer(pool, [0, 1]), cycle=1)
    with pytest.raises(FastalError, match=r"duplicates.*\[3\]"):
        pool.add(fake_answer(pool, [3, 3]), cycle=1)
    bad = OracleAnswer(**{**fake_answer(pool, [0, 2]).__dict__, "ids": np.array([0, 5])})
    with pytest.raises(FastalError, match=r"out of range 0..4: \[5\]"):
        pool.add(bad, cycle=1)
    with pytest.raises(FastalError, match="cycle 0"):
        pool.add(fake_answer(pool, [0]), cycle=0)
    pool.add(fake_answer(pool, [0]), cycle=3)
    with pytest.raises(FastalError, match="cycle 2"):
        pool.add(fake_answer(pool, [2]), cycle=2)
    with pytest.raises(FastalError, match="mode"):
        pool.add(OracleAnswer(**{**fake_answer(pool, [2]).__dict__, "mode": "full"}), cycle=3)
    with pytest.raises(FastalError, match="pixel counts"):
        pool.add(OracleAnswer(**{**fake_answer(pool, [2]).__dict__, "pixels": np.array([9])}), cycle=3)
    assert pool.labelled_ids().tolist() == [0, 1] and pool.current_cycle == 3
    with pytest.raises(FastalError, match="label mode"):
        RegionPool([0, 1], [1], label_mode="partial")
    with pytest.raises(FastalError, match="offsets"):
        RegionPool([0, 3], [1, 1])


def test_labelled_through_a_cycle_leaves_later_cycles_out() -> None:
    pool = RegionPool([0, 3, 6], [2, 2, 2, 3, 3, 3], label_mode="full")
    for cycle, ids in ((1, [0, 4]), (2, [1]), (4, [5])):  # cycle 3 labelled nothing
        pool.add(fake_answer(pool, ids), cycle=cycle)
    assert np.flatnonzero(pool.labelled_through(0)).tolist() == []
    assert np.flatnonzero(pool.labelled_through(1)).tolist() == [0, 4]
    assert np.flatnonzero(pool.labelled_through(3)).tolist() == [0, 1, 4]
    assert pool.labelled_through(4).tolist() == pool.labelled_mask.tolist()
    assert pool.summary(2)["labelled_superpixels"] == 3
