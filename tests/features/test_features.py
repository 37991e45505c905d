"""Token features: the paper's representation, caching, query mode and bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from lorabatch.features import (
    FeaturesConfig,
    FeaturesError,
    compute_bank_features,
    compute_dataset_features,
    sample_token_ids,
    tokenizer_fingerprint,
)
from lorabatch.features.compute import FeatureWorker
from lorabatch.features.store import load_bank_features
from lorabatch.layout import RunLayout

LOCAL = FeaturesConfig(executor="local", mmd_sample_size=50)


def expected_counts(tokenizer_dir, rows, vocab_size):
    """Reference: tokenize input + output[0] one example at a time, BOS added, concatenate."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = [t for x, y in rows for t in tok(x + y)["input_ids"]]
    return np.bincount(ids, minlength=vocab_size), ids


def test_counts_follow_the_paper_representation(bank, tokenizer_dir):
    from transformers import AutoTokenizer

    from tests.helpers.synthetic_bank import build_tokenizer  # noqa: F401  (the fixture's tokenizer)

    manifest, run = bank
    feats = compute_bank_features(manifest, run, LOCAL, progress=False)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert feats.names == ["task1", "task2", "task3"]
    assert feats.vocab_size == len(tok)
    want, ids = expected_counts(
        tokenizer_dir, [("red cat run", "yes"), ("blue dog jump", "no"), ("red red bird", "yes")], len(tok)
    )
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 3  # one BOS per example
    np.testing.assert_array_equal(feats.counts[0], want)
    assert feats.counts[0].sum() == len(ids) and list(feats.n_examples) == [3, 3, 3]
    # identical datasets (task1, task3) give identical features, hence identical MMD samples
    np.testing.assert_array_equal(feats.counts[0], feats.counts[2])
    np.testing.assert_array_equal(feats.samples[0], feats.samples[2])
    assert feats.token_sha256[0] == feats.token_sha256[2] != feats.token_sha256[1]
    meta = json.loads(RunLayout(run).features_meta.read_text())
    assert meta["tokenizer_sha256"] == tokenizer_fingerprint(tokenizer_dir)


def test_fingerprint_matches_what_predict_checks(tokenizer_dir):
    from lorabatch.workflows.predict import tokenizer_fingerprint as predict_fingerprint

    assert tokenizer_fingerprint(tokenizer_dir) == predict_fingerprint(tokenizer_dir)


def test_rerun_recomputes_nothing_and_loads_the_same(bank, monkeypatch):
    manifest, run = bank
    first = compute_bank_features(manifest, run, LOCAL, progress=False)
    calls = []
    monkeypatch.setattr(FeatureWorker, "one", lambda self, *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    second = compute_bank_features(manifest, run, LOCAL, progress=False)
    assert calls == []
    loaded = load_bank_features(run)
    for other in (second, loaded):
        np.testing.assert_array_equal(other.counts, first.counts)
        np.testing.assert_array_equal(other.samples, first.samples)
        assert other.names == first.names and other.keys == first.keys


def test_identical_datasets_are_tokenized_once(bank, monkeypatch):
    manifest, run = bank
    seen = []
    original = FeatureWorker.one
    monkeypatch.setattr(FeatureWorker, "one", lambda self, t, p, k: seen.append(t) or original(self, t, p, k))
    compute_bank_features(manifest, run, LOCAL, progress=False)
    assert sorted(seen) == ["task1", "task2"]  # task3 has task1's content hash


def test_query_features_equal_bank_features(bank, tokenizer_dir):
    manifest, run = bank
    feats = compute_bank_features(manifest, run, LOCAL, progress=False)
    rows = pa.table({"input": ["one two three", "apple pear", "hot cold"], "output": [["four"], ["plum"], ["up"]]})
    query = compute_dataset_features(rows, tokenizer_dir, LOCAL)
    np.testing.assert_array_equal(query.counts[0], feats.counts[1])
    assert query.token_sha256[0] == feats.token_sha256[1]
    from_dir = compute_dataset_features(manifest.column("dataset_path")[1].as_py(), tokenizer_dir, LOCAL)
    np.testing.assert_array_equal(from_dir.counts, query.counts)
    other_seed = compute_dataset_features(rows, tokenizer_dir, LOCAL, seed=7)
    np.testing.assert_array_equal(other_seed.counts, query.counts)
    assert not np.array_equal(other_seed.samples, query.samples)


def test_sample_is_seeded_by_seed_and_content():
    counts = np.array([0, 5, 0, 3, 2])
    a, b = sample_token_ids(counts, 2000, 0), sample_token_ids(counts, 2000, 0)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {1, 3, 4}  # only tokens present
    freq = np.bincount(a, minlength=5) / 2000
    np.testing.assert_allclose(freq, counts / counts.sum(), atol=0.04)
    assert not np.array_equal(a, sample_token_ids(counts, 2000, 1))


def test_empty_train_split_names_the_dataset(make_bank, tmp_path):
    manifest = make_bank({"task5": [("red", "yes")], "task6": []})
    with pytest.raises(FeaturesError, match=r"task6 .*train split is empty") as err:
        compute_bank_features(manifest, tmp_path / "run", LOCAL, progress=False)
    assert "task5" not in str(err.value)
    # the healthy dataset was cached all the same
    assert len(list(RunLayout(tmp_path / "run").feature_entries.iterdir())) == 1


def test_tokens_outside_the_vocabulary_name_the_dataset(make_bank, tmp_path):
    manifest = make_bank({"task7": [("red cat", "yes")]})
    with pytest.raises(FeaturesError, match=r"task7 .*token id \d+ is outside the vocabulary \[0, 5\)"):
        compute_bank_features(
            manifest, tmp_path / "run", FeaturesConfig(executor="local", vocab_size=5), progress=False
        )


def test_missing_tokenizer_is_refused(make_bank, tmp_path):
    manifest = make_bank({"task8": [("red", "yes")]})
    manifest = manifest.set_column(3, "base_model_path", pa.array([str(tmp_path)]))
    with pytest.raises(FeaturesError, match="holds no tokenizer"):
        compute_bank_features(manifest, tmp_path / "run", LOCAL, progress=False)


def test_bad_config_names_field_and_value():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mmd_sample_size"):
        FeaturesConfig(mmd_sample_size=0)
    with pytest.raises(ValidationError, match="extra"):
        FeaturesConfig(mmd_samples=10)
