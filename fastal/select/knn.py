"""k nearest fitted (bank) points of each new point: a chunked exact scan, and a cell-pruned search.

The exact scan costs N x M x D multiply-adds (250k x 11k x 128: ~10 s in float32 on 2 free
cores, a third of it in top-k) and is what runs on CUDA, where it is a few matmuls with no host
decision. On the CPU, once the fitted set has 4,096 points or more (where umap-learn switches its
transform to its approximate NNDescent index), :func:`knn_search_cells` searches a partition of
the fitted points into KMeans cells and skips every cell that the triangle inequality proves too
far: a point in cell c is at least d(q, centroid_c) - radius_c from q, and a cell whose bound
exceeds the query's current k-th distance (found first in its own cell) cannot hold a neighbour.
The answer is exact up to float rounding; on clustered features (the bank's classes) it reads
the query's own class and a few cells near it (250k x 11k x 128 on 2 idle cores: ~3 s instead of
~10 s). On features without cluster structure it degrades to the full scan plus the cell
bookkeeping.
Tried and dropped (measured on 2 cores): an inverted file probing a fixed number of cells (on
isotropic class blobs it needed half the cells for 94% recall) and a bf16 screen with float32
re-ranking (the matmul is 1.7x faster, but the extra passes over the N x M scores ate the gain).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

APPROXIMATE_MIN_FIT = 4096  # umap-learn's transform queries its NNDescent index from this size
BATCH = 256  # queries of a cell searched together (knn_search_cells; measured there)


def _prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x.float()
    return torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x


def _finish(sq: torch.Tensor, metric: str) -> torch.Tensor:
    """Squared euclidean distances of prepared rows -> the metric's distances."""
    sq = sq.clamp_min(0.0)
    # Unit rows: |a-b|^2 = 2 - 2 cos, so the cosine distance is half the squared distance.
    return sq / 2.0 if metric == "cosine" else sq.sqrt()


