"""Per-dataset features for the distances: token-id histograms (KL, JS, exact 1-D WD), seeded
token-id samples (MMD) and mean-pooled example embeddings (OT, RBF-MMD; beyond paper mode).

Importing this package is cheap; numpy, pyarrow, transformers and ray load on first use.
"""

from __future__ import annotations

from lorabatch.features.config import EmbeddingConfig, FeaturesConfig

__all__ = [
    "EmbeddingConfig",
    "FeaturesConfig",
    "FeatureSet",
    "FeaturesError",
    "compute_bank_features",
    "compute_dataset_features",
    "load_bank_features",
    "sample_token_ids",
    "tokenizer_fingerprint",
]

_LAZY = {
    "FeatureSet": "lorabatch.features.featureset",
    "FeaturesError": "lorabatch.features.featureset",
    "sample_token_ids": "lorabatch.features.featureset",
    "compute_bank_features": "lorabatch.features.compute",
    "compute_dataset_features": "lorabatch.features.compute",
    "load_bank_features": "lorabatch.features.store",
    "tokenizer_fingerprint": "lorabatch.features.tokens",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lorabatch.features' has no attribute {name!r}")
