"""One run across processes (issue 31): the torchrun environment, the shares of the pool, and, in a
job of 2 gloo processes on tiny synthetic data, the equivalences the issue asks for, each against
one process doing the same work alone:

- a DDP training step with B images per rank = one step with the 2B images (parameters, batch-norm
  statistics, teacher and memory bank afterwards, to float tolerance);
- sharded pool scoring = one process's scoring, exactly, every column (the prediction statistics
  and the pool's class statistics too), also with a rank that gets no image, and the strategies
  that read them pick the same regions from either;
- the same at Cityscapes size: 3 generated full-size images (1024x2048, ~2,000 SEEDS regions each),
  scored by one random strided convolution on EfficientNet-Lite0's stride-16 grid (the sharing
  of full-size images, regions and kernels is what is tested; a real backbone, as on the tiny
  data, would only multiply the seconds);
- sharded evaluation = one process's confusion matrix, exactly.

The job runs once per module (spawning 2 processes costs seconds, more than all the Cityscapes
scoring); each rank writes what it computed to a file, and the tests compare those with references
computed here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_select_scoring import TinyTeacher

from fastal import distributed
from fastal.data import load_dataset
from fastal.data.generate_cityscapes import generate_cityscapes
from fastal.data.superpixels import build_cache
from fastal.errors import FastalError
from fastal.select.scoring import PoolScores, score_pool, score_pool_sharded
from fastal.select.strategies import select
from fastal.train import TrainConfig, Trainer, evaluate

WORLD = 2
PER_RANK = 2  # images per rank and step: the single process takes WORLD x PER_RANK
TRAIN = dict(backbone="resnet18", batch_size=WORLD * PER_RANK, negatives=16, bank_size=40, anchors_per_class=6,
             per_image=4, seed=5)  # fmt: skip
TRAIN_LR = TrainConfig().lr
STEPS = 2  # the second step checks that Adam's moments and the bank's queues go on alike
SCORED = np.array([6, 0, 1, 3, 4, 7, 2])  # 7 images, not in order: shares of 4 and 3
# Shares of 1 and 0 (rank 1 enters every gather with empty columns), scored with the mean entropy;
# and no image at all.
LONE = {"lone": ([5], "mean"), "none": ([], "sum")}
# The strategies that read the prediction columns (PoolScores.pixels ... class_pixels).
PREDICTION_STRATEGIES = ("cb-ratio", "cb-ratio-pixels", "impurity-entropy", "weighted-ratio", "contrastive-balanced")
VAL_IMAGES = 5
CITYSCAPES = 3  # full-size generated images: shares of 2 and 1


def data(cache_dir: str):
    train = load_dataset("synthetic", split="train", num_images=8, size=(32, 48))
    val = load_dataset("synthetic", split="val", num_images=VAL_IMAGES, size=(32, 48))
    return train, val, build_cache(train, superpixels=12, cache_dir=cache_dir, show_progress=False)


def cityscapes(root: Path) -> tuple:
    """The generated tree's training split, its cache of ~2,000 regions an image (one worker: SEEDS
    on 3 images takes seconds, starting a pool of workers more) and the network that scores it."""
    ds = load_dataset("cityscapes", root=root)
    cache = build_cache(ds, superpixels=2000, cache_dir=root / "spcache", workers=1, show_progress=False)
    return ds, cache, TinyTeacher(ds.num_classes, dim=128, stride=16)


def batches(train) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS whole batches; sparse labels, far more on some images than on others, so the ranks'
    shares of the labelled pixels differ (the loss weighting matters)."""
    out = []
    for step in range(STEPS):
        images, labels = [], []
        for j in range(WORLD * PER_RANK):
            image, label = train[step * WORLD * PER_RANK + j]
            label = label.copy()
            label[: 4 + 10 * (j % 3)] = 255
            images.append(image)
            labels.append(label)
        out.append((torch.as_tensor(np.stack(images)), torch.as_tensor(np.stack(labels))))
    return out


