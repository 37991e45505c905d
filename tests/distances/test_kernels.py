"""The pieces the blocks are made of: the support-restricted Σ s log s of JS, diagonal blocks,
state views, per-dataset preparation on threads, and the BLAS thread limit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lorabatch.distances import DistancesConfig, get_metric, slogs
from lorabatch.distances.matrix import _run_block
from lorabatch.distances.metric import rowwise, take
from lorabatch.distances.paper import smoothed_densities


def dense_slogs(p_rows, p_cols):
    s = p_rows[:, None, :] + p_cols[None, :, :]
    return (s * np.log(s)).sum(axis=2)


@pytest.fixture
def densities():
    """Rows that are sparse (most bins empty), dense, and one with a single non-empty bin."""
    rng = np.random.default_rng(7)
    vocab = 900
    counts = np.zeros((7, vocab), np.int64)
    for i in range(6):
        used = rng.choice(vocab, size=(40, 250, 890)[i % 3], replace=False)
        counts[i, used] = rng.integers(1, 50, len(used))
    counts[6, 17] = 5
    p = smoothed_densities(counts)
    g = np.empty_like(p)
    slogs.smoothed_log_terms(p, out=g)
    return p, g


@pytest.mark.parametrize("slab", [slogs.SLAB, 700])  # one slab, and many with ragged ends
def test_support_slogs_equals_the_dense_sum(densities, monkeypatch, slab):
    monkeypatch.setattr(slogs, "SLAB", slab)
    p, g = densities
    rows, cols = p[[0, 1, 2, 6]], p[2:]
    got = slogs.support_slogs(rows, cols, g[2:], g[2:].sum(axis=1))
    np.testing.assert_allclose(got, dense_slogs(rows, cols), rtol=1e-13)
    upper = slogs.support_slogs(p, p, g, g.sum(axis=1), upper=True)
    iu = np.triu_indices(len(p))
    np.testing.assert_allclose(upper[iu], dense_slogs(p, p)[iu], rtol=1e-13)


def test_smoothed_log_terms(densities):
    p, g = densities
    np.testing.assert_allclose(g, (p + 1e-10) * np.log(p + 1e-10), rtol=1e-15)
    np.testing.assert_allclose(
        slogs.smoothed_log_terms(p, out=np.empty_like(p)), (p * np.log(p)).sum(axis=1), rtol=1e-13
    )


@pytest.mark.parametrize("metric", ["KL", "JS", "WD", "MMD", "MMD_RBF"])
def test_diagonal_blocks_equal_full_blocks(emb_features, metric):
    m = get_metric(metric, DistancesConfig(executor="local"))
    state = m.prepare(emb_features)
    idx = np.arange(1, 5)
    diag = _run_block(m, state, idx, idx)
    full = m.block(take(state, idx), take(state, idx))
    d = diag["d"].reshape(4, 4)
    iu = np.triu_indices(4)
    np.testing.assert_allclose(d[iu], full[iu], rtol=1e-12, atol=1e-15)
    if m.symmetric:
        np.testing.assert_array_equal(d, d.T)  # the lower triangle mirrors the upper one
    else:
        np.testing.assert_allclose(d, full, rtol=1e-12, atol=1e-15)


def test_take_gives_views_of_runs_and_copies_otherwise():
    state = {"a": np.arange(20.0).reshape(10, 2), "l": list("abcdefghij"), "s": 3.0}
    run = take(state, [2, 3, 4])
    assert np.shares_memory(run["a"], state["a"]) and run["l"] == ["c", "d", "e"] and run["s"] == 3.0
    picked = take(state, [4, 2, 3])
    assert not np.shares_memory(picked["a"], state["a"])
    np.testing.assert_array_equal(picked["a"], state["a"][[4, 2, 3]])
    assert picked["l"] == ["e", "c", "d"]
    assert take(state, [])["a"].shape == (0, 2)


@pytest.mark.parametrize("workers", [1, 3])
def test_rowwise_visits_every_row_once(workers):
    seen = np.zeros(103, np.int64)
    lock = threading.Lock()

    def mark(rows):
        with lock:
            seen[rows] += 1

    rowwise(mark, 103, workers, rows_per_task=10)
    assert np.all(seen == 1)
