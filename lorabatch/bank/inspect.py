"""Read one task's adapter and dataset and record their facts, or what is wrong with them.

Nothing here raises on a bad task: every problem is returned with the task it concerns, so a
bank's validation reports all of them at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.bank.datasets import REQUIRED_COLUMNS, SPLITS, dataset_content_hash, file_sha256, split_files
from lorabatch.bank.resolve import TaskRef
from lorabatch.bank.sources import ADAPTER_FILES, DATASET_FILES, RepoSource
from lorabatch.errors import BankResolutionError


@dataclass
class TaskFacts:
    ref: TaskRef
    adapter_path: Path | None = None
    dataset_path: Path | None = None
    base_model: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: tuple[str, ...] = ()
    dtype: str | None = None
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    n_params: int = 0
    adapter_sha256: str | None = None
    dataset_sha256: str | None = None
    split_rows: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def inspect_task(ref: TaskRef, source: RepoSource, check_finite: bool = True) -> TaskFacts:
    facts = TaskFacts(ref=ref)
    try:
        facts.adapter_path = source.repo_dir(ref.adapter_repo, "model", ADAPTER_FILES)
    except BankResolutionError as err:
        facts.problems.append(f"adapter: {err}")
    else:
        _inspect_adapter(facts, check_finite)
    try:
        facts.dataset_path = source.repo_dir(ref.dataset_repo, "dataset", DATASET_FILES)
    except BankResolutionError as err:
        facts.problems.append(f"dataset: {err}")
    else:
        _inspect_dataset(facts)
    return facts


def _inspect_adapter(facts: TaskFacts, check_finite: bool) -> None:
    cfg_file = facts.adapter_path / ADAPTER_CONFIG
    weights = facts.adapter_path / ADAPTER_WEIGHTS
    for f in (cfg_file, weights):
        if not f.is_file():
            facts.problems.append(f"adapter: missing file {f.name} in {facts.adapter_path}")
    if facts.problems:
        return
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        facts.problems.append(f"adapter: {cfg_file} is not valid JSON ({err})")
        return
    if cfg.get("peft_type", "LORA") != "LORA":
        facts.problems.append(f"adapter: peft_type is {cfg.get('peft_type')!r}, expected 'LORA'")
    facts.base_model = cfg.get("base_model_name_or_path")
    facts.rank = cfg.get("r")
    facts.alpha = cfg.get("lora_alpha")
    targets = cfg.get("target_modules")
    facts.target_modules = tuple(sorted(targets)) if isinstance(targets, list) else (targets,)
    if cfg.get("bias", "none") != "none":
        facts.problems.append(f"adapter: bias is {cfg.get('bias')!r}; only 'none' can be mixed")
    _inspect_tensors(facts, weights, check_finite)
    facts.adapter_sha256 = file_sha256(weights)


def _inspect_tensors(facts: TaskFacts, weights: Path, check_finite: bool) -> None:
    import numpy as np
    import torch
    from safetensors import safe_open

    try:
        # torch, not numpy: numpy has no bfloat16, the dtype most published adapters are stored in
        with safe_open(str(weights), framework="pt") as fh:
            names = sorted(fh.keys())
            dtypes = set()
            for name in names:
                sl = fh.get_slice(name)
                facts.tensor_shapes[name] = tuple(sl.get_shape())
                dtypes.add(sl.get_dtype())
                if check_finite:
                    t = fh.get_tensor(name)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        facts.problems.append(f"adapter: tensor {name} has non-finite values (NaN or inf)")
    except Exception as err:  # safetensors raises several types for a corrupt file
        facts.problems.append(f"adapter: cannot read {weights.name}: {err}")
        return
    if not names:
        facts.problems.append(f"adapter: {weights.name} holds no tensors")
    facts.dtype = ",".join(sorted(dtypes))
    facts.n_params = int(sum(np.prod(s) for s in facts.tensor_shapes.values()))
    if facts.rank is not None:
        for name, shape in facts.tensor_shapes.items():
            if ".lora_A." in name and shape[0] != facts.rank:
                facts.problems.append(
                    f"adapter: {name} has rank {shape[0]} but adapter_config.json says r={facts.rank}"
                )
                break


def _inspect_dataset(facts: TaskFacts) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in SPLITS:
        files = split_files(facts.dataset_path, split)
        if not files:
            if split != "valid":
                facts.problems.append(f"dataset: no '{split}' split (data/{split}-*.parquet) in {facts.dataset_path}")
            facts.split_rows[split] = 0
            continue
        rows = 0
        ids: list = []
        for f in files:
            try:
                meta = pq.read_metadata(f)
                schema = pq.read_schema(f)
            except Exception as err:
                facts.problems.append(f"dataset: cannot read {f.name}: {err}")
                continue
            rows += meta.num_rows
            missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
            if missing:
                facts.problems.append(f"dataset: {split} file {f.name} lacks column(s) {missing} (has {schema.names})")
                continue
            out_type = schema.field("output").type
            if not (pa.types.is_list(out_type) or pa.types.is_large_list(out_type)):
                facts.problems.append(f"dataset: column 'output' of {f.name} is {out_type}, expected a list of strings")
            try:
                ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
            except Exception as err:
                facts.problems.append(f"dataset: cannot read the ids of {f.name}: {err}")
        facts.split_rows[split] = rows
        duplicates = _duplicate_ids(ids)
        if duplicates:
            facts.problems.append(f"dataset: the '{split}' split has duplicate example ids: {duplicates}")
        if rows == 0 and split in ("train", "test"):
            facts.problems.append(f"dataset: the '{split}' split is empty")
    facts.dataset_sha256 = dataset_content_hash(facts.dataset_path)


def _duplicate_ids(ids: list, shown: int = 5) -> str:
    """'id' (n times), ... for every id occurring more than once ('' if none); results are keyed
    by (task, setting, example id), so two examples with one id would overwrite each other."""
    from collections import Counter

    dupes = [(i, n) for i, n in Counter(ids).items() if n > 1]
    if not dupes:
        return ""
    text = ", ".join(f"{i!r} ({n} times)" for i, n in dupes[:shown])
    return text + (f" and {len(dupes) - shown} more" if len(dupes) > shown else "")