def trainer(lam: float, classes: int) -> Trainer:
    """The trainer of the comparison, dropout off: its masks come from each process's global RNG,
    so with dropout a DDP step is the single process's in distribution, not bit for bit."""
    t = Trainer(TrainConfig(**TRAIN, lam=lam), classes)
    for m in t.student.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return t


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The student's gradients of the last step (None for the head of a CE-only step)."""
    return {n: None if p.grad is None else p.grad.clone() for n, p in trainer.student.named_parameters()}


def train_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"student.{k}": v for k, v in trainer.student.state_dict().items()}
    state.update({f"teacher.{k}": v for k, v in trainer.teacher.state_dict().items()})
    state.update({f"bank.{k}": v for k, v in trainer.bank.state_dict().items() if isinstance(v, torch.Tensor)})
    return state


def rank_main(rank: int, port: int, cache_dir: str, out: str) -> None:
    """One rank of the job: everything the tests compare, written to ``out/rank-R.pt``."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    with distributed.session("cpu") as device:
        assert device == torch.device("cpu") and distributed.world_size() == WORLD
        train, val, cache = data(cache_dir)
        result: dict = {}
        for lam in (0.0, 0.1):
            t = trainer(lam, train.num_classes)
            t.distribute()
            for images, labels in batches(train):
                share = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
                result.setdefault(f"losses-{lam}", []).append(t.train_step(images[share], labels[share]))
                result.setdefault(f"grads-{lam}", []).append(gradients(t))
            result[f"train-{lam}"] = train_state(t)
        result["bn_class"] = type(t.student.backbone.bn1).__name__
        teacher = Trainer(TrainConfig(**TRAIN), train.num_classes).teacher
        scores = score_pool_sharded(teacher, train, cache, SCORED, "cpu", show_progress=False)
        result["scores"] = None if scores is None else vars(scores)
        for name, (images, region_entropy) in LONE.items():
            scores = score_pool_sharded(teacher, train, cache, images, "cpu", region_entropy=region_entropy,
                                        show_progress=False)  # fmt: skip
            result[f"scores-{name}"] = None if scores is None else vars(scores)
        full, full_cache, full_teacher = cityscapes(Path(out) / "cityscapes")
        scores = score_pool_sharded(full_teacher, full, full_cache, np.arange(CITYSCAPES), "cpu", show_progress=False)
        result["scores-cityscapes"] = None if scores is None else vars(scores)
        result["confusion"] = evaluate(teacher, val, val.num_classes, "cpu", batch_size=2)["confusion"]
    torch.save(result, Path(out) / f"rank-{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The ranks' results (rank -> dict), with the data they worked on."""
    out = tmp_path_factory.mktemp("ddp")
    cache_dir = str(out / "spcache")
    train, val, cache = data(cache_dir)  # the caches are built once, before the ranks read them
    generate_cityscapes(out / "cityscapes", train=CITYSCAPES, val=1, seed=2, workers=1, show_progress=False)
    full = cityscapes(out / "cityscapes")
    mp.spawn(rank_main, args=(free_port(), cache_dir, str(out)), nprocs=WORLD)
    ranks = {r: torch.load(out / f"rank-{r}.pt", weights_only=False) for r in range(WORLD)}
    return {"ranks": ranks, "train": train, "val": val, "cache": cache, "cityscapes": full}


