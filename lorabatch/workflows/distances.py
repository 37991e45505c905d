"""Features of every bank dataset, then the bank's distance matrices: the one path from the
features stage to the distances stage, for `lorabatch distances`, the sweep and `bank extend`.

Ray rule: Ray is started (or joined at `ray.address`) when either stage runs on it — features with
`executor: ray`, distances with any executor but `local` — and not otherwise.
"""

from __future__ import annotations

from typing import Callable

from lorabatch.distances.config import DistancesConfig
from lorabatch.distances.matrix import compute_distances
from lorabatch.distances.registry import features_config_for
from lorabatch.features import compute_bank_features
from lorabatch.features.config import FeaturesConfig


def features_and_distances(
    config,
    manifest,
    *,
    distances: DistancesConfig | None = None,
    features: FeaturesConfig | None = None,
    progress: bool = True,
    on_features: Callable[[list, FeaturesConfig], None] | None = None,
) -> list:
    """Compute (or reuse) the features of the bank's datasets and the distance matrices of
    `distances` (default: the run config's), incrementally; returns the features.

    `config` is the run config (its `run_dir` and `ray` section apply); `features` defaults to its
    `features` section, completed with what the metrics need (`features_config_for`).
    `on_features(features, features_config)` runs between the two stages.
    """
    dist = distances or config.distances
    feats = features_config_for(dist.metrics, features or config.features)
    if feats.executor == "ray" or dist.executor != "local":
        config.ray.connect()
    computed = compute_bank_features(manifest, config.run_dir, feats, progress=progress)
    if on_features is not None:
        on_features(computed, feats)
    compute_distances(config.run_dir, dist, progress=progress)
    return computed
