"""Seeded random token features (sparse and dense histograms, unequal lengths) and embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from lorabatch.features import FeatureSet, sample_token_ids


def random_features(
    n: int = 8, vocab: int = 700, seed: int = 0, sample_size: int = 120, emb: bool = False
) -> FeatureSet:
    rng = np.random.default_rng(seed)
    counts = []
    for i in range(n):
        conc = 0.05 if i % 2 else 1.0  # sparse (many empty bins) and dense histograms
        counts.append(rng.multinomial(int(rng.integers(300, 5000)), rng.dirichlet(np.full(vocab, conc))))
    counts = np.stack(counts)
    counts[n - 1] = counts[1]  # a duplicate dataset: distance exactly 0
    samples = np.stack([sample_token_ids(c, sample_size, seed) for c in counts])
    embeddings = None
    if emb:
        embeddings = [rng.normal(size=(int(rng.integers(5, 14)), 6)) + 0.3 * i for i in range(n)]
        embeddings[n - 1] = embeddings[1]
    return FeatureSet(
        names=[f"task{i + 1}" for i in range(n)],
        counts=counts,
        samples=samples,
        n_examples=np.full(n, 10),
        tokenizer_sha256="tok",
        embeddings=embeddings,
        keys=[f"key{seed}-{i}" for i in range(n)],
    )


@pytest.fixture
def features() -> FeatureSet:
    return random_features()


@pytest.fixture
def emb_features() -> FeatureSet:
    return random_features(n=6, emb=True)


@pytest.fixture
def make_features():
    return random_features
