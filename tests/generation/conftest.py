"""A tiny run directory for generation tests: tiny Mistral + word-level tokenizer, 3 tasks with
random LoRAs (init large enough that adapters change greedy outputs), a bank manifest, one
synthesized setting and one setting whose adapters are missing, truncated or target no module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorabatch.layout import RunLayout

MAX_NEW_TOKENS = 8
MAX_INPUT_TOKENS = 24
LONG_EXAMPLE = "task1-long"
GOOD_SYNTH = "JS-normalized"
BROKEN_SYNTH = "XX-broken"
NEAR_TIE = 0.01  # logit margin under which float32 batched kernels may legitimately pick the runner-up


def _write_no_module_adapter(src: Path, dst: Path) -> None:
    """A copy of `src` whose tensors sit on a module the model does not have."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["target_modules"] = ["gate_projection_x"]
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "adapter_model.safetensors"))
    renamed = {
        k.replace("q_proj", "gate_projection_x")
        .replace("k_proj", "gate_projection_y")
        .replace("v_proj", "gate_projection_z"): v
        for k, v in tensors.items()
    }
    save_file(renamed, str(dst / "adapter_model.safetensors"))


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory) -> Path:
    from lorabatch.bank.datasets import read_split, write_split
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import parse_config
    from tests.helpers.synthetic_bank import build_tiny_bank

    root = tmp_path_factory.mktemp("gen")
    bank = build_tiny_bank(root / "bank", n_tasks=3, rank=8, rows=13)
    # task1 gets one prompt longer than MAX_INPUT_TOKENS.
    ds = bank.root / bank.org / "task1_tiny_1"
    rows = read_split(ds, "test").to_pylist()
    rows.append({"input": " ".join(["red green blue"] * 12), "output": ["red"], "id": LONG_EXAMPLE})
    write_split(ds, "test", rows)
    run = root / "run"
    config = parse_config({"run_dir": str(run), "bank": bank.bank_config(validate_weights=False)})
    manifest = build_manifest(config, progress=False)
    paths = dict(zip(manifest.column("task_id").to_pylist(), manifest.column("adapter_path").to_pylist()))
    # A synthesized setting: task i gets task (i mod 3) + 1's adapter.
    tasks = sorted(paths)
    for i, t in enumerate(tasks):
        shutil.copytree(paths[tasks[(i + 1) % len(tasks)]], RunLayout(run).adapter(GOOD_SYNTH, t))
    broken = RunLayout(run).adapters / BROKEN_SYNTH
    broken.mkdir(parents=True)
    # task1: missing; task2: truncated weights; task3: targets no module of the model.
    shutil.copytree(paths[tasks[1]], broken / tasks[1])
    w = broken / tasks[1] / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    _write_no_module_adapter(Path(paths[tasks[2]]), broken / tasks[2])
    return run


@pytest.fixture
def fresh_run(pristine_run, tmp_path) -> Path:
    """A private copy of the pristine run (its generations folder is the test's own)."""
    dst = tmp_path / "run"
    shutil.copytree(pristine_run, dst, symlinks=True)
    return dst


def manifest_rows(run: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(RunLayout(run).manifest).to_pylist()
    return {r["task_id"]: r for r in rows}


def reference_outputs(
    base_path: str, adapter_path: str | None, prompts: list[list[int]], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[list[int]]:
    """Greedy token ids from plain transformers (+ PEFT for an adapter), one unpadded prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    model.eval()
    out = []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            g = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=3,
            )
            toks = []
            for t in g[0, x.shape[1] :].tolist():
                toks.append(t)
                if t == 2:
                    break
            out.append(toks)
    return out


def divergence_margin(base, adapter, prompt_ids, ours, ref):
    """Float64 logit gap between the reference token and ours at the first step where they differ."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).to(torch.float64)
    step = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + ref[:step]])).logits[0, -1]
    return float(logits[ref[step]] - logits[ours[step]])


def generation_config(**overrides):
    from lorabatch.generation.config import GenerationConfig

    cfg = dict(max_new_tokens=MAX_NEW_TOKENS, max_input_tokens=MAX_INPUT_TOKENS, batch_size=64)
    cfg.update(overrides)
    return GenerationConfig(**cfg)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def gen():
    """Constants and helpers of these tests (test modules cannot import conftest in importlib mode)."""
    import types

    return types.SimpleNamespace(
        MAX_NEW_TOKENS=MAX_NEW_TOKENS,
        MAX_INPUT_TOKENS=MAX_INPUT_TOKENS,
        LONG_EXAMPLE=LONG_EXAMPLE,
        GOOD_SYNTH=GOOD_SYNTH,
        BROKEN_SYNTH=BROKEN_SYNTH,
        config=generation_config,
        manifest_rows=manifest_rows,
        reference_outputs=reference_outputs,
        divergence_margin=divergence_margin,
        NEAR_TIE=NEAR_TIE,
    )
