"""`lorabatch predict`: an adapter for a new dataset from a prepared bank, on a laptop CPU.

    data (jsonl | csv | parquet | dataset dir) ──features──▶ distances to the N bank tasks (query
    mode, against the bank's cached features) ──model──▶ c [N] ──mixing──▶ PEFT dir at OUT

The bank is a run directory on which the bank, features and distances stages have run (and, for
`--model neural`, the synthesis stage, which saves the trained MLP). Every input is checked
before any work; the adapter is written atomically, so a failure leaves no directory at OUT.
Memory: one bank adapter at a time plus the result (2 × P floats) besides the feature stage's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorabatch.bank.manifest import load_manifest, trusts_remote_code
from lorabatch.distances import query_distances
from lorabatch.distances.registry import metric_class, registered_metrics
from lorabatch.features import compute_dataset_features
from lorabatch.features.tokens import tokenizer_fingerprint
from lorabatch.layout import RunLayout
from lorabatch.settings import COEFFICIENT_MODELS
from lorabatch.synthesis.coefficients import model_coefficients
from lorabatch.synthesis.config import SynthesisConfig
from lorabatch.synthesis.neural import load_neural_model, mlp_scalar_fn
from lorabatch.synthesis.stage import SynthesisError, neural_model_dir, synthesize_one
from lorabatch.synthesis.tensors import layout_from_manifest
from lorabatch.synthesis.writer import contributors
from lorabatch.workflows.userdata import (
    check_out_dir,
    check_out_outside_bank,
    dataset_hash,
    ignored_columns,
    read_user_dataset,
)


@dataclass
class PredictResult:
    adapter_dir: Path
    task_ids: list[str]
    distances: np.ndarray  # [N]
    coefficients: np.ndarray  # [N]
    top: list[tuple[str, float]]
    ignored_columns: list[str]


def check_tokenizers(data_path: Path, base_model_path: Path, bank_run: Path) -> None:
    """Refuse data (or bank features) tokenized with another tokenizer than the bank's base model."""
    base = tokenizer_fingerprint(base_model_path)
    if base is None:
        raise SynthesisError(f"the bank's base model directory {base_model_path} holds no tokenizer")
    if data_path.is_dir():
        own = tokenizer_fingerprint(data_path)
        if own is not None and own != base:
            raise SynthesisError(
                f"{data_path} carries its own tokenizer, which differs from the bank's base model tokenizer "
                f"({base_model_path}); distances are only defined over one tokenizer's token ids"
            )
    recorded = _bank_features_tokenizer(bank_run)
    if recorded is not None and recorded != base:
        raise SynthesisError(
            f"the bank's features in {RunLayout(bank_run).features} were computed with another tokenizer than its base "
            f"model's ({base_model_path}); recompute them"
        )


def _bank_features_tokenizer(bank_run: Path) -> str | None:
    meta = RunLayout(bank_run).features_meta
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("tokenizer_sha256")
        except (OSError, json.JSONDecodeError):
            return None
    return None


def check_bank(bank_run: Path, metric: str, model: str):
    """The bank's manifest table; errors if features (or a trained neural model) are missing."""
    try:
        table = load_manifest(bank_run)
    except Exception as err:
        raise SynthesisError(f"{bank_run} is not a prepared bank: {err}") from None
    features = RunLayout(bank_run).features
    if not features.is_dir() or not any(features.iterdir()):
        raise SynthesisError(
            f"the bank at {bank_run} has no cached features ({features} is missing or empty): "
            "compute them with `lorabatch distances CONFIG` (the bank's run config) first"
        )
    check_metric(bank_run, metric)
    if model == "neural" and not (neural_model_dir(bank_run, metric) / "model.safetensors").is_file():
        raise SynthesisError(
            f"the bank at {bank_run} has no trained neural model for {metric} "
            f"({neural_model_dir(bank_run, metric)}): run `lorabatch synthesize` with the neural model first"
        )
    return table


def bank_metrics(bank_run: Path) -> tuple[list[str], list[str]]:
    """(metrics the bank's features allow in query mode, metrics it has a distance matrix for).
    Token metrics need the token features every bank has; embedding metrics need its embeddings."""
    embeddings = False
    index = RunLayout(bank_run).features_index
    if index.is_file():
        import pyarrow.parquet as pq

        try:
            keys = pq.read_table(index, columns=["embedding_key"]).column("embedding_key").to_pylist()
            embeddings = bool(keys) and None not in keys
        except Exception:  # an older index without embeddings
            embeddings = False
    usable = [m for m in registered_metrics() if embeddings or metric_class(m).representation == "tokens"]
    computed = RunLayout(bank_run).distance_metrics()
    return usable, computed


def check_metric(bank_run: Path, metric: str) -> None:
    """`SynthesisError` before any work if the bank cannot give distances of `metric`."""
    usable, computed = bank_metrics(bank_run)
    if metric in usable:
        return
    what = (
        "unknown metric" if metric not in registered_metrics() else "metric needing embedding features the bank lacks:"
    )
    raise SynthesisError(
        f"--metric: {what} {metric!r}; the bank at {bank_run} has features for {', '.join(usable)} "
        f"(distance matrices computed: {', '.join(computed) or 'none'})"
    )


