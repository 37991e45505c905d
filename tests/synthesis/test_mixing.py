"""Bank layout, paper and exact mixing, and the adapters they produce loaded with stock PEFT."""

import json

import numpy as np
import pytest

from lorabatch.synthesis.config import VLLM_LORA_RANKS, SynthesisConfig
from lorabatch.synthesis.mixing import _truncated_svd, mix_exact, mix_paper
from lorabatch.synthesis.stage import synthesize_one
from lorabatch.synthesis.tensors import bank_layout, layout_from_manifest

from .conftest import BASE_NAME, load_tensors


def weights(n, seed=0, zeros=()):
    c = np.random.default_rng(seed).dirichlet(np.ones(n))
    c[list(zeros)] = 0
    return c / c.sum()


def test_layout_reads_the_same_values_as_safetensors(tiny_bank):
    layout = layout_from_manifest(tiny_bank.run_dir)
    assert layout.task_ids == tiny_bank.task_ids and layout.manifest_hash
    ref = load_tensors(tiny_bank.adapter_dirs[2])
    flat = np.concatenate([ref[k].reshape(-1) for k in sorted(ref)])
    assert layout.n_params == flat.size
    assert np.array_equal(layout.read_flat(2), flat.astype(np.float32))
    # A range crossing tensor boundaries.
    assert np.array_equal(layout.read_range(2, 1000, 3100), flat[1000:3100].astype(np.float32))


def test_paper_mixing_averages_every_tensor_separately(tiny_bank):
    layout = layout_from_manifest(tiny_bank.run_dir)
    c = weights(5, zeros=[1])
    mixed = mix_paper(layout, c)
    banks = [load_tensors(d) for d in tiny_bank.adapter_dirs]
    for name in banks[0]:
        expected = sum(c[j] * banks[j][name] for j in range(5))
        assert np.abs(mixed[name] - expected).max() <= 1e-6 * max(1.0, np.abs(expected).max())


def dense_delta(banks, c, module):
    return sum(c[j] * banks[j][module + ".lora_B.weight"] @ banks[j][module + ".lora_A.weight"] for j in range(len(c)))


def test_exact_mixing_svd_error_is_reported_and_optimal(tiny_bank):
    layout = layout_from_manifest(tiny_bank.run_dir)
    c = weights(5, seed=1)
    tensors, report = mix_exact(layout, c, rank=8, cat_max_rank=0)
    assert report["strategy"] == "svd" and report["rank"] == 8
    banks = [load_tensors(d) for d in tiny_bank.adapter_dirs]
    modules = sorted(report["module_relative_errors"])
    assert len(modules) == 6  # 2 layers × q/k/v
    total_err = total_norm = 0.0
    for m in modules:
        want = dense_delta(banks, c, m)
        got = tensors[m + ".lora_B.weight"].astype(np.float64) @ tensors[m + ".lora_A.weight"]
        err = np.linalg.norm(want - got) / np.linalg.norm(want)
        assert err == pytest.approx(report["module_relative_errors"][m], rel=1e-4, abs=1e-6)
        s = np.linalg.svd(want, compute_uv=False)  # Eckart–Young: the best rank-8 error
        assert err == pytest.approx(np.sqrt((s[8:] ** 2).sum() / (s**2).sum()), rel=1e-4)
        assert 0 < err < 1
        total_err += np.linalg.norm(want - got) ** 2
        total_norm += np.linalg.norm(want) ** 2
    assert report["relative_frobenius_error"] == pytest.approx(np.sqrt(total_err / total_norm), rel=1e-4)


def test_exact_mixing_cat_is_exact_when_few_coefficients_are_non_zero(tiny_bank):
    layout = layout_from_manifest(tiny_bank.run_dir)
    c = weights(5, seed=2, zeros=[0, 2, 3])  # K = 2 → rank 2·8 = 16
    tensors, report = mix_exact(layout, c, rank=8, cat_max_rank=64)
    assert report["strategy"] == "cat" and report["rank"] == 16 and report["relative_frobenius_error"] == 0
    banks = [load_tensors(d) for d in tiny_bank.adapter_dirs]
    for m in report["module_relative_errors"]:
        got = tensors[m + ".lora_B.weight"].astype(np.float64) @ tensors[m + ".lora_A.weight"]
        assert np.abs(got - dense_delta(banks, c, m)).max() <= 1e-5


