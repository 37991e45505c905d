"""lorabatch's grouped LoRA kernels for vllm-cpu: same sums as vLLM's own CPU ops, one product per
adapter slot, and no adapter for slot -1; installed in the engine process through vLLM's plugin
entry point."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.fixture
def stock_and_grouped():
    from vllm.lora.ops.torch_ops import lora_ops

    from lorabatch.generation import vllm_cpu_lora

    vllm_cpu_lora.uninstall()
    stock = {name: getattr(lora_ops, name) for name in vllm_cpu_lora.KERNELS}
    assert all(getattr(lora_ops, name) is not k for name, k in vllm_cpu_lora.KERNELS.items())
    return stock, vllm_cpu_lora.KERNELS


def _case(seed, tokens=37, slots=5, hidden=24, rank=4, out=40, fixed_slot=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    a = torch.randn(slots, 1, rank, hidden, generator=g)
    b = torch.randn(slots, 1, out, rank, generator=g)
    idx = torch.randint(0, slots, (tokens,), generator=g) if fixed_slot is None else torch.full((tokens,), fixed_slot)
    return x, a, b, idx


@pytest.mark.parametrize("seed,fixed_slot", [(0, None), (1, None), (2, 3)])
def test_grouped_ops_equal_vllm_ops(stock_and_grouped, seed, fixed_slot):
    """Shrink, expand and expand-slice, writing and accumulating, unsorted slots and a one-slot
    step: equal to vLLM's ops to float32 rounding, and to a float64 per-token loop."""
    import torch

    stock, grouped = stock_and_grouped
    x, a, b, idx = _case(seed, fixed_slot=fixed_slot)
    ys = {}
    for name, ops in (("stock", stock), ("grouped", grouped)):
        y = torch.full((x.shape[0], 4), float("nan"))
        ops["bgmv_shrink"](x, a, y, idx, 0.5)
        full = torch.ones(x.shape[0], 40)
        ops["bgmv_expand"](y, b, full, idx, True)
        wide = torch.ones(x.shape[0], 100)
        ops["bgmv_expand_slice"](y, b, wide, idx, 30, 40, False)
        ys[name] = (y, full, wide)
    ref_y = torch.stack([0.5 * a[l, 0].double() @ x[t].double() for t, l in enumerate(idx.tolist())])
    ref_o = torch.stack([b[l, 0].double() @ ref_y[t] for t, l in enumerate(idx.tolist())])
    for name, (y, full, wide) in ys.items():
        assert torch.allclose(y.double(), ref_y, rtol=1e-5, atol=1e-5), name
        assert torch.allclose(full.double(), 1 + ref_o, rtol=1e-5, atol=1e-4), name
        assert torch.allclose(wide[:, 30:70].double(), ref_o, rtol=1e-5, atol=1e-4), name
        assert (wide[:, :30] == 1).all() and (wide[:, 70:] == 1).all(), name
    for got, want in zip(ys["grouped"], ys["stock"]):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)


def test_slot_minus_one_gets_no_adapter(stock_and_grouped):
    """Tokens without an adapter (slot -1) get a zero LoRA term from the grouped ops; vLLM 0.32's
    CPU ops give them the last slot's, which is why base rows batched with LoRA rows went wrong."""
    import torch

    stock, grouped = stock_and_grouped
    x, a, _, idx = _case(3)
    idx[::3] = -1
    outs = {}
    for name, ops in (("stock", stock), ("grouped", grouped)):
        y = torch.full((x.shape[0], 4), float("nan"))
        ops["bgmv_shrink"](x, a, y, idx, 1.0)
        outs[name] = y
    none = idx < 0
    assert (outs["grouped"][none] == 0).all()
    last = x[none] @ a[-1, 0].t()
    assert torch.allclose(outs["stock"][none], last, rtol=1e-5, atol=1e-5)
    assert torch.allclose(outs["grouped"][~none], outs["stock"][~none], rtol=1e-5, atol=1e-5)
    y = torch.full((x.shape[0], 4), float("nan"))
    grouped["bgmv_shrink"](x, a, y, torch.full_like(idx, -1), 1.0)
    assert (y == 0).all()


ENGINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    def main():
        base, adapters, prompts = json.loads(sys.stdin.read())
        # max_loras = number of adapters: every slot holds one, so slot -1 (the last) is an adapter.
        llm = LLM(model=base, enable_lora=True, max_lora_rank=8, max_loras=len(adapters), dtype="float32",
                  enforce_eager=True, max_model_len=128, gpu_memory_utilization=0.2, seed=0)
        sp = SamplingParams(max_tokens=8, temperature=0, detokenize=False)
        ps = [{"prompt_token_ids": p} for p in prompts]
        alone = [list(o.outputs[0].token_ids) for o in llm.generate(ps, sp, use_tqdm=False)]
        reqs = [LoRARequest(f"a{i % len(adapters)}", 1 + i % len(adapters), adapters[i % len(adapters)])
                if i % 2 else None for i in range(len(ps))]
        mixed = [list(o.outputs[0].token_ids) for o in llm.generate(ps, sp, lora_request=reqs, use_tqdm=False)]
        print("RESULT " + json.dumps({"alone": alone, "mixed": mixed}))

    if __name__ == "__main__":
        main()
    """
)


def _engine_outputs(script, mode, payload):
    import os

    env = {**os.environ, "LORABATCH_VLLM_CPU_LORA": mode}  # read by the plugin in the engine's own process
    done = subprocess.run(
        [sys.executable, str(script)], input=payload, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.slow
def test_engine_process_loads_grouped_ops_and_base_rows_in_mixed_batches_are_right(pristine_run, gen, tmp_path):
    """A real vllm-cpu engine (its own EngineCore process): with the plugin's ops, rows without a
    LoRA batched with LoRA rows equal base-alone outputs; with vLLM's own ops they do not."""
    from transformers import AutoTokenizer

    rows = gen.manifest_rows(pristine_run)
    base = rows["task1"]["base_model_path"]
    adapters = [rows[t]["adapter_path"] for t in sorted(rows)]
    tok = AutoTokenizer.from_pretrained(base)
    prompts = [tok(f"red green blue {w}")["input_ids"] for w in "red green blue yellow red blue green red".split()]
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    payload = json.dumps([base, adapters, prompts])
    grouped, stock = (_engine_outputs(script, mode, payload) for mode in ("grouped", "vllm"))
    base_rows = range(0, len(prompts), 2)
    lora_rows = range(1, len(prompts), 2)
    assert grouped["alone"] == stock["alone"]  # no LoRA request at all: the ops are not involved
    assert all(grouped["mixed"][i] == grouped["alone"][i] for i in base_rows)
    assert sum(stock["mixed"][i] != stock["alone"][i] for i in base_rows) >= 2
    assert all(grouped["mixed"][i] != grouped["alone"][i] for i in lora_rows)
