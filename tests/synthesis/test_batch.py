"""Batch synthesis (blocked streaming) and the stage on a run directory."""

import json
import os

import numpy as np
import pytest

from lorabatch.layout import RunLayout
from lorabatch.synthesis.batch import bank_gram, synthesize_batch
from lorabatch.synthesis.coefficients import attentional_coefficients, normalized_coefficients
from lorabatch.synthesis.config import NeuralConfig, SynthesisConfig
from lorabatch.synthesis.stage import (
    adapter_dir,
    compute_coefficients,
    jit_adapter,
    neural_model_dir,
    read_coefficients,
    synthesize_setting,
)
from lorabatch.synthesis.tensors import bank_layout, layout_from_manifest
from lorabatch.synthesis.writer import NonFiniteWeightsError

from .conftest import build_adapters, build_base, load_tensors


def provs(n):
    return [{"target": f"t{i}"} for i in range(n)]


def expected_adapter(banks, c_row):
    return {k: sum(c_row[j] * banks[j][k] for j in range(len(banks))) for k in banks[0]}


def test_blocked_streaming_equals_the_per_adapter_combination(tiny_bank, tmp_path):
    layout = layout_from_manifest(tiny_bank.run_dir)
    c = normalized_coefficients(tiny_bank.distances)
    outs = [tmp_path / f"a{i}" for i in range(5)]
    # chunks of 1024 elements cross tensor boundaries (tensors hold 256 or 512 elements)
    synthesize_batch(layout, c, outs, provs(5), chunk_size=1024, executor="local", progress=False)
    banks = [load_tensors(d) for d in tiny_bank.adapter_dirs]
    for i, out in enumerate(outs):
        got, want = load_tensors(out), expected_adapter(banks, c[i])
        assert sorted(got) == sorted(want)
        for k in want:
            assert np.abs(got[k] - want[k]).max() <= 1e-6
        prov = json.loads((out / "provenance.json").read_text())
        assert prov["target"] == f"t{i}" and len(prov["adapter_sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dirs left


def test_bfloat16_output_rounds_like_torch(tiny_bank, tmp_path):
    import torch
    from safetensors.torch import load_file

    layout = layout_from_manifest(tiny_bank.run_dir)
    c = attentional_coefficients(tiny_bank.distances)[:2]
    synthesize_batch(
        layout, c, [tmp_path / "a", tmp_path / "b"], provs(2), chunk_size=2048, output_dtype="bfloat16", progress=False
    )
    banks = [load_tensors(d) for d in tiny_bank.adapter_dirs]
    got = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    for k, want in expected_adapter(banks, c[1]).items():
        assert got[k].dtype == torch.bfloat16
        ref = torch.from_numpy(want.astype(np.float32)).to(torch.bfloat16)
        # same rounding as torch up to float32 summation-order differences of one bf16 ulp
        assert (got[k].float() - ref.float()).abs().max() <= ref.float().abs().max() * 2**-7


def test_non_finite_result_leaves_no_adapter(tmp_path):
    base = build_base(tmp_path / "base")
    dirs = build_adapters(base, tmp_path / "bank", 3, 8, poison=1)
    layout = bank_layout(["task1", "task2", "task3"], dirs)
    c = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    outs = [tmp_path / "out" / f"a{i}" for i in range(3)]
    with pytest.raises(NonFiniteWeightsError, match="non-finite"):
        synthesize_batch(layout, c, outs, provs(3), chunk_size=1024, progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bank_gram_matches_dense(tiny_bank):
    layout = layout_from_manifest(tiny_bank.run_dir)
    theta = np.stack([layout.read_flat(i) for i in range(5)]).astype(np.float64)
    assert np.allclose(bank_gram(layout, chunk_size=1500, progress=False), theta @ theta.T, rtol=1e-12)


def test_ray_executor_writes_the_same_adapters(tiny_bank, tmp_path):
    ray = pytest.importorskip("ray")
    layout = layout_from_manifest(tiny_bank.run_dir)
    c = normalized_coefficients(tiny_bank.distances)
    local, remote = [tmp_path / f"l{i}" for i in range(5)], [tmp_path / f"r{i}" for i in range(5)]
    synthesize_batch(layout, c, local, provs(5), chunk_size=1024, executor="local", progress=False)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        synthesize_batch(layout, c, remote, provs(5), chunk_size=1024, executor="ray", progress=False)
    finally:
        ray.shutdown()
    for a, b in zip(local, remote):
        assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()


def small_config(**kw):
    neural = NeuralConfig(hidden=8, epochs=3, lr=1e-2)
    return SynthesisConfig(neural=neural, executor="local", chunk_size=1024, **kw)


def test_stage_coefficients_adapters_cache_and_jit(fresh_run):
    run = fresh_run.run_dir
    cfg = small_config()
    out = compute_coefficients(run, "JS", cfg, seed=0, progress=False)
    assert sorted(out) == ["attentional", "neural", "normalized"]
    targets, sources, c, meta = read_coefficients(RunLayout(run).coefficients_file("JS", "normalized"))
    assert targets == sources == fresh_run.task_ids and meta["model"] == "normalized"
    assert np.abs(c - normalized_coefficients(fresh_run.distances)).max() <= 1e-12
    assert (neural_model_dir(run, "JS") / "model.safetensors").is_file()
    _, _, _, nmeta = read_coefficients(RunLayout(run).coefficients_file("JS", "neural"))
    assert len(nmeta["train_tasks"]) == 4

    paths = synthesize_setting(run, "JS-normalized", cfg, progress=False)
    assert [p.name for p in paths] == fresh_run.task_ids
    banks = [load_tensors(d) for d in fresh_run.adapter_dirs]
    got = load_tensors(paths[3])
    for k, want in expected_adapter(banks, c[3]).items():
        assert np.abs(got[k] - want).max() <= 1e-6
    mtimes = [os.stat(p / "adapter_model.safetensors").st_mtime_ns for p in paths]
    synthesize_setting(run, "JS-normalized", cfg, progress=False)  # cache hit: nothing rewritten
    assert mtimes == [os.stat(p / "adapter_model.safetensors").st_mtime_ns for p in paths]
    synthesize_setting(run, "JS-normalized", small_config(output_dtype="float16"), progress=False, tasks=["task2"])
    assert os.stat(paths[1] / "adapter_model.safetensors").st_mtime_ns != mtimes[1]  # other mixing: rebuilt

    with jit_adapter(run, "JS-attentional", "task4", small_config(jit=True)) as path:
        assert path == adapter_dir(run, "JS-attentional", "task4") and (path / "adapter_config.json").is_file()
    assert not path.exists()
    with jit_adapter(run, "JS-attentional", "task4", small_config(jit=True, jit_delete=False)) as path:
        pass
    assert path.exists()


def test_stage_reports_missing_distances(fresh_run):
    from lorabatch.synthesis.stage import SynthesisError

    with pytest.raises(SynthesisError, match="KL distances"):
        compute_coefficients(fresh_run.run_dir, "KL", small_config(), progress=False)


def test_cli_synthesize_writes_coefficients_and_adapters(fresh_run, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from lorabatch.cli import app

    cfg = {
        "run_dir": str(fresh_run.run_dir),
        "bank": {"source": "local", "root": str(tmp_path), "base_model": str(fresh_run.base_dir)},
        "synthesis": {"models": ["attentional", "normalized"], "executor": "local", "top_k": 2},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["synthesize", str(tmp_path / "run.yaml")])
    assert res.exit_code == 0, res.output
    assert "JS-normalized: 5 adapters" in res.output
    _, _, c, meta = read_coefficients(RunLayout(fresh_run.run_dir).coefficients_file("JS", "attentional"))
    assert meta["top_k"] == 2 and (np.count_nonzero(c, axis=1) == 2).all()
    prov = json.loads((adapter_dir(fresh_run.run_dir, "JS-attentional", "task3") / "provenance.json").read_text())
    assert prov["coefficients"] == pytest.approx({fresh_run.task_ids[j]: c[2, j] for j in np.flatnonzero(c[2])})
    # The stage is cached by its inputs, but a deleted coefficients file is computed again.
    path = RunLayout(fresh_run.run_dir).coefficients_file("JS", "attentional")
    path.unlink()
    res = CliRunner().invoke(app, ["synthesize", str(tmp_path / "run.yaml"), "--coefficients-only"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_coefficients(path)[2], c)