def test_named_modes_svd_and_cat_force_their_strategy_and_linear_is_paper(tiny_bank):
    from lorabatch.synthesis.stage import mix_row

    layout = layout_from_manifest(tiny_bank.run_dir)
    c = weights(5, seed=2, zeros=[0, 2, 3])  # K = 2: `exact` would concatenate
    _, _, svd = mix_row(layout, c, SynthesisConfig(mixing="svd", exact_rank=8))
    assert svd["strategy"] == "svd" and svd["rank"] == 8 and svd["relative_frobenius_error"] > 0
    _, _, cat = mix_row(layout, c, SynthesisConfig(mixing="cat", cat_max_rank=0))  # cat ignores cat_max_rank
    assert cat["strategy"] == "cat" and cat["rank"] == 16 and cat["relative_frobenius_error"] == 0
    linear, _, none = mix_row(layout, c, SynthesisConfig(mixing="linear"))
    paper, _, _ = mix_row(layout, c, SynthesisConfig(mixing="paper"))
    assert none is None and all(np.array_equal(linear[k], paper[k]) for k in paper)


def test_dense_and_factored_svd_paths_agree():
    rng = np.random.default_rng(0)
    b, a = rng.normal(size=(40, 30)), rng.normal(size=(30, 50))  # k=30 < min(40, 50): QR path
    bf, af, err_f, norm_f = _truncated_svd(b, a, 8, rng)
    b2, a2 = np.hstack([b, np.zeros((40, 20))]), np.vstack([a, np.zeros((20, 50))])  # k=50 ≥ 40: dense path
    bd, ad, err_d, norm_d = _truncated_svd(b2, a2, 8, rng)
    assert np.allclose(bf @ af, bd @ ad, atol=1e-8)
    assert err_f == pytest.approx(err_d) and norm_f == pytest.approx(norm_d)


@pytest.mark.parametrize("mixing", ["paper", "exact"])
def test_synthesized_adapter_loads_with_stock_peft(tiny_bank, tmp_path, mixing):
    import torch
    from peft import PeftModel
    from transformers import MistralForCausalLM

    layout = layout_from_manifest(tiny_bank.run_dir)
    c = weights(5, seed=3)
    c[0] = 0
    c /= c.sum()
    out = tmp_path / "adapter"
    config = SynthesisConfig(mixing=mixing, cat_max_rank=0)
    synthesize_one(layout, c, out, config, setting="JS-normalized", target="task1")

    cfg = json.loads((out / "adapter_config.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert cfg["r"] in VLLM_LORA_RANKS and cfg["bias"] == "none" and cfg["base_model_name_or_path"] == BASE_NAME
    assert sorted(cfg["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
    assert prov["setting"] == "JS-normalized" and prov["bank_manifest_hash"] == layout.manifest_hash
    assert prov["coefficients"] == pytest.approx({t: float(w) for t, w in zip(tiny_bank.task_ids, c) if w > 0})
    assert "task1" not in prov["coefficients"]

    base = MistralForCausalLM.from_pretrained(tiny_bank.base_dir)
    model = PeftModel.from_pretrained(base, out)
    banks = [load_tensors(d) for d in tiny_bank.adapter_dirs]
    scaling = 2.0  # the bank's alpha / r
    layers = model.base_model.model.model.layers
    for li, layer in enumerate(layers):
        for proj in ("q_proj", "k_proj", "v_proj"):
            mod = getattr(layer.self_attn, proj)
            a = mod.lora_A["default"].weight.detach().double().numpy()
            b = mod.lora_B["default"].weight.detach().double().numpy()
            name = f"base_model.model.model.layers.{li}.self_attn.{proj}"
            if mixing == "paper":
                for key, got in (("lora_A", a), ("lora_B", b)):
                    want = sum(c[j] * banks[j][f"{name}.{key}.weight"] for j in range(5))
                    assert np.abs(got - want).max() <= 1e-6
                assert mod.scaling["default"] == pytest.approx(scaling)
            else:
                want = scaling * dense_delta(banks, c, name)
                got = mod.scaling["default"] * b @ a
                err = np.linalg.norm(got - want) / np.linalg.norm(want)
                assert err <= prov["exact"]["module_relative_errors"][name] * (1 + 1e-4) + 1e-6
    # The loaded adapter changes the model's output (it is really applied).
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        with_lora = model(ids).logits
        with model.disable_adapter():
            without = model(ids).logits
    assert not torch.allclose(with_lora, without)


def test_layout_refuses_mismatched_bank(tiny_bank, tmp_path):
    import shutil

    from lorabatch.errors import BankValidationError

    odd = tmp_path / "odd"
    shutil.copytree(tiny_bank.adapter_dirs[1], odd)
    cfg = json.loads((odd / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 3
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(BankValidationError, match="lora_alpha=3"):
        bank_layout(["task1", "task2"], [tiny_bank.adapter_dirs[0], odd])
