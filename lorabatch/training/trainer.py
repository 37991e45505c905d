"""The driver side: one LoRA per `TrainJob` on Ray Train's `TorchTrainer`, several at once.

Storage (checkpoints and Ray Train's own state) lives under a directory the caller chooses —
`RUN/training/` for the commands — as `<storage>/<job name>/`; a job of the same name started
again (after its driver was killed, say) resumes from its latest checkpoint. Inputs travel as
Parquet files beside it:

    <storage>/inputs/<name>.parquet     ids list<int64>, n_prompt int64: the encoded examples
    <storage>/progress/<name>.json      rank 0's pid, host, step, steps, starts (the worker's heartbeat)
    <storage>/<name>/checkpoint_*/      `checkpoint.py`'s files; Ray Train's state beside them
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lorabatch.atomic import write_parquet
from lorabatch.errors import LorabatchError
from lorabatch.examples import encode_examples
from lorabatch.raysession import ensure_ray
from lorabatch.training.checkpoint import ADAPTER_WEIGHTS, STATE
from lorabatch.training.config import TrainingConfig
from lorabatch.training.lora import LoraSpec
from lorabatch.training.worker import train_loop_per_worker

log = logging.getLogger(__name__)


class TrainingError(LorabatchError):
    """Training failed (after the retries `max_failures` allows) or cannot start."""


@dataclass(frozen=True)
class TrainJob:
    """One adapter to train: where its base model is, its examples, its LoRA and its data seed."""

    name: str  # unique within the storage directory; the same name resumes
    base_model_path: Path
    rows: list[dict]  # input (str), output (list[str]); the loss is on output[0]
    spec: LoraSpec
    data_seed: int
    trust_remote_code: bool = False


@dataclass
class TrainResult:
    name: str
    checkpoint_dir: Path  # the final checkpoint: PEFT files + optimizer + trainer_state.json
    losses: list[float]  # the global batch's mean answer-token loss at every step
    starts: list[int]  # the step each attempt (first run, worker restarts, resumed drivers) began at
    train_seconds: float  # summed step time, over all attempts
    cpu_seconds: float  # CPU time of rank 0's process during those steps (all its threads)
    tokens: int
    wall_seconds: float  # of this call's fit


def storage_paths(storage: Path, name: str) -> tuple[Path, Path]:
    """(examples Parquet, progress JSON) of job `name` under `storage`."""
    return storage / "inputs" / f"{name}.parquet", storage / "progress" / f"{name}.json"


def use_gpu(config: TrainingConfig) -> bool:
    if config.use_gpu is not None:
        return config.use_gpu
    import torch

    return torch.cuda.is_available()


def ray_cpus_needed(config: TrainingConfig, parallel: int = 1) -> int:
    return config.workers * config.threads_per_worker * parallel


def fit_lora(job: TrainJob, config: TrainingConfig, storage: str | Path) -> TrainResult:
    """Train `job` on Ray Train (Ray must be initialised); returns the final checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = Path(storage).resolve()
    examples_path, progress_path = storage_paths(storage, job.name)
    pad_id = _write_examples(job, examples_path)
    gpu = use_gpu(config)
    trainer = TorchTrainer(
        _entry_point,
        train_loop_config={
            "base_model_path": str(job.base_model_path),
            "examples_path": str(examples_path),
            "pad_id": pad_id,
            "spec": job.spec.as_dict(),
            "hyper": config.hyperparameters(),
            "data_seed": job.data_seed,
            "checkpoint_every": config.checkpoint_every,
            "report_every": config.report_every,
            "threads": config.threads_per_worker,
            "progress_path": str(progress_path),
            "trust_remote_code": job.trust_remote_code,
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": config.threads_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=RunConfig(
            name=job.name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps the worker's exception; its text names the cause
        raise TrainingError(f"training {job.name} failed: {err}") from err
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise TrainingError(f"training {job.name} ended without a checkpoint")
    directory = Path(result.checkpoint.path)
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise TrainingError(f"training {job.name}: its final checkpoint {directory} holds no {ADAPTER_WEIGHTS}")
    state = json.loads((directory / STATE).read_text())
    if state["step"] != state["steps"]:
        raise TrainingError(f"training {job.name} stopped at step {state['step']} of {state['steps']}")
    return TrainResult(
        job.name,
        directory,
        state["losses"],
        state["starts"],
        state["seconds"],
        state.get("cpu_seconds", 0.0),
        state["tokens"],
        wall,
    )


def fit_many(
    jobs: list[TrainJob], config: TrainingConfig, storage: str | Path, parallel: int | None = None
) -> dict[str, TrainResult]:
    """Train every job, `parallel` (default `config.parallel_tasks`) at a time; each job's result
    depends only on the job and `config`, never on which ran beside it."""
    parallel = max(1, min(parallel or config.parallel_tasks, len(jobs)))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="lorabatch-train") as pool:
        results = list(pool.map(lambda j: fit_lora(j, config, storage), jobs))
    return {r.name: r for r in results}


def ensure_training_ray(config: TrainingConfig, address: str | None = None, parallel: int = 1) -> None:
    """Ray for training: the cluster at `address` / RAY_ADDRESS, else a local instance with at
    least the CPUs `parallel` jobs ask for (Ray counts CPUs as slots, not cores)."""

    ensure_ray(address, num_cpus=max(os.cpu_count() or 1, ray_cpus_needed(config, parallel)))


def _write_examples(job: TrainJob, path: Path) -> int:
    """Encode the job's rows with the base model's tokenizer into `path`; returns the pad id."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    if not job.rows:
        raise TrainingError(f"training {job.name}: no training examples")
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_path, trust_remote_code=job.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = encode_examples(tokenizer, job.rows)
    table = pa.table(
        {
            "ids": pa.array([ids for ids, _ in items], pa.list_(pa.int64())),
            "n_prompt": pa.array([n for _, n in items], pa.int64()),
        }
    )
    write_parquet(path, table)
    return int(pad_id)


def _entry_point(job: dict) -> None:

    train_loop_per_worker(job)
