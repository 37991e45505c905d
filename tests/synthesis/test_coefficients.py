"""Coefficient models against straightforward re-implementations of the paper's formulas."""

import math

import numpy as np
import pytest

from lorabatch.synthesis.coefficients import (
    attentional_coefficients,
    check_coefficients,
    neural_coefficients,
    normalized_coefficients,
    softmin,
    sparsify_top_k,
)


def seeded_distances(n=9, seed=3):
    d = np.random.default_rng(seed).uniform(0.0, 4.0, size=(n, n))
    np.fill_diagonal(d, 0.0)
    return d


def reference_softmin_row(scores, skip):
    """exp(−s_j) / Σ_{k≠skip} exp(−s_k), written with math.exp and loops."""
    total = sum(math.exp(-s) for k, s in enumerate(scores) if k != skip)
    return [0.0 if j == skip else math.exp(-s) / total for j, s in enumerate(scores)]


def reference_zscore_row(row):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / len(row))  # population std, self included
    return [(x - mean) / std for x in row]


def test_attentional_matches_paper_formula():
    d = seeded_distances()
    c = attentional_coefficients(d)
    ref = np.array([reference_softmin_row(list(d[i]), i) for i in range(len(d))])
    assert np.abs(c - ref).max() <= 1e-6
    check_coefficients(c)
    assert np.allclose(c.sum(axis=1), 1.0, atol=1e-12) and np.all(np.diagonal(c) == 0.0)


def test_normalized_matches_paper_formula():
    d = seeded_distances()
    c = normalized_coefficients(d)
    ref = np.array([reference_softmin_row(reference_zscore_row(list(d[i])), i) for i in range(len(d))])
    assert np.abs(c - ref).max() <= 1e-6
    assert np.allclose(c.sum(axis=1), 1.0, atol=1e-12) and np.all(np.diagonal(c) == 0.0)
    # The self entry takes part in the statistics: another diagonal value changes the weights.
    no_self = d.copy()
    np.fill_diagonal(no_self, d.mean())
    assert np.abs(normalized_coefficients(no_self) - c).max() > 1e-3


def test_neural_matches_formula_for_a_given_scalar_function():
    d = seeded_distances()
    g = lambda z: 0.5 * z**2 - z  # noqa: E731
    c = neural_coefficients(d, g)
    ref = np.array([reference_softmin_row([g(z) for z in reference_zscore_row(list(d[i]))], i) for i in range(len(d))])
    assert np.abs(c - ref).max() <= 1e-6
    check_coefficients(c)


def test_temperature_and_top_k():
    d = seeded_distances()
    t = 0.37
    c = attentional_coefficients(d, temperature=t)
    ref = np.array([reference_softmin_row(list(d[i] / t), i) for i in range(len(d))])
    assert np.abs(c - ref).max() <= 1e-6
    k = 3
    sparse = attentional_coefficients(d, temperature=t, top_k=k)
    assert (np.count_nonzero(sparse, axis=1) == k).all()
    for i in range(len(d)):
        keep = np.argsort(-ref[i])[:k]
        expected = np.zeros(len(d))
        expected[keep] = ref[i, keep] / ref[i, keep].sum()
        assert np.abs(sparse[i] - expected).max() <= 1e-9
    check_coefficients(sparse)


def test_query_mode_keeps_every_source():
    d = np.random.default_rng(1).uniform(0, 2, size=(2, 6))
    c = normalized_coefficients(d, exclude_self=False)
    ref = np.array([reference_softmin_row(reference_zscore_row(list(row)), -1) for row in d])
    assert np.abs(c - ref).max() <= 1e-6 and (c > 0).all()


def test_large_distances_do_not_underflow_to_nan():
    d = seeded_distances() * 1e4
    c = attentional_coefficients(d)
    check_coefficients(c)
    assert (c.max(axis=1) > 0.99).all()  # the nearest source takes the weight


def test_constant_row_gives_uniform_normalized_weights():
    d = np.ones((4, 4))
    c = normalized_coefficients(d)
    off = ~np.eye(4, dtype=bool)
    assert np.allclose(c[off], 1 / 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[0.0, np.nan], [1.0, 0.0]]), "NaN"),
        (np.ones((2, 3)), "square"),
        (np.zeros((1, 1)), "at least 2"),
    ],
)
def test_bad_distance_matrices_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        attentional_coefficients(bad)


def test_row_without_finite_score_is_refused():
    with pytest.raises(ValueError, match="row 0 has no finite score"):
        softmin(np.array([[np.inf, np.inf], [0.0, 1.0]]))


def test_sparsify_is_identity_without_k_and_renormalises_with_it():
    c = np.array([[0.5, 0.3, 0.2]])
    assert np.array_equal(sparsify_top_k(c, None), c)
    assert np.allclose(sparsify_top_k(c, 2), [[0.625, 0.375, 0.0]])
