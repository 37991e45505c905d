"""Distances between the bank's datasets: the paper's KL, JS, WD and MMD on token features, and
OT / RBF-MMD on embeddings; whole matrices in blocks on Ray Data, query rows, incremental banks.

Importing this package is cheap (numpy); scipy, POT and ray load on first use.
"""

from __future__ import annotations

from lorabatch.distances.config import DistancesConfig
from lorabatch.distances.matrix import (
    compute_distance_matrix,
    compute_distances,
    distance_path,
    load_distance_matrix,
    pairwise_distances,
    query_distances,
)
from lorabatch.distances.registry import (
    PAPER_METRICS,
    DistancesError,
    UnknownMetricError,
    get_metric,
    register_metric,
    registered_metrics,
)

__all__ = [
    "PAPER_METRICS",
    "DistancesConfig",
    "DistancesError",
    "UnknownMetricError",
    "compute_distance_matrix",
    "compute_distances",
    "distance_path",
    "get_metric",
    "load_distance_matrix",
    "pairwise_distances",
    "query_distances",
    "register_metric",
    "registered_metrics",
]