# ---- the equivalences ---------------------------------------------------------------------------
def test_a_ddp_step_equals_one_process_with_the_whole_batch(job: dict) -> None:
    single = trainer(0.0, job["train"].num_classes)
    losses, grads = [], []
    for images, labels in batches(job["train"]):
        losses.append(single.train_step(images, labels))
        grads.append(gradients(single))
    want = train_state(single)
    assert job["ranks"][0]["bn_class"] == "HostSyncBatchNorm"
    for r in range(WORLD):
        ranked = job["ranks"][r]
        for a, b in zip(ranked["losses-0.0"], losses):
            assert a["labelled"] == b["labelled"] and a["ce"] == pytest.approx(b["ce"], rel=1e-5)
        # The first step's gradients, averaged by DDP over shares with synchronised batch norm,
        # are the whole batch's (float sums in another order); the head has none in either.
        for name, g in grads[0].items():
            got_g = ranked["grads-0.0"][0][name]
            if g is None:
                assert got_g is None, name
            else:
                # Measured: within 3e-6 of the largest gradient of the tensor (gloo, CPU, fp32).
                assert float((got_g - g).abs().max()) <= 1e-4 * float(g.abs().max()), name
        got = ranked["train-0.0"]
        assert got.keys() == want.keys()
        moved, weights = 0, 0  # weights further than 1e-5 from the whole batch's, of all weights
        for key, value in want.items():
            if not value.is_floating_point():  # step and batch counters
                assert torch.equal(got[key], value), key
            elif "running_" in key:  # measured within 2e-5
                torch.testing.assert_close(got[key], value, rtol=1e-4, atol=2e-4, msg=key)
            elif key.startswith("bank."):  # features of the teacher after the steps: measured within 5e-4
                torch.testing.assert_close(got[key], value, rtol=1e-4, atol=2e-3, msg=key)
            else:
                # Adam moves each weight by about lr whatever its gradient's size, so a gradient
                # of float-noise size can move it either way: all within that, nearly all closer.
                diff = (got[key] - value).abs()
                assert float(diff.max()) <= 2.5 * TRAIN_LR * STEPS, key
                moved, weights = moved + int((diff > 1e-5).sum()), weights + diff.numel()
        # Counted over all weights: a small tensor (a batch norm's 64 biases) may have a few such
        # by chance, and which ones differs between CPUs. Measured: 0.3-0.5 % on two CPUs.
        assert moved / weights < 0.02, (moved, weights)
        # The queues hold entries in the same slots, written by the same pushes.
        for key in ("bank.ptr", "bank.count", "bank.inserted"):
            assert torch.equal(got[key], want[key]), key
    assert int((want["bank.count"] > 0).sum()) >= 2  # several classes entered the bank
    # The batch-norm statistics moved, as the whole batch's (one share's would differ).
    key = "student.backbone.bn1.running_mean"
    assert not torch.allclose(want[key], torch.zeros_like(want[key]))


