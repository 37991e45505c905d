"""`lorabatch predict`: an adapter for a new dataset from a prepared bank, on a laptop CPU.

    data (jsonl | csv | parquet | dataset dir) ──features──▶ distances to the N bank tasks (query
    mode, against the bank's cached features) ──model──▶ c [N] ──mixing──▶ PEFT dir at OUT

The bank is a run directory on which the bank, features and distances stages have run (and, for
`--model neural`, the synthesis stage, which saves the trained MLP). Every input is checked
before any work; the adapter is written atomically, so a failure leaves no directory at OUT.
Memory: one bank adapter at a time plus the result (2 × P floats) besides the feature stage's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorabatch.errors import DatasetError
from lorabatch.features.tokens import tokenizer_fingerprint  # noqa: F401  (one definition, shared with the features)
from lorabatch.layout import RunLayout
from lorabatch.synthesis.config import SynthesisConfig
from lorabatch.synthesis.stage import SynthesisError, neural_model_dir

REQUIRED = ("input", "output")
NEWLINE = b"\n"
OPTIONAL = ("id",)


@dataclass
class PredictResult:
    adapter_dir: Path
    task_ids: list[str]
    distances: np.ndarray  # [N]
    coefficients: np.ndarray  # [N]
    top: list[tuple[str, float]]
    ignored_columns: list[str]


def read_user_dataset(path: str | Path):
    """The user's examples as a pyarrow Table with `input` (str), `output` (list[str]), `id` (str).

    Accepts .jsonl / .json (one object per line), .csv, .parquet, or a directory: the Lots-of-LoRAs
    layout (data/train-*.parquet) or a `datasets.save_to_disk` directory (its train split if split).
    Raises `DatasetError` for a missing, unreadable or empty file, or missing required columns.
    """
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    table = _read_any(path)
    names = table.column_names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        unknown = [c for c in names if c not in REQUIRED + OPTIONAL]
        raise DatasetError(
            f"{path}: missing column(s) {missing}; the file has {names} (unknown: {unknown}). "
            "Expected 'input' (prompt text) and 'output' (reference text or list of texts), optionally 'id'."
        )
    if table.num_rows == 0:
        raise DatasetError(f"{path}: the dataset has no rows")
    inputs = table.column("input").to_pylist()
    outputs = [o if isinstance(o, list) else [o] for o in table.column("output").to_pylist()]
    bad = [
        i
        for i, (x, o) in enumerate(zip(inputs, outputs))
        if not isinstance(x, str) or not o or not all(isinstance(s, str) for s in o)
    ]
    if bad:
        raise DatasetError(
            f"{path}: row {bad[0]} (and {len(bad) - 1} more) lacks a text 'input' or a non-empty text 'output'"
        )
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in names else [str(i) for i in range(len(inputs))]
    out = pa.table(
        {
            "input": pa.array(inputs, pa.string()),
            "output": pa.array(outputs, pa.list_(pa.string())),
            "id": pa.array(ids, pa.string()),
        }
    )
    return out.replace_schema_metadata(
        {"lorabatch.ignored_columns": json.dumps([c for c in names if c not in REQUIRED + OPTIONAL])}
    )


def _read_any(path: Path):
    import pyarrow as pa

    try:
        if path.is_dir():
            return _read_dir(path)
        suffix = path.suffix.lower()
        if path.stat().st_size == 0:
            raise DatasetError(f"{path}: the file is empty")
        if suffix in (".jsonl", ".json"):
            _check_utf8(path)
            return _read_jsonl(path)
        if suffix == ".csv":
            import pyarrow.csv as pc

            _check_utf8(path)
            return pc.read_csv(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
    except DatasetError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read it ({str(err).splitlines()[0]})") from None
    raise DatasetError(f"{path}: unsupported format {path.suffix!r}; use .jsonl, .csv, .parquet or a dataset directory")


def _check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """`DatasetError` naming the line and byte if a text file is not UTF-8 (pyarrow would read
    its columns as binary and the rows would look empty, or the header as unknown columns)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            data = decoder.getstate()[0] + block  # a character cut by the previous block, then this one
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                where = f"byte 0x{data[err.start]:02x}" if err.start < len(data) else "a cut multi-byte character"
                line += data[: err.start].count(NEWLINE)
                raise DatasetError(
                    f"{path}: not UTF-8 text ({where} on line {line}); "
                    "save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            if not block:
                return
            line += block.count(NEWLINE)


def _read_jsonl(path: Path):
    """One JSON object per line; `output` may be a string or a list of strings from row to row."""
    import pyarrow as pa

    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: line {n} is not JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path}: line {n} is not a JSON object")
            if isinstance(rec.get("output"), str):
                rec["output"] = [rec["output"]]
            records.append(rec)
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    return pa.table(columns) if columns else pa.table({})


