"""Scatter kernels that reduce per-pixel network outputs to per-superpixel rows.

One function per operation, one signature for every device (CPU: numba, CUDA: numba.cuda); the
torch versions in :mod:`fastal.kernels.reference` are the tests' and benchmarks' baseline.
"""

from fastal.kernels.ops import (
    segment_argmax,
    segment_mean,
    segment_sum,
    PredictionStats,
    superpixel_entropy_sum,
    superpixel_mean_features,
    superpixel_prediction_stats,
)

__all__ = [
    "PredictionStats",
    "segment_argmax",
    "segment_mean",
    "segment_sum",
    "superpixel_entropy_sum",
    "superpixel_mean_features",
    "superpixel_prediction_stats",
]