def _topk_sq(xc: torch.Tensor, ref: torch.Tensor, ref_sq: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest squared distances (n, k) from ``xc`` (n, D) to ``ref`` (m, D), and their columns."""
    # |x-r|^2 = |x|^2 - 2 x.r + |r|^2; only -2 x.r + |r|^2 decides the order.
    top, ti = torch.topk(torch.addmm(ref_sq, xc, ref.T, alpha=-2.0), min(k, ref.shape[0]), dim=1, largest=False)
    return top + (xc * xc).sum(1, keepdim=True), ti


def knn_search(
    x: torch.Tensor, ref: torch.Tensor, k: int, metric: str, chunk_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest rows of ``ref`` for each row of ``x``: (dists (N,k) float32 ascending, idx (N,k) int64).

    ``metric``: ``"euclidean"`` or ``"cosine"`` (1 - cosine similarity, as umap-learn).
    """
    ref = _prepare(ref, metric)
    ref_sq = (ref * ref).sum(1)  # (M,)
    dists = torch.empty(x.shape[0], k, dtype=torch.float32, device=x.device)
    idx = torch.empty(x.shape[0], k, dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        sq, ti = _topk_sq(_prepare(x[s : s + chunk_size], metric), ref, ref_sq, k)
        dists[s : s + chunk_size] = _finish(sq, metric)
        idx[s : s + chunk_size] = ti
    return dists, idx


@dataclass
class CellIndex:
    """The fitted points sorted by KMeans cell (see the module docstring)."""

    points: torch.Tensor  # (M, D) prepared (unit rows for cosine), sorted by cell
    points_sq: torch.Tensor  # (M,)
    order: torch.Tensor  # (M,) int64: original row of each sorted point
    centroids: torch.Tensor  # (C, D)
    radius: torch.Tensor  # (C,) largest distance from a centroid to a point of its cell
    offsets: list[int]  # cell c holds sorted rows offsets[c]:offsets[c + 1]
    metric: str


def build_cell_index(ref: torch.Tensor, metric: str, points_per_cell: int = 64, seed: int = 0) -> CellIndex:
    """Partition ``ref`` (M, D) into about M / ``points_per_cell`` KMeans cells (CPU tensors)."""
    from fastal.select.kmeans_torch import TorchKMeans

    pts = _prepare(ref, metric).contiguous()
    n_cells = max(1, min(pts.shape[0], pts.shape[0] // points_per_cell))
    km = TorchKMeans(n_cells, random_state=seed, max_iter=5).fit(pts)  # cells need not be optimal, only compact
    order = torch.sort(km.labels_, stable=True).indices
    counts = torch.bincount(km.labels_, minlength=n_cells)
    centroids = km.cluster_centers_
    radius = torch.zeros(n_cells, dtype=torch.float32).scatter_reduce_(
        0, km.labels_, (pts - centroids[km.labels_]).norm(dim=1), "amax"
    )
    pts = pts[order]
    offsets = [0, *torch.cumsum(counts, 0).tolist()]
    return CellIndex(pts, (pts * pts).sum(1), order, centroids, radius, offsets, metric)


def knn_search_cells(x: torch.Tensor, index: CellIndex, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`knn_search`, searching only the cells that can hold a neighbour.

    CPU tensors. Queries are grouped by their nearest centroid; each group is compared with its
    own cell, then, in batches of ``BATCH`` queries that share their second-nearest centroid,
    with every other cell whose lower bound beats some query's k-th distance so far, and the
    candidate lists are merged. The queries are sorted by (nearest, second-nearest) centroid once,
    so that a group and its batches are slices: torch's advanced indexing on the CPU cost more
    than the distances (measured: 8 of 12 single-thread seconds at 250k x 11k). Groups run on a
    pool of Python threads with single-threaded tensor operations: the operations are small, and
    on a loaded machine two threads meeting at a barrier in each of them cost more than the
    operation (measured on 2 busy cores: 7x slower than one thread).
    """
    from concurrent.futures import ThreadPoolExecutor

    q = _prepare(x, index.metric)
    n, off, n_cells = q.shape[0], index.offsets, len(index.offsets) - 1
    to_cell = torch.cdist(q, index.centroids)  # (N, C) euclidean
    nearest = to_cell.topk(min(2, n_cells), dim=1, largest=False).indices
    own = nearest[:, 0]
    order = torch.sort(own * n_cells + nearest[:, -1], stable=True).indices
    qs = q.index_select(0, order)
    lower = (to_cell - index.radius).index_select(0, order)  # no point of cell c is nearer than lower[:, c]
    group_off = [0, *torch.cumsum(torch.bincount(own, minlength=n_cells), 0).tolist()]
    dists = torch.empty(n, k, dtype=torch.float32)  # in the sorted order until the end
    idx = torch.empty(n, k, dtype=torch.int64)

    def cell_rows(cells: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(off[j], off[j + 1]) for j in cells])

    def search(c: int) -> None:  # the queries nearest to cell c: sorted rows a:b
        a, b = group_off[c], group_off[c + 1]
        if a == b:
            return
        qc = qs[a:b]
        sq, cols = _topk_sq(qc, index.points[off[c] : off[c + 1]], index.points_sq[off[c] : off[c + 1]], k)
        cols = cols + off[c]
        short = k - sq.shape[1]
        if short:  # own cell smaller than k: no finite bound yet, every cell is searched
            sq = torch.cat([sq, sq.new_full((b - a, short), float("inf"))], 1)
            cols = torch.cat([cols, cols.new_zeros((b - a, short))], 1)
        need = lower[a:b] < sq[:, -1].clamp_min(0.0).sqrt()[:, None]  # (n, C)
        need[:, c] = False
        # Queries sharing their second-nearest centroid need similar cells: a batch's union stays
        # near what each query needs (1M x 11k: 2,450 points compared per query in batches of
        # 128, 3,210 in batches of 512, 5,070 for whole groups, 1,190 per query alone). Smaller
        # batches use the matmul worse: 250k x 11k on 2 cores took 4.0 / 3.6 / 3.2 / 3.1 s in
        # batches of 64 / 128 / 256 / 512.
        for s in range(0, b - a, BATCH):
            cells = need[s : s + BATCH].any(0).nonzero()[:, 0].tolist()
            if not cells:
                continue
            sel = cell_rows(cells)
            sq2, cols2 = _topk_sq(qc[s : s + BATCH], index.points.index_select(0, sel),
                                  index.points_sq.index_select(0, sel), k)  # fmt: skip
            sq[s : s + BATCH], pick = torch.topk(torch.cat([sq[s : s + BATCH], sq2], 1), k, dim=1, largest=False)
            cols[s : s + BATCH] = torch.cat([cols[s : s + BATCH], sel.take(cols2)], 1).gather(1, pick)
        dists[a:b] = _finish(sq, index.metric)
        idx[a:b] = index.order.take(cols)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(search, range(len(off) - 1)))
    finally:
        torch.set_num_threads(threads)
    return torch.empty_like(dists).index_copy_(0, order, dists), torch.empty_like(idx).index_copy_(0, order, idx)
