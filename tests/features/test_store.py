"""The bank loader: arrays read in place, token hashes taken from the index, any .npy layout."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from lorabatch.atomic import write_npy
from lorabatch.features import FeatureSet, sample_token_ids
from lorabatch.features.store import entry_dir, load_bank_features, save_features
from lorabatch.layout import RunLayout


def small_bank(n: int = 4, vocab: int = 50) -> FeatureSet:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 9, (n, vocab))
    samples = np.stack([sample_token_ids(c, 1000, 0) for c in counts])
    return FeatureSet(
        names=[f"task{i}" for i in range(n)],
        counts=counts,
        samples=samples,
        n_examples=np.full(n, 3),
        tokenizer_sha256="tok",
        keys=[f"k{i}" for i in range(n)],
    )


def test_loaded_features_equal_saved_ones_and_reuse_the_index_hashes(tmp_path):
    bank = small_bank()
    save_features(tmp_path, bank)
    loaded = load_bank_features(tmp_path)
    np.testing.assert_array_equal(loaded.counts, bank.counts)
    np.testing.assert_array_equal(loaded.samples, bank.samples)
    index = pq.read_table(RunLayout(tmp_path).features_index).column("token_sha256").to_pylist()
    assert loaded.known_token_sha256 == index == bank.token_sha256
    sub = loaded.subset([2, 0])
    assert sub.token_sha256 == [bank.token_sha256[2], bank.token_sha256[0]]
    both = FeatureSet.concat([bank.subset([1]), loaded])  # a query (hashed) and a loaded bank
    assert both.known_token_sha256 == [bank.token_sha256[1]] + bank.token_sha256
    assert FeatureSet.concat([bank, bank]).known_token_sha256 is None  # nothing known: hashed on use


def test_other_npy_layouts_still_load(tmp_path):
    """An entry written as int32 (another writer, an old cache) loads like the others."""
    bank = small_bank()
    save_features(tmp_path, bank)
    write_npy(entry_dir(tmp_path, "k1") / "counts.npy", bank.counts[1].astype(np.int32))
    np.testing.assert_array_equal(load_bank_features(tmp_path).counts, bank.counts)


def test_missing_sample_is_recomputed(tmp_path):
    bank = small_bank()
    save_features(tmp_path, bank)
    for path in entry_dir(tmp_path, "k0").glob("sample-*.npy"):
        path.unlink()
    np.testing.assert_array_equal(load_bank_features(tmp_path).samples, bank.samples)
