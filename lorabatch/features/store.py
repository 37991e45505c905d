"""The features cache in a run directory. Nothing is pickled: arrays are .npy, tables Parquet.

    RUN/features/features.json        {"version", "tokenizer_path", "tokenizer_sha256", "vocab_size",
                                       "config": FeaturesConfig as JSON}
    RUN/features/index.parquet        the bank's features in manifest order:
        task_id str · dataset_sha256 str · key str · n_examples int64 · n_tokens int64
        · token_sha256 str · embedding_key str (null when no embeddings)
    RUN/features/datasets/<key>/
        meta.json                     dataset_sha256, tokenizer_sha256, vocab_size, max_examples,
                                      n_examples, n_tokens, version (written last)
        counts.npy                    int64 [V]  token-id histogram
        sample-<S>-<seed>.npy         int64 [S]  MMD sample
        embeddings-<ekey>.npy         float32 [n, d] mean-pooled example embeddings

`key` = sha256(version, dataset content hash, tokenizer fingerprint, vocab_size, max_examples):
a dataset already featurized with the same tokenizer and settings is never tokenized again,
whichever task id or run directory it appears under (the cache is per run directory).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from lorabatch.atomic import write_json, write_npy, write_parquet
from lorabatch.features.config import FeaturesConfig
from lorabatch.features.featureset import FeaturesError, FeatureSet, sample_token_ids
from lorabatch.layout import RunLayout

FEATURES_VERSION = "1"


def features_dir(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).features


def dataset_key(dataset_sha256: str, tokenizer_sha256: str, config: FeaturesConfig) -> str:
    blob = json.dumps([FEATURES_VERSION, dataset_sha256, tokenizer_sha256, config.vocab_size, config.max_examples])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def entry_dir(run_dir, key: str) -> Path:
    return RunLayout(run_dir).feature_entry(key)


def sample_path(run_dir, key: str, config: FeaturesConfig) -> Path:
    return entry_dir(run_dir, key) / f"sample-{config.mmd_sample_size}-{config.mmd_seed}.npy"


def embeddings_path(run_dir, key: str, ekey: str) -> Path:
    return entry_dir(run_dir, key) / f"embeddings-{ekey}.npy"


def read_meta(run_dir, key: str) -> dict | None:
    """The entry's metadata if its counts are complete on disk, else None."""
    path = entry_dir(run_dir, key) / "meta.json"
    if not path.is_file() or not (entry_dir(run_dir, key) / "counts.npy").is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_entry(run_dir, key: str, counts: np.ndarray, meta: dict) -> None:
    """counts.npy, then meta.json (its presence marks the entry complete)."""
    write_npy(entry_dir(run_dir, key) / "counts.npy", np.asarray(counts, dtype=np.int64))
    write_json(entry_dir(run_dir, key) / "meta.json", dict(meta, version=FEATURES_VERSION))


def load_counts(run_dir, key: str) -> np.ndarray:
    return np.load(entry_dir(run_dir, key) / "counts.npy", allow_pickle=False)


def _load_rows(paths: list[str], load, empty_shape: tuple) -> np.ndarray:
    """np.stack of the per-dataset arrays as int64, each file memory-mapped and copied straight
    into its row (no temporary per file, no stacking copy); `load(i)` makes a missing one."""
    if not paths:
        return np.zeros(empty_shape, np.int64)
    first = np.asarray(load(0), dtype=np.int64)
    out = np.empty((len(paths), *first.shape), np.int64)
    out[0] = first
    for i, path in enumerate(paths[1:], 1):
        row = np.load(path, mmap_mode="r", allow_pickle=False) if os.path.isfile(path) else np.asarray(load(i))
        if row.shape != first.shape:
            raise FeaturesError(f"{path}: shape {row.shape} differs from the bank's other entries {first.shape}")
        out[i] = row
    return out


def load_or_make_sample(run_dir, key: str, counts: np.ndarray, config: FeaturesConfig) -> np.ndarray:
    path = sample_path(run_dir, key, config)
    if path.is_file():
        return np.load(path, allow_pickle=False)
    sample = sample_token_ids(counts, config.mmd_sample_size, config.mmd_seed)
    write_npy(path, sample)
    return sample


