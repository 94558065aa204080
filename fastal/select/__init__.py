"""Choosing the next superpixels to label: pool scoring, UMAP/KMeans engines, strategies.

>>> from fastal.select import score_pool, select, STRATEGIES
>>> scores = score_pool(teacher, ds, cache, image_indices, device)        # doctest: +SKIP
>>> sel = select("contrastive", scores, bank.features(), budget=250,      # doctest: +SKIP
...              labelled_mask=pool.labelled_mask, seed=0, engine="auto")
"""

from fastal.select.engines import ENGINES, Clusterer, Reducer, resolve_engine
from fastal.select.scoring import PoolScores, score_pool
from fastal.select.strategies import CLUSTER_STRATEGIES, STRATEGIES, Selection, select
from fastal.select.umap.params import UMAPParams

__all__ = [
    "CLUSTER_STRATEGIES", "ENGINES", "STRATEGIES", "Clusterer", "PoolScores", "Reducer", "Selection", "UMAPParams",
    "resolve_engine", "score_pool", "select",
]  # fmt: skip
