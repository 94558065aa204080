"""k nearest fitted (bank) points of each new point: a chunked exact scan, and a cell-pruned search.

The exact scan costs N x M x D multiply-adds (a third of it in top-k on the CPU) and is what runs on CUDA, where it is a few matmuls with no host
decision. On the CPU, once the fitted set has 4,096 points or more (where umap-learn switches its
transform to its approximate NNDescent index), :func:`knn_search_cells` searches a partition of
the fitted points into KMeans cells and skips every cell that the triangle inequality proves too
far: a point in cell c is at least d(q, centroid_c) - radius_c from q, and a cell whose bound
exceeds the query's current k-th distance (found first in its own cell) cannot hold a neighbour.
The answer is exact up to float rounding; on clustered features (the bank's classes) it reads
the query's own class and a few cells near it. On features without cluster structure it
degrades to the full scan plus the cell bookkeeping. An inverted file probing a fixed number of
cells (approximate) and a bf16 screen with float32 re-ranking did not pay (docs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from fastal.select.distances import sq_dists_less_row_norm

APPROXIMATE_MIN_FIT = 4096  # umap-learn's transform queries its NNDescent index from this size
BATCH = 256  # queries of a cell searched together (knn_search_cells says why)
CELL_BOUND_ENTRIES = 2**25  # most (queries x cells) distances held at once: 128 MB of float32 (knn_search_cells)


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
    top, ti = torch.topk(sq_dists_less_row_norm(xc, ref.T, ref_sq), min(k, ref.shape[0]), dim=1, largest=False)
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
    from fastal.select.kmeans.estimator import TorchKMeans

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


@numba.njit(nogil=True, cache=True)
def _merge(dot, q_sq, cand_sq, cand_rows, best_sq, best_idx):  # pragma: no cover - compiled
    """Merge candidates into each query's k smallest squared distances so far (ascending, in place).

    ``dot`` (B, M): the queries' dot products with the candidates; a candidate's squared distance
    is q_sq + cand_sq - 2 dot. A candidate no nearer than the row's k-th costs one comparison, so
    the scan is a single pass where torch.topk over the (B, M) block cost more than its matmul.
    """
    n, m = dot.shape
    k = best_sq.shape[1]
    for r in range(n):
        worst = best_sq[r, k - 1]
        for j in range(m):
            v = q_sq[r] + cand_sq[j] - np.float32(2.0) * dot[r, j]
            if v < worst:
                p = k - 1
                while p > 0 and best_sq[r, p - 1] > v:
                    best_sq[r, p] = best_sq[r, p - 1]
                    best_idx[r, p] = best_idx[r, p - 1]
                    p -= 1
                best_sq[r, p] = v
                best_idx[r, p] = cand_rows[j]
                worst = best_sq[r, k - 1]


def knn_search_cells(
    x: torch.Tensor, index: CellIndex, k: int, max_entries: int = CELL_BOUND_ENTRIES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`knn_search`, searching only the cells that can hold a neighbour.

    CPU tensors. Queries are grouped by their nearest centroid; each group is compared with its
    own cell, then, in batches of ``BATCH`` queries that share their second-nearest centroid,
    with every other cell whose lower bound beats some query's k-th distance so far. Each block
    of dot products (one matmul) is merged into the running k nearest by :func:`_merge`. The
    queries are sorted by (nearest, second-nearest) centroid once, so that a group and its
    batches are slices: torch's advanced indexing on the CPU cost more than the distances.
    Groups run on a pool of Python threads with single-threaded tensor operations: the
    operations are small, and on a loaded machine two threads meeting at a barrier in each of
    them cost more than the operation.

    The queries' distances and bounds to every cell are (queries, cells) arrays: they are made
    for at most ``max_entries`` / cells queries at a time, so that a pool of millions of regions
    does not hold them all at once (docs/cityscapes-scale.md).
    """
    n_cells = len(index.offsets) - 1
    rows = max(BATCH, max_entries // n_cells)
    dists = torch.empty(x.shape[0], k, dtype=torch.float32)
    idx = torch.empty(x.shape[0], k, dtype=torch.int64)
    for s in range(0, x.shape[0], rows):
        dists[s : s + rows], idx[s : s + rows] = _search_cells(x[s : s + rows], index, k)
    return dists, idx


def _search_cells(x: torch.Tensor, index: CellIndex, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`knn_search_cells` for one chunk of queries."""
    from concurrent.futures import ThreadPoolExecutor

    q = _prepare(x, index.metric)
    n, off, n_cells = q.shape[0], index.offsets, len(index.offsets) - 1
    c_sq = (index.centroids * index.centroids).sum(1)
    to_cell = sq_dists_less_row_norm(q, index.centroids.T, c_sq)
    nearest = to_cell.topk(min(2, n_cells), dim=1, largest=False).indices
    own = nearest[:, 0]
    order = torch.sort(own * n_cells + nearest[:, -1], stable=True).indices
    qs = q.index_select(0, order)
    qs_sq = (qs * qs).sum(1)
    # No point of cell c is nearer than lower[:, c] (euclidean, sorted rows).
    lower = (to_cell.index_select(0, order) + qs_sq[:, None]).clamp_min_(0.0).sqrt_() - index.radius
    group_off = [0, *torch.cumsum(torch.bincount(own, minlength=n_cells), 0).tolist()]
    best_sq = torch.full((n, k), float("inf"), dtype=torch.float32)  # in the sorted order until the end
    best = torch.zeros(n, k, dtype=torch.int64)  # rows of the sorted points
    rows = torch.arange(index.points.shape[0])

    def merge(a: int, b: int, sel: torch.Tensor | slice) -> None:  # sorted queries a:b with points sel
        if isinstance(sel, slice):  # one cell: views
            pts, pts_sq, cand = index.points[sel], index.points_sq[sel], rows[sel]
        else:
            pts, pts_sq, cand = index.points.index_select(0, sel), index.points_sq.index_select(0, sel), sel
        _merge(torch.mm(qs[a:b], pts.T).numpy(), qs_sq[a:b].numpy(), pts_sq.numpy(), cand.numpy(),
               best_sq[a:b].numpy(), best[a:b].numpy())  # fmt: skip

    def search(c: int) -> None:  # the queries nearest to cell c: sorted rows a:b
        a, b = group_off[c], group_off[c + 1]
        if a == b:
            return
        merge(a, b, slice(off[c], off[c + 1]))
        # Own cell smaller than k: the k-th distance is still inf and every cell is searched.
        need = lower[a:b] < best_sq[a:b, -1].clamp_min(0.0).sqrt()[:, None]  # (n, C)
        need[:, c] = False
        # Queries sharing their second-nearest centroid need similar cells: a batch's union stays
        # near what each query needs; smaller batches compare fewer points but use the matmul worse.
        for s in range(0, b - a, BATCH):
            cells = need[s : s + BATCH].any(0).nonzero()[:, 0].tolist()
            if cells:
                merge(a + s, min(b, a + s + BATCH), torch.cat([rows[off[j] : off[j + 1]] for j in cells]))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(search, range(n_cells)))
    finally:
        torch.set_num_threads(threads)
    dists, idx = _finish(best_sq, index.metric), index.order.take(best)
    return torch.empty_like(dists).index_copy_(0, order, dists), torch.empty_like(idx).index_copy_(0, order, idx)