def _read_dir(path: Path):
    from lorabatch.bank.datasets import read_split, split_files

    if split_files(path, "train"):
        return read_split(path, "train")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DatasetError(f"{path}: a dataset dict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
        return ds.data.table if hasattr(ds.data, "table") else ds.with_format("arrow")[:]
    raise DatasetError(f"{path}: a directory without data/train-*.parquet nor a saved Hugging Face dataset")


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
    from lorabatch.bank.manifest import load_manifest

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
    from lorabatch.distances.registry import metric_class, registered_metrics

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
    from lorabatch.distances.registry import registered_metrics

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
    try:
        from lorabatch.distances import query_distances
        from lorabatch.features import compute_dataset_features
    except ImportError as err:
        raise SynthesisError(
            f"predict needs the features and distances stages, which are not installed ({err})"
        ) from None
    from lorabatch.bank.manifest import load_manifest, trusts_remote_code

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
    from lorabatch.synthesis import coefficients as coef

    row = np.asarray(distances, dtype=np.float64)[None, :]
    common = dict(exclude_self=False, temperature=config.temperature, top_k=config.top_k)
    if model == "attentional":
        c = coef.attentional_coefficients(row, **common)
    elif model == "normalized":
        c = coef.normalized_coefficients(row, **common)
    elif model == "neural":
        from lorabatch.synthesis.neural import load_neural_model, mlp_scalar_fn

        mlp, _ = load_neural_model(neural_model_dir(bank_run, metric))
        c = coef.neural_coefficients(row, mlp_scalar_fn(mlp), **common)
    else:
        raise SynthesisError(f"unknown coefficient model {model!r}; one of attentional, normalized, neural")
    coef.check_coefficients(c, exclude_self=False)
    return c[0]


def _check_out(out: Path) -> None:
    """OUT must be new, empty, or exactly a previous lorabatch adapter: it is replaced whole."""
    from lorabatch.synthesis.writer import not_replaceable

    reason = not_replaceable(out)
    if reason:
        raise SynthesisError(f"{out} exists and {reason}: refusing to replace it; choose a new or empty directory")


def _check_out_outside_bank(out: Path, bank_run: Path, manifest) -> None:
    """OUT must not lie inside the bank: its run directory, its root, an adapter, dataset or base model."""
    roots = {bank_run}
    for column in ("adapter_path", "dataset_path", "base_model_path"):
        if column in manifest.column_names:
            roots.update(Path(p) for p in manifest.column(column).to_pylist() if p)
    bank_root = _bank_root(bank_run)
    if bank_root is not None:
        roots.add(bank_root)
    target = out.expanduser().resolve()
    for root in sorted(roots):
        root = root.expanduser().resolve()
        if target == root or root in target.parents:
            raise SynthesisError(
                f"--out {out} lies inside the bank ({root}): write the adapter outside the bank's directories"
            )


def _bank_root(bank_run: Path) -> Path | None:
    """`bank.root` of the run's config (local banks), if the run has one."""
    import yaml

    try:
        bank = (yaml.safe_load(RunLayout(bank_run).config.read_text()) or {}).get("bank") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    root = bank.get("root") if isinstance(bank, dict) else None
    return Path(root) if root else None


@dataclass
class Query:
    """A new dataset checked against a prepared bank, with its distances and coefficients."""

    dataset: object  # pyarrow Table: input, output, id
    layout: object  # BankLayout of the bank's adapters
    base_model_path: Path
    distances: np.ndarray  # [N]
    coefficients: np.ndarray  # [N] of `metric`-`model`
    data_hash: str
    ignored_columns: list[str]

    def provenance(self, data: Path) -> dict:
        return {"query": {"data": str(data), "data_sha256": self.data_hash, "n_examples": self.dataset.num_rows}}


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
) -> Query:
    """Every check before work (output directory, dataset, bank, tokenizers), then the distances
    from the dataset to the bank and the coefficients of `model`."""
    from lorabatch.synthesis.tensors import layout_from_manifest

    if model not in ("attentional", "normalized", "neural"):
        raise SynthesisError(f"unknown coefficient model {model!r}; one of attentional, normalized, neural")
    manifest = check_bank(bank_run, metric, model)
    _check_out_outside_bank(out, bank_run, manifest)
    _check_out(out)
    dataset = read_user_dataset(data)
    base_model_path = Path(manifest.column("base_model_path")[0].as_py())
    check_tokenizers(data, base_model_path, bank_run)
    layout = layout_from_manifest(bank_run)
    task_ids, d = query_bank_distances(bank_run, dataset, metric, base_model_path, seed, progress)
    if task_ids != layout.task_ids:
        raise SynthesisError("the distances' bank tasks differ from the manifest's: recompute the bank's features")
    c = query_coefficients(d, model, config, bank_run, metric)
    ignored = json.loads(dataset.schema.metadata[b"lorabatch.ignored_columns"])
    return Query(dataset, layout, base_model_path, d, c, _dataset_hash(dataset), ignored)


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
) -> PredictResult:
    """Write the adapter for the dataset at `data` into `out`; see the module docstring."""
    from lorabatch.synthesis.stage import synthesize_one
    from lorabatch.synthesis.writer import contributors

    config = config or SynthesisConfig()
    bank_run, data, out = Path(bank_run), Path(data), Path(out)
    q = prepare_query(bank_run, data, out, metric=metric, model=model, config=config, seed=seed, progress=progress)
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


def _dataset_hash(table) -> str:
    h = hashlib.sha256()
    for x, o in zip(table.column("input").to_pylist(), table.column("output").to_pylist()):
        h.update(json.dumps([x, o]).encode())
    return h.hexdigest()