def test_ranks_stay_identical_with_the_contrastive_term(job: dict) -> None:
    """With InfoNCE each rank draws its anchors from its own share, so the step is not the single
    process's bit for bit; what must hold is that every rank holds the same model and bank."""
    a, b = job["ranks"][0]["train-0.1"], job["ranks"][1]["train-0.1"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert job["ranks"][0]["losses-0.1"][-1]["anchors"] > 0  # the second step drew from the bank
    assert not torch.equal(a["student.projector.4.weight"], job["ranks"][0]["train-0.0"]["student.projector.4.weight"])


def scored_alone(teacher: torch.nn.Module, ds, cache, images, **options) -> PoolScores:
    """score_pool in this one process, on one thread as each rank runs (a convolution's sums follow
    the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return score_pool(teacher, ds, cache, images, "cpu", show_progress=False, **options)
    finally:
        torch.set_num_threads(threads)


def single_process_scores(job: dict, images, **options) -> PoolScores:
    teacher = Trainer(TrainConfig(**TRAIN), job["train"].num_classes).teacher
    return scored_alone(teacher, job["train"], job["cache"], images, **options)


def assert_same_scores(got: dict, want: PoolScores) -> None:
    """Every field of ``want`` in ``got`` (a PoolScores' vars), exactly: values, dtypes, shapes, Nones."""
    assert got.keys() == vars(want).keys()
    np.testing.assert_array_equal(got["gids"], want.gids)
    for name, value in vars(want).items():
        if name != "gids":
            assert (got[name] is None and value is None) or torch.equal(got[name], value), name


@pytest.fixture(scope="module")
def scored(job: dict) -> PoolScores:
    """One process's scores of SCORED, the reference of the sharded ones."""
    return single_process_scores(job, SCORED)


def test_sharded_scoring_equals_one_process_exactly(job: dict, scored: PoolScores) -> None:
    assert job["ranks"][1]["scores"] is None  # rank 0 alone holds the pool's rows
    assert all(value is not None for value in vars(scored).values())  # the prediction columns are scored
    assert_same_scores(job["ranks"][0]["scores"], scored)
    # Pool statistics from every rank's rows: the share of rank 0 alone gives other ones.
    alone = single_process_scores(job, SCORED[:4])
    assert not torch.equal(alone.class_prob, scored.class_prob)


@pytest.mark.parametrize("name", list(LONE))
def test_sharded_scoring_with_a_rank_without_images(job: dict, name: str) -> None:
    images, region_entropy = LONE[name]
    assert job["ranks"][1][f"scores-{name}"] is None
    want = single_process_scores(job, images, region_entropy=region_entropy)
    assert_same_scores(job["ranks"][0][f"scores-{name}"], want)


@pytest.mark.parametrize("strategy", PREDICTION_STRATEGIES)
def test_prediction_strategies_pick_the_same_regions_from_sharded_scores(job: dict, scored: PoolScores,
                                                                         strategy: str) -> None:  # fmt: skip
    got = PoolScores(**job["ranks"][0]["scores"])
    labelled = np.zeros(job["cache"].num_superpixels, dtype=bool)
    labelled[scored.gids[::3]] = True  # some scored regions are labelled: normalised over, never picked
    bank = torch.nn.functional.normalize(torch.randn(40, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    picks = [select(strategy, scores, bank, budget=6, labelled_mask=labelled, engine="torch",
                    umap={"n_neighbors": 5, "n_epochs": 20}).ids for scores in (got, scored)]  # fmt: skip
    np.testing.assert_array_equal(*picks)
    assert not labelled[picks[0]].any()


def test_sharded_scoring_of_full_size_cityscapes_images_equals_one_process(job: dict) -> None:
    ds, cache, teacher = job["cityscapes"]
    assert cache.shapes.tolist() == [[1024, 2048]] * CITYSCAPES and np.all(cache.counts > 1500)
    want = scored_alone(teacher, ds, cache, np.arange(CITYSCAPES))
    assert int(want.pixels.sum()) == CITYSCAPES * 1024 * 2048
    assert job["ranks"][1]["scores-cityscapes"] is None
    assert_same_scores(job["ranks"][0]["scores-cityscapes"], want)


def test_sharded_evaluation_gives_the_same_confusion_matrix(job: dict) -> None:
    teacher = Trainer(TrainConfig(**TRAIN), job["train"].num_classes).teacher
    val = job["val"]
    want = evaluate(teacher, val, val.num_classes, "cpu", batch_size=2)["confusion"]
    assert want.sum() == sum(int((val[i][1] != 255).sum()) for i in range(len(val)))
    for r in range(WORLD):
        np.testing.assert_array_equal(job["ranks"][r]["confusion"], want)


# ---- the environment, the shares, the checks ----------------------------------------------------
def test_shares_are_contiguous_disjoint_and_cover_everything() -> None:
    for n in range(0, 12):
        for world in range(1, 6):
            shares = [distributed.shard(n, r, world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_launch_env_reads_torchrun_and_names_what_is_wrong() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    assert distributed.launch_env({}) is None
    assert distributed.launch_env(env) == distributed.LaunchEnv(1, 2, 1, "node0", 29500)
    with pytest.raises(FastalError, match="MASTER_ADDR"):
        distributed.launch_env({**env, "MASTER_ADDR": ""})
    with pytest.raises(FastalError, match="RANK='x'"):
        distributed.launch_env({**env, "RANK": "x"})
    with pytest.raises(FastalError, match="0 <= RANK < WORLD_SIZE"):
        distributed.launch_env({**env, "RANK": "2"})


def test_world_size_checks() -> None:
    distributed.check_world_size(2, 8, 2)
    with pytest.raises(FastalError, match="3 processes but the first cycle labels only 2 images"):
        distributed.check_world_size(3, 9, 2)
    with pytest.raises(FastalError, match="batch_size = 8 is not a multiple of the 3 processes"):
        distributed.check_world_size(3, 8, 5)


def test_outside_a_job_everything_is_one_process() -> None:
    assert distributed.start("cpu") is None  # no WORLD_SIZE here
    assert (distributed.world_size(), distributed.rank(), distributed.is_distributed()) == (1, 0, False)
    t = torch.arange(3)
    assert distributed.gather_rows(t) is t and distributed.sum_over_ranks(t) is t and distributed.broadcast(7) == 7