def write_index(
    run_dir,
    features: FeatureSet,
    dataset_sha256: list[str],
    embedding_key: str | None,
    tokenizer_path: str,
    config: FeaturesConfig,
) -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "task_id": pa.array(features.names, pa.string()),
            "dataset_sha256": pa.array(dataset_sha256, pa.string()),
            "key": pa.array(features.keys, pa.string()),
            "n_examples": pa.array(features.n_examples, pa.int64()),
            "n_tokens": pa.array(features.n_tokens, pa.int64()),
            "token_sha256": pa.array(features.token_sha256, pa.string()),
            "embedding_key": pa.array([embedding_key] * len(features), pa.string()),
        }
    )
    write_parquet(RunLayout(run_dir).features_index, table)
    write_json(
        RunLayout(run_dir).features_meta,
        {
            "version": FEATURES_VERSION,
            "tokenizer_path": str(tokenizer_path),
            "tokenizer_sha256": features.tokenizer_sha256,
            "vocab_size": features.vocab_size,
            "config": config.model_dump(mode="json"),
        },
    )


def load_bank_features(run_dir: str | Path, embeddings: bool = False) -> FeatureSet:
    """The bank's cached features (index order); `embeddings=True` loads those too."""
    import pyarrow.parquet as pq

    layout = RunLayout(run_dir)
    folder, index_path, meta_path = layout.features, layout.features_index, layout.features_meta
    if not index_path.is_file() or not meta_path.is_file():
        raise FeaturesError(
            f"{folder} holds no bank features (index.parquet / features.json): run the features stage first"
        )
    meta = json.loads(meta_path.read_text())
    config = FeaturesConfig.model_validate(meta["config"])
    index = pq.read_table(index_path).to_pydict()
    keys = index["key"]
    entries = str(layout.feature_entries)  # plain strings: pathlib costs ~60 µs a path here
    sample_name = sample_path(run_dir, "", config).name
    counts = _load_rows(
        [os.path.join(entries, k, "counts.npy") for k in keys],
        lambda i: load_counts(run_dir, keys[i]),
        (0, meta["vocab_size"]),
    )
    samples = _load_rows(
        [os.path.join(entries, k, sample_name) for k in keys],
        lambda i: load_or_make_sample(run_dir, keys[i], counts[i], config),
        (0, config.mmd_sample_size),
    )
    hashes = index.get("token_sha256")
    emb = None
    if embeddings:
        ekeys = index["embedding_key"]
        missing = [t for t, e in zip(index["task_id"], ekeys) if e is None]
        if missing:
            raise FeaturesError(
                f"the bank's features in {folder} have no embeddings (e.g. {missing[0]}): "
                "recompute them with features.embedding.enabled"
            )
        emb = [np.load(embeddings_path(run_dir, k, e), allow_pickle=False) for k, e in zip(keys, ekeys)]
    return FeatureSet(
        names=list(index["task_id"]),
        counts=counts,
        samples=samples,
        n_examples=index["n_examples"],
        tokenizer_sha256=meta["tokenizer_sha256"],
        embeddings=emb,
        keys=list(keys),
        known_token_sha256=list(hashes) if hashes and None not in hashes else None,
    )


def save_features(
    run_dir,
    features: FeatureSet,
    config: FeaturesConfig | None = None,
    dataset_sha256: list[str] | None = None,
    tokenizer_path: str = "",
) -> None:
    """Write a FeatureSet as the bank's cached features (entries keyed by `features.keys`).

    For features made elsewhere (tests, benchmarks with synthetic histograms); the features
    stage itself writes entries as it computes them.
    """
    config = config or FeaturesConfig()
    dataset_sha256 = dataset_sha256 or list(features.keys)
    for i, key in enumerate(features.keys):
        meta = {
            "task_id": features.names[i],
            "tokenizer_sha256": features.tokenizer_sha256,
            "vocab_size": features.vocab_size,
            "n_examples": int(features.n_examples[i]),
            "n_tokens": int(features.counts[i].sum()),
        }
        write_entry(run_dir, key, features.counts[i], meta)
        write_npy(sample_path(run_dir, key, config), features.samples[i])
    write_index(run_dir, features, dataset_sha256, None, tokenizer_path, config)
