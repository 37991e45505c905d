"""The metric registry: name -> implementation, imported on first use (this module is light).

An unknown name raises `UnknownMetricError` listing the registered ones.
"""

from __future__ import annotations

import importlib

from lorabatch.errors import LorabatchError

PAPER_METRICS = ("KL", "JS", "WD", "MMD")

_REGISTRY = {
    "KL": "lorabatch.distances.paper:KLDivergence",
    "JS": "lorabatch.distances.paper:JSDivergence",
    "WD": "lorabatch.distances.paper:Wasserstein1D",
    "MMD": "lorabatch.distances.paper:MultiscaleMMD",
    "OT_EMD": "lorabatch.distances.embedding:ExactOT",
    "OT_SLICED": "lorabatch.distances.embedding:SlicedOT",
    "MMD_RBF": "lorabatch.distances.embedding:RBFMMD",
}


class DistancesError(LorabatchError):
    """Distances cannot be computed or loaded; the message names the metric, task or file."""


class UnknownMetricError(DistancesError, ValueError):
    pass


def registered_metrics() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def register_metric(name: str, target: str) -> None:
    """Register `module:Class` (a `Metric` subclass) under `name`."""
    _REGISTRY[name] = target


def metric_class(name: str):
    if name not in _REGISTRY:
        raise UnknownMetricError(f"unknown metric {name!r}; registered: {list(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_metric(name: str, config=None):
    """An instance of the metric `name` configured by `config` (a DistancesConfig; None: the defaults)."""
    return metric_class(name)(config)


def features_config_for(metrics, features_config):
    """`features_config` with embeddings turned on when any of `metrics` works on embeddings."""
    if any(metric_class(m).representation == "embeddings" for m in metrics):
        embedding = features_config.embedding.model_copy(update={"enabled": True})
        return features_config.model_copy(update={"embedding": embedding})
    return features_config
