"""Whole matrices in a run directory: the Parquet contract, incremental updates, query mode."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lorabatch.distances import (
    DistancesConfig,
    DistancesError,
    compute_distance_matrix,
    load_distance_matrix,
    pairwise_distances,
    query_distances,
)
from lorabatch.features import FeatureSet
from lorabatch.features.store import save_features
from lorabatch.layout import RunLayout

LOCAL = DistancesConfig(executor="local", block_size=3)
PAPER = ("KL", "JS", "WD", "MMD")


@pytest.mark.parametrize("metric", PAPER)
def test_parquet_contract_and_round_trip(tmp_path, features, metric):
    save_features(tmp_path, features)
    tasks, d = compute_distance_matrix(tmp_path, metric, LOCAL, progress=False)
    table = pq.read_table(RunLayout(tmp_path).distances(metric))
    assert table.column_names == ["target", "source", "d"] and str(table.schema.field("d").type) == "double"
    assert table.num_rows == len(tasks) ** 2
    meta = json.loads(table.schema.metadata[b"lorabatch.distances"])
    assert meta["metric"] == metric and meta["version"] == "1" and meta["tasks"] == tasks
    row = table.slice(1, 1).to_pylist()[0]  # target task1, source task2
    assert (row["target"], row["source"], row["d"]) == ("task1", "task2", d[0, 1])
    tasks2, d2 = load_distance_matrix(tmp_path, metric)
    assert tasks2 == tasks and np.array_equal(d2, d)
    np.testing.assert_allclose(d, pairwise_distances(features, metric, LOCAL), rtol=1e-12, atol=1e-15)
    # the synthesis stage reads the same file
    from lorabatch.synthesis.stage import distance_matrix_of as synthesis_reader

    np.testing.assert_array_equal(synthesis_reader(tmp_path, metric, tasks), d)


@pytest.mark.parametrize("metric", PAPER)
def test_incremental_equals_full_and_computes_only_new_pairs(tmp_path, make_features, metric, monkeypatch):
    full = make_features(n=9, seed=4)
    save_features(tmp_path, full.subset(range(6)))
    compute_distance_matrix(tmp_path, metric, LOCAL, progress=False)
    pairs = []
    from lorabatch.distances import matrix

    original = matrix._run_block
    monkeypatch.setattr(
        matrix, "_run_block", lambda m, st, r, c: pairs.append(len(r) * len(c)) or original(m, st, r, c)
    )
    save_features(tmp_path, full)  # 3 tasks added
    tasks, d = compute_distance_matrix(tmp_path, metric, LOCAL, progress=False)
    computed = sum(pairs)
    # symmetric: the 3 new rows × all 9 columns (mirrored); KL: also the 6 old rows × 3 new columns
    assert computed == (3 * 9 + 6 * 3 if metric == "KL" else 3 * 9)
    np.testing.assert_allclose(d, pairwise_distances(full, metric, LOCAL), rtol=1e-12, atol=1e-14)
    assert tasks == full.names


def test_rerun_computes_nothing(tmp_path, features, monkeypatch):
    save_features(tmp_path, features)
    compute_distance_matrix(tmp_path, "JS", LOCAL, progress=False)
    before = RunLayout(tmp_path).distances("JS").stat().st_mtime_ns
    from lorabatch.distances import matrix

    monkeypatch.setattr(matrix, "compute_blocks", lambda *a, **k: pytest.fail("recomputed"))
    compute_distance_matrix(tmp_path, "JS", LOCAL, progress=False)
    assert RunLayout(tmp_path).distances("JS").stat().st_mtime_ns == before


def test_changed_parameters_recompute_everything(tmp_path, emb_features):
    save_features(tmp_path, emb_features)
    # embeddings are not part of save_features: pass the features directly
    _, a = compute_distance_matrix(
        tmp_path,
        "OT_SLICED",
        DistancesConfig(executor="local", sliced_projections=10),
        features=emb_features,
        progress=False,
    )
    _, b = compute_distance_matrix(
        tmp_path,
        "OT_SLICED",
        DistancesConfig(executor="local", sliced_projections=11),
        features=emb_features,
        progress=False,
    )
    assert not np.allclose(a, b)
    np.testing.assert_allclose(
        b, pairwise_distances(emb_features, "OT_SLICED", DistancesConfig(executor="local", sliced_projections=11))
    )


@pytest.mark.parametrize("metric", PAPER)
def test_query_row_equals_the_full_matrix_row(tmp_path, make_features, metric):
    both = make_features(n=7, seed=5)
    bank, query = both.subset(range(1, 7)), both.subset([0])
    save_features(tmp_path, bank)
    tasks, d = query_distances(tmp_path, query, metric)
    assert tasks == bank.names
    full = pairwise_distances(both, metric, LOCAL)
    np.testing.assert_allclose(d, full[0, 1:], rtol=1e-12, atol=1e-15)  # row 0: the query is the target
    # a query identical to a bank dataset is at distance exactly 0 from it
    _, d_same = query_distances(bank, bank.subset([2]), metric)
    assert d_same[2] == 0.0 and np.all(np.delete(d_same, 2) > 0)


def test_query_with_another_vocabulary_or_tokenizer_is_refused(features):
    other = FeatureSet(
        names=["q"],
        counts=np.ones((1, 5), np.int64),
        samples=np.zeros((1, features.samples.shape[1]), np.int64),
        n_examples=[1],
        tokenizer_sha256="tok",
    )
    from lorabatch.features import FeaturesError

    with pytest.raises(FeaturesError, match="different vocabulary sizes"):
        query_distances(features, other, "JS")
    foreign = features.subset([0])
    foreign.tokenizer_sha256 = "another"
    with pytest.raises(DistancesError, match="another tokenizer"):
        query_distances(features, foreign, "KL")


def test_missing_matrix_and_features_are_clear_errors(tmp_path):
    from lorabatch.features import FeaturesError

    with pytest.raises(DistancesError, match=r"WD.parquet does not exist"):
        load_distance_matrix(tmp_path, "WD")
    with pytest.raises(FeaturesError, match="holds no bank features"):
        compute_distance_matrix(tmp_path, "WD", LOCAL, progress=False)
