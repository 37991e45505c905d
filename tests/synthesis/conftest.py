"""A tiny bank for synthesis tests: a 2-layer MistralForCausalLM and random PEFT LoRA adapters.

The run directory holds `bank/manifest.parquet` with the columns synthesis reads, and a seeded
random distance matrix in `distances/JS.parquet` (the distances stage's contract).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lorabatch.layout import RunLayout
from tests.helpers.synthetic_bank import build_base_model

BASE_NAME = "lorabatch-test/tiny-mistral"
N_TASKS = 5
RANK = 8


@dataclass
class TinyRun:
    run_dir: Path
    base_dir: Path
    task_ids: list[str]
    adapter_dirs: list[Path]
    distances: np.ndarray


def build_base(out_dir: Path):
    return build_base_model(out_dir, vocab_size=64, intermediate_size=96, max_positions=64)


def build_adapters(base_model, root: Path, n: int, rank: int, dtype=None, poison: int | None = None) -> list[Path]:
    """`n` PEFT adapters with random lora_A and lora_B (seeded); `poison` puts a NaN into one."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj"], lora_dropout=0.0, bias="none"
    )
    model = get_peft_model(base_model, lora)
    model.peft_config["default"].base_model_name_or_path = BASE_NAME
    dirs = []
    for k in range(n):
        torch.manual_seed(100 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.3)
                    if poison == k and "lora_B" in name:
                        p.view(-1)[3] = float("nan")
        out = root / f"adapter-task{k + 1}"
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(out, save_embedding_layers=False)
        dirs.append(out)
    model.unload()
    return dirs


def write_manifest(run_dir: Path, task_ids: list[str], adapter_dirs: list[Path], base_dir: Path) -> None:
    import pyarrow as pa

    from lorabatch.atomic import write_parquet
    from lorabatch.bank.datasets import file_sha256

    shas = [file_sha256(d / "adapter_model.safetensors") for d in adapter_dirs]
    table = pa.Table.from_pylist(
        [
            {
                "task_id": t,
                "adapter_path": str(d),
                "base_model": BASE_NAME,
                "base_model_path": str(base_dir),
                "rank": RANK,
                "alpha": 2.0 * RANK,
                "target_modules": ["k_proj", "q_proj", "v_proj"],
                "adapter_sha256": s,
            }
            for t, d, s in zip(task_ids, adapter_dirs, shas)
        ]
    )
    digest = hashlib.sha256("".join(shas).encode()).hexdigest()
    write_parquet(RunLayout(run_dir).manifest, table.replace_schema_metadata({"lorabatch.manifest_hash": digest}))


def write_distances(run_dir: Path, metric: str, task_ids: list[str], d: np.ndarray) -> None:
    import pyarrow as pa

    from lorabatch.atomic import write_parquet

    rows = [
        {"target": t, "source": s, "d": float(d[i, j])} for i, t in enumerate(task_ids) for j, s in enumerate(task_ids)
    ]
    write_parquet(RunLayout(run_dir).distances(metric), pa.Table.from_pylist(rows))


def random_distances(n: int, seed: int = 0) -> np.ndarray:
    d = np.random.default_rng(seed).uniform(0.05, 3.0, size=(n, n))
    np.fill_diagonal(d, 0.0)
    return d


@pytest.fixture(scope="session")
def tiny_bank(tmp_path_factory) -> TinyRun:
    root = tmp_path_factory.mktemp("tiny-bank")
    base_dir = root / "base"
    base = build_base(base_dir)
    from tests.helpers.synthetic_bank import build_tokenizer

    build_tokenizer(base_dir)
    dirs = build_adapters(base, root / "adapters", N_TASKS, RANK)
    task_ids = [f"task{k + 1}" for k in range(N_TASKS)]
    run_dir = root / "run"
    write_manifest(run_dir, task_ids, dirs, base_dir)
    d = random_distances(N_TASKS)
    write_distances(run_dir, "JS", task_ids, d)
    return TinyRun(run_dir, base_dir, task_ids, dirs, d)


@pytest.fixture()
def fresh_run(tiny_bank, tmp_path) -> TinyRun:
    """A new run directory over the session's bank (tests may write adapters into it)."""
    run_dir = tmp_path / "run"
    write_manifest(run_dir, tiny_bank.task_ids, tiny_bank.adapter_dirs, tiny_bank.base_dir)
    write_distances(run_dir, "JS", tiny_bank.task_ids, tiny_bank.distances)
    return TinyRun(run_dir, tiny_bank.base_dir, tiny_bank.task_ids, tiny_bank.adapter_dirs, tiny_bank.distances)


def load_tensors(adapter_dir: Path) -> dict:
    """An adapter's tensors as float64 numpy arrays, read with the safetensors library."""
    from safetensors.torch import load_file

    return {k: v.double().numpy() for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}


QUERY_D = np.array([0.9, 0.2, 1.7, 0.4, 1.1])


@pytest.fixture()
def predict_bank(fresh_run, monkeypatch) -> TinyRun:
    """A prepared bank for `predict` whose query distances are the fixed row QUERY_D (features and
    distances have their own tests); `calls` records every query, i.e. every feature computation."""
    from lorabatch.workflows import predict as predict_mod

    RunLayout(fresh_run.run_dir).features.mkdir()
    (RunLayout(fresh_run.run_dir).features / "task1.npy").write_bytes(b"")
    calls = []

    def fake_query(bank_run, dataset, metric, base_model_path, seed, progress):
        calls.append((metric, dataset.num_rows))
        return list(fresh_run.task_ids), QUERY_D

    monkeypatch.setattr(predict_mod, "query_bank_distances", fake_query)
    fresh_run.calls = calls
    return fresh_run
