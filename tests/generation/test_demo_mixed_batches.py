"""On the embedded demo bank's model and adapters: the hf backend's mixed-adapter batches give, token
for token, the greedy ids of one adapter at a time (plain transformers + PEFT, one unpadded prompt
per `generate()` call), with both schedulers, and with a running batch small enough that rows
leave and join it many times."""

import pytest

TASKS = 4
EXAMPLES = 8
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def demo_work(small_demo_bank_config, tmp_path_factory):
    """(work rows: base + every task's own adapter on its first test examples, base model path)."""
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import parse_config
    from lorabatch.generation.config import GenerationConfig
    from lorabatch.generation.plan import plan_work
    from lorabatch.generation.preflight import preflight
    from lorabatch.generation.stage import build_context

    bank = small_demo_bank_config
    run = tmp_path_factory.mktemp("demo-mixed") / "run"
    manifest = build_manifest(parse_config({"run_dir": str(run), "bank": bank}), progress=False)
    cfg = GenerationConfig(
        backend="hf",
        tasks=manifest.column("task_id").to_pylist()[:TASKS],
        settings=["base", "oracle"],
        examples_per_task=EXAMPLES,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    manifest, ctx = build_context(run, cfg, "hf", 0, has_gpu=False)
    work, _ = preflight(plan_work(run, manifest, cfg), ctx)
    assert work.column("error").null_count == work.num_rows
    return work.drop_columns(["error"]), ctx.base_model_path


def _generate(work, base, scheduler: str, max_rows: int, batch_size: int) -> dict:
    from lorabatch.generation.hf_backend import HFGenerator

    actor = HFGenerator(
        base,
        {"dtype": "float32", "device": "cpu", "max_resident_adapters": 3, "scheduler": scheduler, "max_rows": max_rows},
        {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0, "top_p": 1.0, "batch_size": batch_size, "seed": 0},
    )
    rows = actor(work).to_pylist()
    assert [r["error"] for r in rows] == [None] * len(rows)
    return {(r["task_id"], r["setting"], r["example_id"]): list(r["generated_token_ids"]) for r in rows}


@pytest.mark.parametrize(
    "scheduler,max_rows,batch_size",
    [("continuous", 256, 32), ("continuous", 7, 32), ("generate", 256, 64)],
    ids=["continuous-all-rows", "continuous-7-rows", "generate"],
)
def test_mixed_adapter_batches_equal_one_adapter_at_a_time(demo_work, scheduler, max_rows, batch_size, gen):
    work, base = demo_work
    got = _generate(work, base, scheduler, max_rows, batch_size)
    rows = work.to_pylist()
    by_adapter: dict = {}
    for r in rows:
        by_adapter.setdefault(r["adapter_path"], []).append(r)
    assert len(by_adapter) == TASKS + 1  # the base model and every task's adapter share the batches
    for adapter, rs in by_adapter.items():
        ref = gen.reference_outputs(base, adapter, [r["prompt_token_ids"] for r in rs], MAX_NEW_TOKENS)
        ours = [got[(r["task_id"], r["setting"], r["example_id"])] for r in rs]
        assert ours == ref, adapter
    lengths = {len(v) for v in got.values()}
    assert len(lengths) > 2  # rows end at different steps: they leave the running batch at different times
