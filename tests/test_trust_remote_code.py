"""`bank.trust_remote_code` reaches every load of the base model: a base model that ships its own
tokenizer and model code (transformers' `auto_map`) runs that code in features, generation and
predict with it, and never without it (transformers then falls back to its own classes)."""

import json

import pytest

from lorabatch.bank.manifest import build_manifest, trusts_remote_code
from lorabatch.config import parse_config
from lorabatch.features.config import FeaturesConfig
from tests.helpers.synthetic_bank import build_tiny_bank

CUSTOM_CODE = """
import os

from transformers import MistralForCausalLM, PreTrainedTokenizerFast


def _record(name):
    with open(os.environ["LORABATCH_TEST_REMOTE_CODE_LOG"], "a") as fh:
        fh.write(name + "\\n")


class CustomTokenizer(PreTrainedTokenizerFast):
    def __init__(self, *args, **kwargs):
        _record("CustomTokenizer")
        super().__init__(*args, **kwargs)


class CustomForCausalLM(MistralForCausalLM):
    def __init__(self, config):
        _record("CustomForCausalLM")
        super().__init__(config)
"""


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    bank = build_tiny_bank(tmp_path_factory.mktemp("remote-code"), n_tasks=2, rows=8)
    base = bank.root / bank.base_model
    (base / "custom_code.py").write_text(CUSTOM_CODE)
    for name, key, target in (
        ("tokenizer_config.json", "AutoTokenizer", [None, "custom_code.CustomTokenizer"]),
        ("config.json", "AutoModelForCausalLM", "custom_code.CustomForCausalLM"),
    ):
        cfg = json.loads((base / name).read_text())
        cfg["auto_map"] = {key: target}
        if name == "tokenizer_config.json":
            cfg["tokenizer_class"] = "CustomTokenizer"
        (base / name).write_text(json.dumps(cfg))
    return bank


@pytest.fixture
def code_log(tmp_path, monkeypatch):
    """Read the names of the custom classes instantiated so far (the base model's own code ran)."""
    log = tmp_path / "remote-code.log"
    log.write_text("")
    monkeypatch.setenv("LORABATCH_TEST_REMOTE_CODE_LOG", str(log))
    return lambda: log.read_text().split()


def _manifest(bank, run_dir, trust):
    config = parse_config({"run_dir": str(run_dir), "bank": bank.bank_config(trust_remote_code=trust)})
    return build_manifest(config, progress=False)


def test_features_generation_and_predict_run_the_base_models_code(bank, tmp_path, code_log):
    from lorabatch.features import compute_bank_features
    from lorabatch.generation.config import GenerationConfig
    from lorabatch.generation.hf_backend import HFGenerator
    from lorabatch.generation.plan import plan_work
    from lorabatch.generation.preflight import preflight
    from lorabatch.generation.stage import build_context
    from lorabatch.workflows.predict import query_bank_distances
    from lorabatch.workflows.userdata import read_user_dataset

    run = tmp_path / "run"
    manifest = _manifest(bank, run, trust=True)
    assert trusts_remote_code(manifest)
    assert len(compute_bank_features(manifest, run, FeaturesConfig(executor="local"), progress=False)) == 2
    assert code_log() == ["CustomTokenizer"]

    gen = GenerationConfig(backend="hf", settings=["base"], max_new_tokens=2)
    _, ctx = build_context(run, gen, "hf", seed=0)
    prepared, _ = preflight(plan_work(run, manifest, gen), ctx)
    assert all(ids[0] == 1 for ids in prepared.column("prompt_token_ids").to_pylist())
    assert code_log() == ["CustomTokenizer"] * 2
    HFGenerator(
        ctx.base_model_path,
        gen.hf.model_dump(),
        {"batch_size": 1, "seed": 0, "max_new_tokens": 2},
        ctx.trust_remote_code,
    )
    assert code_log()[2:] == ["CustomTokenizer", "CustomForCausalLM"]

    (tmp_path / "mine.jsonl").write_text('{"input": "red cat", "output": "blue"}\n')
    tasks, d = query_bank_distances(
        run, read_user_dataset(tmp_path / "mine.jsonl"), "JS", ctx.base_model_path, 0, False
    )
    assert tasks == ["task1", "task2"] and code_log()[4:] == ["CustomTokenizer"]


def test_without_trust_the_base_models_code_never_runs(bank, tmp_path, code_log):
    from lorabatch.features import compute_bank_features
    from lorabatch.generation.config import GenerationConfig
    from lorabatch.generation.hf_backend import HFGenerator
    from lorabatch.generation.stage import build_context

    run = tmp_path / "run"
    manifest = _manifest(bank, run, trust=False)
    assert not trusts_remote_code(manifest)
    compute_bank_features(manifest, run, FeaturesConfig(executor="local"), progress=False)
    gen = GenerationConfig(backend="hf", settings=["base"], max_new_tokens=2)
    _, ctx = build_context(run, gen, "hf", seed=0)
    HFGenerator(
        ctx.base_model_path,
        gen.hf.model_dump(),
        {"batch_size": 1, "seed": 0, "max_new_tokens": 2},
        ctx.trust_remote_code,
    )
    assert code_log() == []


def test_vllm_engine_gets_the_flag(bank, tmp_path):
    """ray.data.llm reads trust_remote_code from the engine kwargs (engine, tokenizer stages)."""
    from lorabatch.generation.config import GenerationConfig
    from lorabatch.generation.stage import build_context
    from lorabatch.generation.vllm_backend import VLLMBackend

    gen = GenerationConfig(backend="vllm", settings=["base"], max_new_tokens=2)
    for trust in (True, False):
        run = tmp_path / f"run-{trust}"
        _manifest(bank, run, trust=trust)
        _, ctx = build_context(run, gen, "vllm", seed=0)
        assert VLLMBackend(gen, ctx).engine_kwargs(enable_lora=True).get("trust_remote_code", False) is trust
