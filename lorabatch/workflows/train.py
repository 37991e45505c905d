"""`lorabatch train`: the gradient-trained counterpart of `lorabatch predict` — same inputs (a
prepared bank and a dataset file or directory), same output (a PEFT directory + provenance.json).

    data (jsonl | csv | parquet | dataset dir) ──encode──▶ RUN/training/inputs/<name>.parquet
      ──TorchTrainer (workers × DDP, checkpoints under RUN/training/<name>/)──▶ PEFT dir at OUT

The LoRA has the bank's rank, alpha and target modules and names the bank's base model; its
lora_A starts from PEFT's default initialisation drawn from the seed. The run's name is a hash of
what decides the adapter (bank, data, LoRA, hyper-parameters, seed), so running the same command
again after its driver was killed resumes from the last checkpoint instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from lorabatch import __version__
from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.atomic import atomic_dir
from lorabatch.bank.manifest import base_model_with_weights, load_manifest, manifest_hash, trusts_remote_code
from lorabatch.config import load_config
from lorabatch.errors import LorabatchError
from lorabatch.layout import RunLayout
from lorabatch.runlock import run_lock
from lorabatch.synthesis.writer import PROVENANCE_VERSION, check_finite, finish_adapter_dir, refuse_foreign_dir
from lorabatch.training.config import TrainingConfig
from lorabatch.training.lora import LoraSpec
from lorabatch.training.trainer import (
    TrainingError,
    TrainJob,
    TrainResult,
    ensure_training_ray,
    fit_lora,
)
from lorabatch.workflows.userdata import (
    check_out_dir,
    check_out_outside_bank,
    dataset_hash,
    ignored_columns,
    read_user_dataset,
)

TRAIN_SETTING = "train"


def training_storage(bank_run: str | Path) -> Path:
    """RUN/training: checkpoints, inputs and progress of every adapter trained against the bank."""
    return RunLayout(bank_run).training


@dataclass
class TrainedAdapter:
    adapter_dir: Path
    result: TrainResult
    ignored_columns: list[str]


def bank_lora_spec(manifest, init_seed: int) -> LoraSpec:
    """The bank's LoRA shape (its first task's: validation made them all agree) with `init_seed`."""
    row = manifest.slice(0, 1).to_pylist()[0]
    return LoraSpec(
        int(row["rank"]), float(row["alpha"]), tuple(sorted(row["target_modules"])), row["base_model"], int(init_seed)
    )


def base_model_weights(bank_run: Path, manifest) -> Path:
    """The bank's base model directory with its weights (a hub bank's manifest may point at a
    directory holding only config and tokenizer: the weights are then fetched)."""
    path = Path(manifest.column("base_model_path")[0].as_py())
    if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        return path
    config = RunLayout(bank_run).config
    if not config.is_file():
        raise TrainingError(
            f"the bank's base model directory {path} holds no weights and {bank_run} has no config.yaml to fetch them with"
        )
    return base_model_with_weights(load_config(config).bank)


def training_key(manifest_hash: str, data_hash: str, spec: LoraSpec, config: TrainingConfig, data_seed: int) -> str:
    """Content hash of what decides a trained adapter (execution settings excluded)."""
    payload = {
        "bank": manifest_hash,
        "data": data_hash,
        "lora": spec.as_dict(),
        "hyper": config.hyperparameters(),
        "data_seed": data_seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train_adapter(
    bank_run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    config: TrainingConfig | None = None,
    seed: int = 0,
    address: str | None = None,
) -> TrainedAdapter:
    """Train an adapter for the dataset at `data` on the bank's base model; write it to `out`."""
    config = config or TrainingConfig()
    bank_run, data, out = Path(bank_run), Path(data), Path(out)
    try:
        manifest = load_manifest(bank_run)
    except (LorabatchError, OSError, ValueError) as err:  # no manifest, or an unreadable one
        raise TrainingError(f"{bank_run} is not a prepared bank: {err}") from None
    check_out_outside_bank(out, bank_run, manifest)
    check_out_dir(out)
    dataset = read_user_dataset(data)
    seed = config.seed if config.seed is not None else seed
    spec = bank_lora_spec(manifest, init_seed=seed)
    base = base_model_weights(bank_run, manifest)
    data_hash = dataset_hash(dataset)
    key = training_key(manifest_hash(manifest), data_hash, spec, config, seed)
    rows = [
        {"input": x, "output": o}
        for x, o in zip(dataset.column("input").to_pylist(), dataset.column("output").to_pylist())
    ]
    job = TrainJob(
        f"train-{key[:16]}", base, rows, spec, data_seed=seed, trust_remote_code=trusts_remote_code(manifest)
    )
    storage = training_storage(bank_run)
    with run_lock(storage / "locks" / job.name, command=f"lorabatch train {data}", wait=False):
        ensure_training_ray(config, address)
        result = fit_lora(job, config, storage)
    provenance = training_provenance(
        result,
        config,
        spec,
        manifest_hash(manifest),
        key,
        target=f"query:{data_hash[:16]}",
        extra={"query": {"data": str(data), "data_sha256": data_hash, "n_examples": dataset.num_rows}},
    )
    write_trained_adapter(result.checkpoint_dir, out, provenance)
    return TrainedAdapter(out, result, ignored_columns(dataset))


def training_provenance(
    result: TrainResult,
    config: TrainingConfig,
    spec: LoraSpec,
    manifest_hash: str | None,
    key: str,
    target: str,
    extra: dict | None = None,
) -> dict:
    """provenance.json of a trained adapter (the writer's keys; `synthesis_key` is the training key)."""
    losses = result.losses
    record = {
        "provenance_version": PROVENANCE_VERSION,
        "lorabatch_version": __version__,
        "setting": TRAIN_SETTING,
        "target": target,
        "bank_manifest_hash": manifest_hash,
        "synthesis_key": key,
        "training": {
            "hyperparameters": config.hyperparameters(),
            "lora": spec.as_dict(),
            "workers": config.workers,
            "threads_per_worker": config.threads_per_worker,
            "loss_first": losses[0],
            "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
            "starts": result.starts,
            "train_seconds": round(result.train_seconds, 3),
            "cpu_seconds": round(result.cpu_seconds, 3),
            "tokens": result.tokens,
        },
    }
    record.update(extra or {})
    return record


def write_trained_adapter(checkpoint_dir: Path, out: Path, provenance: dict) -> Path:
    """Copy a final checkpoint's PEFT files to `out` with provenance.json, atomically; refuses
    non-finite weights and replaces only an empty directory or a previous lorabatch adapter."""
    from safetensors.numpy import load_file

    for name, values in load_file(str(checkpoint_dir / ADAPTER_WEIGHTS)).items():
        check_finite(name, values)
    adapter_config = json.loads((checkpoint_dir / ADAPTER_CONFIG).read_text())
    with atomic_dir(out, check_replace=refuse_foreign_dir) as tmp:
        shutil.copyfile(checkpoint_dir / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        finish_adapter_dir(tmp, adapter_config, provenance)
    return out
