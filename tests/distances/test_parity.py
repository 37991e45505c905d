"""Every metric against a straightforward per-pair reference, and the invariants it must keep."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from lorabatch.distances import DistancesConfig, UnknownMetricError, get_metric, pairwise_distances
from lorabatch.distances.embedding import sliced_projections
from tests.helpers import distance_reference as reference

LOCAL = DistancesConfig(executor="local", block_size=3)  # several blocks, ragged edges


def reference_matrix(features, metric: str, config=LOCAL) -> np.ndarray:
    n = len(features)
    ref = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            p, q = reference.density(features.counts[i]), reference.density(features.counts[j])
            if metric == "KL":
                ref[i, j] = reference.kl_pair(p, q)
            elif metric == "JS":
                ref[i, j] = reference.js_pair(p, q)
            elif metric == "WD":
                ref[i, j] = wasserstein_distance(
                    reference.expand(features.counts[i]), reference.expand(features.counts[j])
                )
            elif metric == "MMD":
                ref[i, j] = reference.mmd_pair(features.samples[i], features.samples[j])
    return ref


@pytest.mark.parametrize("metric", ["KL", "JS", "WD", "MMD"])
def test_paper_metrics_equal_per_pair_reference(features, metric):
    d = pairwise_distances(features, metric, LOCAL)
    ref = reference_matrix(features, metric)
    off = ~np.eye(len(features), dtype=bool) & (ref > 1e-12)
    np.testing.assert_allclose(d[off], ref[off], rtol=1e-6)
    assert np.all(np.abs(d - ref) <= 1e-6 * np.abs(ref) + 1e-12)


@pytest.mark.parametrize("metric", ["KL", "JS", "WD", "MMD"])
def test_invariants(features, metric):
    d = pairwise_distances(features, metric, LOCAL)
    n = len(features)
    assert np.all(d >= 0)
    assert np.all(np.diag(d) == 0.0)
    assert d[1, n - 1] == 0.0 and d[n - 1, 1] == 0.0  # duplicate datasets
    if metric == "KL":
        assert not np.allclose(d, d.T)  # asymmetric
    else:
        np.testing.assert_array_equal(d, d.T)
    assert np.all(d[~np.eye(n, dtype=bool) & ~np.isin(np.arange(n), [1, n - 1])[:, None]] > 0)


def test_kl_direction_row_is_the_target(features):
    d = pairwise_distances(features, "KL", LOCAL)
    p, q = reference.density(features.counts[0]), reference.density(features.counts[1])
    assert d[0, 1] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)  # KL(target 0 ‖ source 1)
    assert d[1, 0] == pytest.approx(float(np.sum(q * np.log(q / p))), rel=1e-9)
    assert d[0, 1] != pytest.approx(d[1, 0], rel=1e-3)


def test_wd_equals_scipy_with_weights_too(features):
    d = pairwise_distances(features, "WD", LOCAL)
    support = np.arange(features.vocab_size)
    for i, j in [(0, 1), (2, 5), (4, 3)]:
        want = wasserstein_distance(support, support, features.counts[i], features.counts[j])
        assert d[i, j] == pytest.approx(want, rel=1e-9)


def test_mmd_exact_squares_vs_float32_expansion():
    x, y = np.array([31000, 31001, 12345, 20000]), np.array([31001, 12346, 5, 31000])
    exact = reference.mmd_pair(x, y)
    assert exact == pytest.approx(reference.mmd_pair(x.astype(np.float64), y.astype(np.float64)))
    # the authors' float32 expansion cancels on large ids; on small ids it agrees
    assert abs(reference.mmd_pair_float32_expansion(x, y) - exact) > 1e-2
    small_x, small_y = np.array([1, 2, 3, 9]), np.array([2, 4, 4, 7])
    assert reference.mmd_pair_float32_expansion(small_x, small_y) == pytest.approx(
        reference.mmd_pair(small_x, small_y), rel=1e-5
    )


def test_mmd_on_large_token_ids():
    from lorabatch.features import FeatureSet

    rng = np.random.default_rng(3)
    vocab = 32000
    samples = np.stack([rng.integers(30000, vocab, 200), rng.integers(29990, vocab, 200), rng.integers(0, vocab, 200)])
    counts = np.stack([np.bincount(s, minlength=vocab) for s in samples])
    fs = FeatureSet(names=["a", "b", "c"], counts=counts, samples=samples, n_examples=[1, 1, 1], tokenizer_sha256="t")
    d = pairwise_distances(fs, "MMD", LOCAL)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert d[i, j] == pytest.approx(reference.mmd_pair(samples[i], samples[j]), rel=1e-6)


def test_embedding_metrics_equal_pot_and_loops(emb_features):
    cfg = DistancesConfig(executor="local", block_size=4, ot_sample_size=10, sliced_projections=40, rbf_bandwidth=1.5)
    emd = pairwise_distances(emb_features, "OT_EMD", cfg)
    sliced = pairwise_distances(emb_features, "OT_SLICED", cfg)
    rbf = pairwise_distances(emb_features, "MMD_RBF", cfg)
    from lorabatch.distances.embedding import ot_subsample

    theta = sliced_projections(6, 40, 0)
    embs = emb_features.embeddings
    for i in range(len(embs)):
        for j in range(len(embs)):
            x, y = ot_subsample(embs[i], 10, 0), ot_subsample(embs[j], 10, 0)
            assert emd[i, j] == pytest.approx(reference.ot_emd_pair(x, y), rel=1e-6, abs=1e-12)
            assert sliced[i, j] == pytest.approx(reference.sliced_pair(embs[i], embs[j], theta), rel=1e-6, abs=1e-12)
            assert rbf[i, j] == pytest.approx(reference.mmd_rbf_pair(embs[i], embs[j], 1.5), rel=1e-6, abs=1e-12)
    for d in (emd, sliced, rbf):
        assert np.all(d >= 0) and np.all(np.diag(d) == 0) and d[1, 5] == 0.0
        np.testing.assert_array_equal(d, d.T)
        assert np.all(d[0, 1:5] > 0)


def test_embedding_metric_without_embeddings_is_refused(features):
    from lorabatch.distances import DistancesError

    with pytest.raises(DistancesError, match="OT_SLICED needs embeddings"):
        pairwise_distances(features, "OT_SLICED", LOCAL)


def test_unknown_metric_lists_the_registered_ones(features):
    with pytest.raises(UnknownMetricError, match=r"unknown metric 'EMD'.*'KL', 'JS', 'WD', 'MMD'.*'OT_EMD'"):
        get_metric("EMD")
    with pytest.raises(UnknownMetricError, match="unknown metric 'kl'"):
        pairwise_distances(features, "kl", LOCAL)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"unknown metric\(s\) \['Hellinger'\]; registered: \['KL'"):
        DistancesConfig(metrics=["JS", "Hellinger"])
