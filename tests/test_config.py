"""Config validation: every invalid field reported at once with its path and value."""

import subprocess
import sys
from pathlib import Path

import pytest

from lorabatch.config import load_config, parse_config
from lorabatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert demo.bank.source == "local" and demo.bank.demo.size == "default"
    paper = load_config(REPO / "configs" / "paper.yaml")
    assert paper.bank.adapter_repo.format(number=1342) == "Lots-of-LoRAs/Mistral-7B-Instruct-v0.2-4b-r16-task1342"


def test_every_problem_reported_with_path_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "run_dir: r\nseed: many\nbank:\n  source: ftp\n  base_model: m\n  tasks: [task1, banana]\n  colour: red\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    text = str(info.value)
    assert len(info.value.problems) == 4, info.value.problems
    assert "seed:" in text and "'many'" in text
    assert "bank.source:" in text and "'ftp'" in text
    assert "bank.tasks:" in text and "banana" in text
    assert "bank.colour: unknown field" in text
    assert str(bad) in text


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="needs bank.root"):
        parse_config({"run_dir": "r", "bank": {"source": "local", "base_model": "m"}})
    with pytest.raises(ConfigError, match="must contain '{number}' once and no '{slug}'"):
        parse_config({"run_dir": "r", "bank": {"source": "hub", "base_model": "m", "adapter_repo": "o/x-{slug}"}})
    with pytest.raises(ConfigError, match="listed more than once"):
        parse_config({"run_dir": "r", "bank": {"source": "hub", "base_model": "m", "tasks": ["task1", "task1_a"]}})


def test_overrides_and_missing_file(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", {"run_dir": str(tmp_path / "x"), "bank.tasks": ["task3"]})
    assert cfg.run_dir == tmp_path / "x" and cfg.bank.tasks == ["task3"]
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_import_and_help_stay_light():
    """`import lorabatch.cli` must not pull in torch, transformers, vllm or ray."""
    code = (
        "import sys, lorabatch, lorabatch.cli, lorabatch.config\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'ray', 'peft') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    help_out = subprocess.run([sys.executable, "-m", "lorabatch.cli", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "bank" in help_out.stdout


def test_cli_reports_config_errors_and_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: r\nbank: {source: local, base_model: m}\n")
    out = subprocess.run(
        [sys.executable, "-m", "lorabatch.cli", "bank", "manifest", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "needs bank.root" in out.stderr


def test_every_section_reported_at_once_before_any_work(tmp_path):
    """One bad field in every section of the sweep config: all are reported together, with their
    dotted path and value, and `lorabatch sweep` stops before it creates anything."""
    run_dir = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"run_dir: {run_dir}\n"
        "ray: {num_cpus: 0}\n"
        "bank: {source: local, root: bank, base_model: m}\n"
        "features: {mmd_sample_size: -3, embedding: {batch_size: 0}}\n"
        "distances: {metrics: [JS, Hellinger], executor: gpu}\n"
        "synthesis: {temperature: -1, models: [normalized, lasso], neural: {epochs: 0}, jit_wave: 0}\n"
        "generation: {backend: onnx, max_new_tokens: 0, vllm: {max_lora_rank: 7}, hf: {dtype: int4}}\n"
        "scoring: {reference: last}\n"
    )
    expected = {
        "ray.num_cpus": "0",
        "features.mmd_sample_size": "-3",
        "features.embedding.batch_size": "0",
        "distances.metrics": "Hellinger",
        "distances.executor": "'gpu'",
        "synthesis.temperature": "-1",
        "synthesis.models": "lasso",
        "synthesis.neural.epochs": "0",
        "synthesis.jit_wave": "0",
        "generation.backend": "onnx",
        "generation.max_new_tokens": "0",
        "generation.vllm.max_lora_rank": "7",
        "generation.hf.dtype": "'int4'",
        "scoring.reference": "'last'",
    }
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    problems = info.value.problems
    for path, value in expected.items():
        lines = [p for p in problems if p.startswith(f"{path}:") or p.startswith(f"{path}.")]
        assert lines, f"{path} not reported in {problems}"
        assert value in lines[0], (path, lines[0])
    assert len(problems) == len(expected), problems

    out = subprocess.run([sys.executable, "-m", "lorabatch.cli", "sweep", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert all(path in out.stderr for path in expected), out.stderr
    assert not run_dir.exists()


def test_cli_set_overrides_are_typed_and_validated(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nbank: {{source: hub, base_model: m}}\n")
    cmd = [sys.executable, "-m", "lorabatch.cli", "sweep", str(cfg)]
    out = subprocess.run(
        cmd + ["--set", "synthesis.top_k=0", "--set", "distances.metrics=[JS, XX]"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "synthesis.top_k: Input should be greater than or equal to 1 (got 0)" in out.stderr
    assert "unknown metric(s) ['XX']" in out.stderr
    out = subprocess.run(cmd + ["--set", "synthesis.top_k"], capture_output=True, text=True)
    assert out.returncode == 2 and "expected dotted.path=value" in out.stderr

    from lorabatch.cli import config_overrides

    got = load_config(cfg, config_overrides(["synthesis.top_k=3", "synthesis.jit=true", "distances.metrics=[JS, KL]"]))
    assert got.synthesis.top_k == 3 and got.synthesis.jit is True and got.distances.metrics == ["JS", "KL"]


def test_fault_tolerance_is_a_runtime_choice_recorded_with_the_run(tmp_path):
    import yaml

    from lorabatch.config import dump_config, parse_config
    from lorabatch.raysession import FAULT_TOLERANCE

    base = {"run_dir": str(tmp_path / "run"), "bank": {"source": "local", "root": str(tmp_path), "base_model": "o/b"}}
    cfg = parse_config(base)
    # Chosen, and written into RUN/config.yaml with the rest of the config.
    assert yaml.safe_load(dump_config(cfg))["ray"]["fault_tolerance"] == FAULT_TOLERANCE
    changed = parse_config({**base, "ray": {"fault_tolerance": {"actor_restarts": -1, "task_retries": 0}}})
    assert changed.ray.fault_tolerance.actor_restarts == -1
    # How a run survives faults is not what it computes: no cache key changes.
    assert changed.results() == cfg.results()
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "ray": {"fault_tolerance": {"actor_restarts": -2, "retries": 1}}})
    assert "ray.fault_tolerance.actor_restarts" in str(info.value) and "ray.fault_tolerance.retries" in str(info.value)
