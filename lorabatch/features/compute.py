"""Computing features: for the whole bank (Ray Data map_batches on CPU actors, cached in the run
directory) and for one new dataset (query mode, in-process, what `predict` uses).

Ray Data stage (one row per dataset in, one row per dataset out):
    in   task_id str · dataset_path str · key str
    out  task_id str · key str · n_examples int64 · n_tokens int64 · vocab_size int64 · error str
The workers write the cache entries themselves (atomically), so the run directory must be on
storage every node sees, as everywhere else in lorabatch; a failing dataset is reported in
`error` and the others continue. The driver then raises one `FeaturesError` naming every
failed dataset, after the successful ones are cached.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from lorabatch.atomic import write_npy
from lorabatch.bank.datasets import read_split
from lorabatch.bank.manifest import load_manifest, trusts_remote_code
from lorabatch.errors import LorabatchError
from lorabatch.features import store
from lorabatch.features.config import FeaturesConfig
from lorabatch.features.embeddings import Embedder, embedding_key, embedding_subsample
from lorabatch.features.featureset import FeaturesError, FeatureSet, sample_token_ids
from lorabatch.features.tokens import (
    example_texts,
    load_tokenizer,
    tokenize_counts,
    tokenizer_fingerprint,
    vocab_size_of,
)
from lorabatch.progress import ProgressLine
from lorabatch.raysession import actor_fault_tolerance, require_ray

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("task_id", "dataset_path", "dataset_sha256", "base_model_path")


class FeatureWorker:
    """Ray Data UDF (also called directly by the local executor): featurizes one dataset per row.

    mode 'counts': token histogram -> RUN/features/datasets/<key>/{counts.npy, meta.json}
    mode 'embeddings': mean-pooled embeddings -> RUN/features/datasets/<key>/embeddings-<ekey>.npy
    """

    def __init__(
        self,
        mode: str,
        run_dir: str,
        config: dict,
        tokenizer_path: str,
        tokenizer_sha256: str,
        embed_model: str | None = None,
        embedding_key: str | None = None,
        trust_remote_code: bool = False,
    ):
        self.mode, self.run_dir = mode, run_dir
        self.config = FeaturesConfig.model_validate(config)
        self.tokenizer_sha256, self.embedding_key = tokenizer_sha256, embedding_key
        self.tokenizer = self.embedder = None
        if mode == "counts":
            self.tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
            self.vocab_size = vocab_size_of(self.tokenizer, self.config.vocab_size)
        else:
            # Only the bank's base model is trusted with its own code (bank.trust_remote_code).
            trusted = trust_remote_code and Path(embed_model).resolve() == Path(tokenizer_path).resolve()
            self.embedder = Embedder(embed_model, self.config.embedding, trusted)
            self.vocab_size = 0

    def __call__(self, batch: dict) -> dict:
        out = {k: [] for k in ("task_id", "key", "n_examples", "n_tokens", "vocab_size", "error")}
        for task_id, path, key in zip(batch["task_id"], batch["dataset_path"], batch["key"]):
            n_examples = n_tokens = 0
            error = ""
            try:
                n_examples, n_tokens = self.one(str(task_id), str(path), str(key))
            except LorabatchError as err:
                error = str(err)
            except Exception as err:  # recorded per dataset; the others go on
                error = f"{type(err).__name__}: {err}"
            for k, v in zip(out, (str(task_id), str(key), n_examples, n_tokens, self.vocab_size, error)):
                out[k].append(v)
        return {k: np.asarray(v) for k, v in out.items()}

    def one(self, task_id: str, path: str, key: str) -> tuple[int, int]:

        label = f"{task_id} ({path})"
        table = read_split(path, "train", columns=["input", "output"])
        texts = example_texts(table, label, self.config.max_examples)
        if self.mode == "counts":
            counts = tokenize_counts(self.tokenizer, texts, self.vocab_size, label, self.config.tokenize_batch_size)
            meta = {
                "task_id": task_id,
                "dataset_path": path,
                "tokenizer_sha256": self.tokenizer_sha256,
                "vocab_size": self.vocab_size,
                "max_examples": self.config.max_examples,
                "n_examples": len(texts),
                "n_tokens": int(counts.sum()),
            }
            store.write_entry(self.run_dir, key, counts, meta)
            return len(texts), int(counts.sum())

        pick = embedding_subsample(len(texts), self.config.embedding)
        emb = self.embedder.embed([texts[i] for i in pick])
        write_npy(store.embeddings_path(self.run_dir, key, self.embedding_key), emb)
        return len(pick), 0


def _run_workers(items: list[dict], worker_kwargs: dict, config: FeaturesConfig, progress: bool) -> list[dict]:
    """One result row per item, through Ray Data (config.executor 'ray') or in this process."""
    if not items:
        return []

    line = ProgressLine(f"features ({worker_kwargs['mode']})", len(items), "datasets", progress)
    if config.executor == "local":
        worker = FeatureWorker(**worker_kwargs)
        rows = []
        for item in items:
            res = worker({c: np.asarray([item[c]]) for c in ("task_id", "dataset_path", "key")})
            rows.append({c: v[0].item() if hasattr(v[0], "item") else v[0] for c, v in res.items()})
            line.update(1)
        line.close()
        return rows
    import ray

    require_ray("features.executor 'ray'")
    workers = config.num_workers or max(1, int(ray.available_resources().get("CPU", 1)))
    workers = min(workers, len(items))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        FeatureWorker,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=1,
        num_cpus=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        **actor_fault_tolerance(),
    )
    rows = []
    for row in ds.iter_rows():
        rows.append({c: v.item() if hasattr(v, "item") else v for c, v in row.items()})
        line.update(1)
    line.close()
    return rows


def _manifest_table(manifest):
    import pyarrow as pa

    if isinstance(manifest, pa.Table):
        return manifest

    return load_manifest(manifest)


def _manifest_columns(manifest) -> dict[str, list]:
    manifest = _manifest_table(manifest)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.column_names]
    if missing:
        raise FeaturesError(f"the bank manifest lacks column(s) {missing}")
    cols = {c: [str(v) for v in manifest.column(c).to_pylist()] for c in MANIFEST_COLUMNS}
    if not cols["task_id"]:
        raise FeaturesError("the bank manifest lists no tasks")
    return cols


def compute_bank_features(
    manifest, run_dir: str | Path, config: FeaturesConfig | None = None, *, progress: bool = True
) -> FeatureSet:
    """Features of every task of the manifest (a pyarrow Table or a run directory), cached.

    Only datasets whose cache entry is missing are tokenized (embedded); the result, in manifest
    order, is also recorded in RUN/features/{index.parquet, features.json} (see `store`).
    """

    config = config or FeaturesConfig()
    manifest = _manifest_table(manifest)
    cols = _manifest_columns(manifest)
    bases = sorted(set(cols["base_model_path"]))
    if len(bases) != 1:
        raise FeaturesError(f"the manifest names {len(bases)} base models {bases[:3]}: distances need one tokenizer")
    tokenizer_path = bases[0]
    tok_sha = tokenizer_fingerprint(tokenizer_path)
    if tok_sha is None:
        raise FeaturesError(f"the base model directory {tokenizer_path} holds no tokenizer files")
    keys = [store.dataset_key(d, tok_sha, config) for d in cols["dataset_sha256"]]
    items = [
        {"task_id": t, "dataset_path": p, "key": k} for t, p, k in zip(cols["task_id"], cols["dataset_path"], keys)
    ]
    todo = [it for it in items if store.read_meta(run_dir, it["key"]) is None]
    todo = _first_per_key(todo)  # identical datasets are tokenized once
    kwargs = dict(
        mode="counts",
        run_dir=str(run_dir),
        config=config.model_dump(mode="json"),
        tokenizer_path=tokenizer_path,
        tokenizer_sha256=tok_sha,
        trust_remote_code=trusts_remote_code(manifest),
    )
    errors = [(r["task_id"], r["error"]) for r in _run_workers(todo, kwargs, config, progress) if r["error"]]
    _raise_errors(errors)

    ekey = None
    if config.embedding.enabled:
        model_dir = config.embedding.model or tokenizer_path
        ekey = embedding_key(config.embedding, model_dir)
        todo = [it for it in items if not store.embeddings_path(run_dir, it["key"], ekey).is_file()]
        todo = _first_per_key(todo)
        kwargs.update(mode="embeddings", embed_model=str(model_dir), embedding_key=ekey)
        errors = [(r["task_id"], r["error"]) for r in _run_workers(todo, kwargs, config, progress) if r["error"]]
        _raise_errors(errors)

    metas = [store.read_meta(run_dir, k) for k in keys]
    counts = np.stack([store.load_counts(run_dir, k) for k in keys])
    samples = np.stack([store.load_or_make_sample(run_dir, k, counts[i], config) for i, k in enumerate(keys)])
    emb = None if ekey is None else [np.load(store.embeddings_path(run_dir, k, ekey), allow_pickle=False) for k in keys]
    features = FeatureSet(
        names=cols["task_id"],
        counts=counts,
        samples=samples,
        n_examples=[m["n_examples"] for m in metas],
        tokenizer_sha256=tok_sha,
        embeddings=emb,
        keys=keys,
    )
    store.write_index(run_dir, features, cols["dataset_sha256"], ekey, tokenizer_path, config)
    return features


def _first_per_key(items: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for it in items:
        seen.setdefault(it["key"], it)
    return list(seen.values())


def _raise_errors(errors: list[tuple[str, str]]) -> None:
    if errors:
        lines = "\n".join(f"  - {task}: {msg}" for task, msg in errors)
        raise FeaturesError(f"features failed for {len(errors)} dataset(s):\n{lines}")


def compute_dataset_features(
    dataset,
    tokenizer: str | Path,
    config: FeaturesConfig | None = None,
    *,
    seed: int | None = None,
    name: str = "query",
    progress: bool = False,
    trust_remote_code: bool = False,
) -> FeatureSet:
    """Features of one dataset (query mode): a pyarrow Table or list of rows with `input` and
    `output`, or a dataset directory (its train split). `tokenizer` is the bank's base model
    directory; `seed` overrides config.mmd_seed; `trust_remote_code` is the bank's (for the base
    model only). Nothing is cached."""
    import pyarrow as pa

    config = config or FeaturesConfig()
    if seed is not None:
        config = config.model_copy(update={"mmd_seed": seed})
    if isinstance(dataset, (str, Path)):
        name = f"{name} ({dataset})"
        dataset = read_split(dataset, "train", columns=["input", "output"])
    elif isinstance(dataset, list):
        dataset = (
            pa.Table.from_pylist(dataset)
            if dataset
            else pa.table({"input": pa.array([], pa.string()), "output": pa.array([], pa.list_(pa.string()))})
        )
    tok_sha = tokenizer_fingerprint(tokenizer)
    if tok_sha is None:
        raise FeaturesError(f"{tokenizer} holds no tokenizer files")
    texts = example_texts(dataset, name, config.max_examples)
    t0 = time.perf_counter()
    tok = load_tokenizer(tokenizer, trust_remote_code)
    counts = tokenize_counts(tok, texts, vocab_size_of(tok, config.vocab_size), name, config.tokenize_batch_size)
    sample = sample_token_ids(counts, config.mmd_sample_size, config.mmd_seed)
    emb = None
    if config.embedding.enabled:
        pick = embedding_subsample(len(texts), config.embedding)
        trusted = trust_remote_code and config.embedding.model is None
        emb = [Embedder(config.embedding.model or tokenizer, config.embedding, trusted).embed([texts[i] for i in pick])]
    if progress:
        log.info(
            f"features of {name}: {len(texts)} examples, {int(counts.sum())} tokens in {time.perf_counter() - t0:.1f}s"
        )
    return FeatureSet(
        names=[name],
        counts=counts[None],
        samples=sample[None],
        n_examples=[len(texts)],
        tokenizer_sha256=tok_sha,
        embeddings=emb,
    )
