"""The bank manifest: `RUN/bank/manifest.parquet`, one row per task, written after validation.

Schema (one row per task, sorted by task number):
    task_id str ("task<N>") · task_number int64 · slug str
    adapter_ref str (repo id) · dataset_ref str (repo id) · source str ("hub" | "local")
    adapter_path str · dataset_path str (local directories every stage reads)
    base_model str (name the adapters declare) · base_model_path str (local dir: weights + tokenizer)
    rank int64 · alpha float64 · target_modules list<str> · dtype str · n_params int64
    adapter_sha256 str (of adapter_model.safetensors) · dataset_sha256 str (content hash of the splits)
    n_train / n_valid / n_test int64
The Parquet schema metadata holds `lorabatch.manifest_version`, `lorabatch.manifest_hash`
(sha256 over task ids and file hashes: what downstream caches key on) and
`lorabatch.trust_remote_code` ("true" | "false": `bank.trust_remote_code`, which every stage passes
to transformers when it loads the base model's tokenizer or weights).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lorabatch.atomic import write_parquet
from lorabatch.bank.inspect import TaskFacts, inspect_task
from lorabatch.bank.resolve import resolve_tasks
from lorabatch.bank.sources import BASE_MODEL_CONFIG_FILES, BASE_MODEL_FILES, make_source
from lorabatch.bank.validation import cross_task_problems
from lorabatch.errors import BankResolutionError, BankValidationError
from lorabatch.layout import RunLayout

MANIFEST_VERSION = "1"


def manifest_path(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).manifest


def resolve_base_model(bank_config, source, weights: bool = False) -> Path:
    """Local directory of the base model: a path as given, else the repo resolved by the source.

    Without `weights` only its config and tokenizer are fetched from the hub: features,
    distances, synthesis and `predict` need no more; generation asks for the weights.
    """
    as_path = Path(bank_config.base_model).expanduser()
    if as_path.is_dir():
        path = as_path.resolve()
    else:
        files = BASE_MODEL_FILES if weights else BASE_MODEL_CONFIG_FILES
        path = source.repo_dir(bank_config.base_model, "model", files)
    if not (path / "config.json").is_file():
        raise BankValidationError([("<base model>", f"{path} has no config.json")])
    return path


def base_model_with_weights(bank_config) -> Path:
    """The base model directory with its safetensors weights (downloaded on first use)."""
    return resolve_base_model(bank_config, make_source(bank_config), weights=True)


def inspect_bank(bank_config, progress: bool = True) -> tuple[Path, list[TaskFacts]]:
    """Resolve and inspect every task; raise `BankValidationError` listing all problems."""
    from tqdm.auto import tqdm

    source = make_source(bank_config)
    refs = resolve_tasks(bank_config, source)
    problems: list[tuple[str, str]] = []
    try:
        base_dir = resolve_base_model(bank_config, source)
    except BankResolutionError as err:
        problems.append(("<base model>", str(err)))
        base_dir = None
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = pool.map(lambda r: inspect_task(r, source, bank_config.validate_weights), refs)
        facts = list(tqdm(jobs, total=len(refs), desc="inspect bank", unit="task", disable=not progress or None))
    for f in facts:
        problems += [(f.ref.task_id, p) for p in f.problems]
    base_name = bank_config.base_model_name or bank_config.base_model
    problems += cross_task_problems(facts, base_name, base_dir)
    if problems:
        order = {f.ref.task_id: i for i, f in enumerate(facts)}
        problems.sort(key=lambda p: order.get(p[0], -1))
        raise BankValidationError(problems)
    return base_dir, facts


def manifest_table(facts: list[TaskFacts], base_dir: Path, source_name: str, trust_remote_code: bool = False):
    import pyarrow as pa

    rows = [
        {
            "task_id": f.ref.task_id,
            "task_number": f.ref.number,
            "slug": f.ref.slug,
            "adapter_ref": f.ref.adapter_repo,
            "dataset_ref": f.ref.dataset_repo,
            "source": source_name,
            "adapter_path": str(f.adapter_path),
            "dataset_path": str(f.dataset_path),
            "base_model": f.base_model,
            "base_model_path": str(base_dir),
            "rank": int(f.rank),
            "alpha": float(f.alpha),
            "target_modules": list(f.target_modules),
            "dtype": f.dtype,
            "n_params": int(f.n_params),
            "adapter_sha256": f.adapter_sha256,
            "dataset_sha256": f.dataset_sha256,
            "n_train": f.split_rows.get("train", 0),
            "n_valid": f.split_rows.get("valid", 0),
            "n_test": f.split_rows.get("test", 0),
        }
        for f in facts
    ]
    table = pa.Table.from_pylist(rows)
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r['task_id']}:{r['adapter_sha256']}:{r['dataset_sha256']}:{r['base_model']}\n".encode())
    return table.replace_schema_metadata(
        {
            "lorabatch.manifest_version": MANIFEST_VERSION,
            "lorabatch.manifest_hash": digest.hexdigest(),
            "lorabatch.trust_remote_code": "true" if trust_remote_code else "false",
        }
    )


def write_manifest(bank_config, run_dir, progress: bool = True):
    """The bank stage: resolve, inspect and validate the bank; write RUN/bank/manifest.parquet."""
    base_dir, facts = inspect_bank(bank_config, progress=progress)
    table = manifest_table(facts, base_dir, bank_config.source, bank_config.trust_remote_code)
    write_parquet(RunLayout(run_dir).manifest, table)
    return table


def build_manifest(config, progress: bool = True):
    """What `lorabatch bank manifest` does for a run config (a `LorabatchConfig`): the bank stage
    (`write_manifest`), then, once the bank is valid, record the run's config (`config.record()`)."""
    table = write_manifest(config.bank, config.run_dir, progress=progress)
    config.record()
    return table


def load_manifest(run_dir: str | Path):
    """The manifest of a run as a pyarrow Table; `BankResolutionError` if it was never built."""
    import pyarrow.parquet as pq

    path = manifest_path(run_dir)
    if not path.is_file():
        raise BankResolutionError(f"{path} does not exist: run `lorabatch bank manifest CONFIG` first")
    return pq.read_table(path)


def manifest_hash(table) -> str:
    return table.schema.metadata[b"lorabatch.manifest_hash"].decode()


def trusts_remote_code(table) -> bool:
    """`bank.trust_remote_code` of the run whose manifest this is (False for older manifests)."""
    return (table.schema.metadata or {}).get(b"lorabatch.trust_remote_code") == b"true"
