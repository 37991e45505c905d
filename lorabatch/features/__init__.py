"""Per-dataset features for the distances: token-id histograms (KL, JS, exact 1-D WD), seeded
token-id samples (MMD) and mean-pooled example embeddings (OT, RBF-MMD; beyond paper mode).

Importing this package is cheap (numpy); pyarrow, transformers and ray load on first use.
"""

from __future__ import annotations

from lorabatch.features.compute import compute_bank_features, compute_dataset_features
from lorabatch.features.config import EmbeddingConfig, FeaturesConfig
from lorabatch.features.featureset import FeaturesError, FeatureSet, sample_token_ids
from lorabatch.features.store import load_bank_features
from lorabatch.features.tokens import tokenizer_fingerprint

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
