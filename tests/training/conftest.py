"""A tiny prepared bank (manifest only) and a learnable dataset for the training tests."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

# The answer is a fixed function of the prompt's first word: a base model never says it, a
# trained LoRA learns it within a few dozen steps.
ANSWERS = {"red": "yes", "green": "no", "blue": "up", "yellow": "down"}
FILLER = ["cat", "dog", "bird", "fish", "one", "two", "three", "four", "apple", "pear", "plum"]


def learnable_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = rng.choice(sorted(ANSWERS))
        rows.append(
            {
                "input": " ".join([first] + [rng.choice(FILLER) for _ in range(4)]),
                "output": [ANSWERS[first]],
                "id": str(i),
            }
        )
    return rows


@pytest.fixture(scope="session")
def train_bank(tmp_path_factory):
    """(run directory with a bank manifest, train.jsonl, test rows) over a 2-task tiny bank."""
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import parse_config
    from tests.helpers.synthetic_bank import build_tiny_bank

    root = tmp_path_factory.mktemp("train-bank")
    bank = build_tiny_bank(root / "bank", n_tasks=2, rank=8, rows=12, test_rows=2)
    _sharpen_output_layer(root / "bank" / bank.base_model)
    run = root / "run"
    build_manifest(parse_config({"run_dir": str(run), "bank": bank.bank_config()}), progress=False)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in learnable_rows(64, seed=1)))
    return run, data, learnable_rows(24, seed=2)


def _sharpen_output_layer(base_dir: Path, factor: float = 25.0) -> None:
    """Scale the random base model's lm_head: at its initial scale (std 0.02 after a unit-RMS norm)
    the logits span about one nat, so no LoRA of q/k/v can make any answer likely."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    model.save_pretrained(base_dir)


@pytest.fixture
def local_ray():
    """Ray in this process, 2 CPUs, shut down afterwards."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture
def fresh_run(train_bank, tmp_path):
    """fresh_run(name) -> a copy of the bank's run directory (its own RUN/training, so nothing is
    resumed from another test's training), the data and the test rows."""
    run, data, test_rows = train_bank

    def copy(name: str = "run"):
        shutil.copytree(run, tmp_path / name)
        return tmp_path / name, data, test_rows

    return copy


@pytest.fixture(scope="session")
def rouge_own_vs_base():
    """score(adapter_dir, base_dir, rows) -> mean Rouge-L of the adapter (loaded with stock PEFT)
    and of the base model on `rows`."""
    return _rouge_own_vs_base


def _rouge_own_vs_base(adapter_dir: Path, base_dir: Path, rows: list[dict]) -> tuple[float, float]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorabatch.demo.evaluate import own_vs_base

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    model.eval()
    result = own_vs_base(model, tokenizer, rows, max_new_tokens=4)
    return result["own"], result["base"]