def query_bank_distances(bank_run: Path, dataset, metric: str, base_model_path: Path, seed: int, progress: bool):
    """(bank task ids, d [N]) = distances from the new dataset to every bank task.

    The seam to the features and distances stages: features of `dataset` (train examples,
    tokenized with the bank's base model tokenizer), then distances in query mode against the
    bank's cached features.
    """
    features = compute_dataset_features(
        dataset,
        tokenizer=base_model_path,
        seed=seed,
        progress=progress,
        trust_remote_code=trusts_remote_code(load_manifest(bank_run)),
    )
    task_ids, d = query_distances(bank_run, features, metric=metric, progress=progress)
    return list(task_ids), np.asarray(d, dtype=np.float64).reshape(-1)


def query_coefficients(
    distances: np.ndarray, model: str, config: SynthesisConfig, bank_run: Path, metric: str
) -> np.ndarray:
    """c [N] for a query row (no self entry to exclude)."""
    scalar_fn = None
    if model == "neural":
        mlp, _ = load_neural_model(neural_model_dir(bank_run, metric))
        scalar_fn = mlp_scalar_fn(mlp)
    try:
        c = model_coefficients(
            model,
            np.asarray(distances, dtype=np.float64)[None, :],
            scalar_fn=scalar_fn,
            exclude_self=False,
            temperature=config.temperature,
            top_k=config.top_k,
        )
    except ValueError as err:
        raise SynthesisError(str(err)) from None
    return c[0]


@dataclass
class Query:
    """A new dataset checked against a prepared bank, with its distances and coefficients."""

    dataset: object  # pyarrow Table: input, output, id
    layout: object  # BankLayout of the bank's adapters
    base_model_path: Path
    distances: np.ndarray  # [N]
    coefficients: np.ndarray  # [N] of `metric`-`model` (0 on the tasks left out)
    data_hash: str
    ignored_columns: list[str]
    keep: np.ndarray  # indices of the bank tasks that take part (all but `exclude`)
    excluded: tuple[str, ...] = ()

    def provenance(self, data: Path) -> dict:
        record = {"query": {"data": str(data), "data_sha256": self.data_hash, "n_examples": self.dataset.num_rows}}
        if self.excluded:
            record["excluded_tasks"] = sorted(self.excluded)
        return record


def check_exclude(bank_run: Path, manifest, exclude) -> tuple[str, ...]:
    """`exclude` as a tuple, after checking that it names bank tasks and leaves at least one."""
    bank_ids = manifest.column("task_id").to_pylist()
    unknown = sorted(set(exclude) - set(bank_ids))
    if unknown:
        raise SynthesisError(f"exclude names tasks that are not in the bank {bank_run}: {unknown}")
    if set(bank_ids) <= set(exclude):
        raise SynthesisError("exclude leaves no bank task")
    return tuple(exclude)


def prepare_query(
    bank_run: Path,
    data: Path,
    out: Path,
    *,
    metric: str,
    model: str,
    config: SynthesisConfig,
    seed: int,
    progress: bool,
    exclude: tuple[str, ...] | list[str] = (),
) -> Query:
    """Every check before work (output directory, dataset, bank, tokenizers), then the distances
    from the dataset to the bank and the coefficients of `model` over the tasks not in `exclude`."""
    if model not in COEFFICIENT_MODELS:
        raise SynthesisError(f"unknown coefficient model {model!r}; one of attentional, normalized, neural")
    if exclude and model == "neural":
        raise SynthesisError(f"{metric}-{model} cannot leave tasks out (its model was trained on the whole bank)")
    manifest = check_bank(bank_run, metric, model)
    exclude = check_exclude(bank_run, manifest, exclude)
    check_out_outside_bank(out, bank_run, manifest)
    check_out_dir(out)
    dataset = read_user_dataset(data)
    base_model_path = Path(manifest.column("base_model_path")[0].as_py())
    check_tokenizers(data, base_model_path, bank_run)
    layout = layout_from_manifest(bank_run)
    task_ids, d = query_bank_distances(bank_run, dataset, metric, base_model_path, seed, progress)
    if task_ids != layout.task_ids:
        raise SynthesisError("the distances' bank tasks differ from the manifest's: recompute the bank's features")
    keep = np.array([j for j, t in enumerate(task_ids) if t not in set(exclude)], dtype=np.int64)
    c = np.zeros(len(task_ids))
    c[keep] = query_coefficients(d[keep], model, config, bank_run, metric)
    return Query(dataset, layout, base_model_path, d, c, dataset_hash(dataset), ignored_columns(dataset), keep, exclude)


def predict_adapter(
    bank_run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    metric: str = "JS",
    model: str = "normalized",
    config: SynthesisConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    top: int = 10,
    exclude: tuple[str, ...] | list[str] = (),
) -> PredictResult:
    """Write the adapter for the dataset at `data` into `out`; see the module docstring.

    `exclude`: bank task ids that take no part (weight 0) — a leave-one-out evaluation holds the
    dataset's own task out this way."""
    config = config or SynthesisConfig()
    bank_run, data, out = Path(bank_run), Path(data), Path(out)
    q = prepare_query(
        bank_run, data, out, metric=metric, model=model, config=config, seed=seed, progress=progress, exclude=exclude
    )
    synthesize_one(
        q.layout,
        q.coefficients,
        out,
        config,
        setting=f"{metric}-{model}",
        target=f"query:{q.data_hash[:16]}",
        extra=q.provenance(data),
        progress=progress,
    )
    task_ids = q.layout.task_ids
    return PredictResult(
        out, task_ids, q.distances, q.coefficients, contributors(task_ids, q.coefficients, top), q.ignored_columns
    )
