"""The demo sweep's two model-bound stages, before and after, in one invocation: generation (the hf
backend) and the few-shot stage (select + refine), with the ratio and tokens/s against the FLOP bound.

    python -m bench.demo_throughput --run runs/demo          # a finished `lorabatch sweep configs/demo.yaml`
    python -m bench.demo_throughput --run runs/demo --fewshot-tasks 4 --stage

Generation: the sweep's own rows (every task × setting × test example, as its generation stage plans
them), generated in this process by the hf backend's actor class (`HFGenerator`) with
- before: `hf.scheduler: generate` — generate() on batches of `batch_size` rows, `4 × batch_size`
  rows per actor call (the backend as it was);
- after: `hf.scheduler: continuous` — one KV cache of `hf.max_rows` rows, finished rows leaving,
  waiting rows joining, `hf.rows_per_call` rows per actor call;
both on `--threads` torch threads (a Ray actor of `generation.resources.num_cpus` 1 gets one),
model load included. The greedy token ids of every row are compared between the two. `--stage`
also runs the whole generation stage (Ray Data, actor, writing) into copies of the run, both ways.

Few-shot: select and refine (the sweep's `fewshot` config) on the first `--fewshot-tasks` tasks by
the stage's worker class (`FewShotWorker`), with `fewshot.candidates_per_pass` 1 (before) and its
configured value (after), in a copy of the run; the choices of both are compared.

FLOP bound: 2 FLOP per multiply-add of every weight matrix a token passes (all linear layers and the
LM head; attention over the cache and LoRA counted apart as small), against the float32 matmul rate
this process measures on the same threads (a 1024³ product): tokens/s at that rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.machine import machine_line


def matmul_rate(seconds: float = 2.0) -> float:
    """float32 FLOP/s of a 1024 × 1024 × 1024 product on this process's threads."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def flops_per_token(base_model_path: str) -> tuple[float, int]:
    """(2 × the multiply-adds of every Linear weight a token passes, the model's parameter count)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * linear, sum(p.numel() for p in model.parameters())


def planned_rows(run: Path, config):
    """(generation config, preflighted work rows, context) of the sweep's generation stage."""
    from lorabatch.generation.plan import plan_work
    from lorabatch.generation.preflight import preflight
    from lorabatch.generation.stage import build_context
    from lorabatch.sweep.run import settings_of

    gen = config.generation.model_copy(update={"settings": settings_of(config), "backend": "hf"})
    manifest, ctx = build_context(run, gen, "hf", config.seed, has_gpu=False)
    work, _ = preflight(plan_work(run, manifest, gen), ctx)
    import pyarrow.compute as pc

    ok = work.filter(pc.is_null(work.column("error"))).drop_columns(["error"])
    return gen, ok, ctx


def generate_in_process(gen, ctx, work, scheduler: str) -> tuple[float, int, dict]:
    """(seconds, generated tokens, {(task, setting, example): token ids}) of `HFGenerator` with
    `scheduler`, fed as the backend feeds its actor."""
    from lorabatch.generation.hf_backend import HFGenerator, decoding_args, rows_per_call

    hf = gen.hf.model_copy(update={"scheduler": scheduler})
    decoding = decoding_args(gen, ctx.seed)
    call = rows_per_call(gen, scheduler)
    start = time.perf_counter()
    actor = HFGenerator(ctx.base_model_path, hf.model_dump(), decoding, ctx.trust_remote_code)
    out = {}
    tokens = 0
    for i in range(0, work.num_rows, call):
        table = actor(work.slice(i, call))
        for r in table.select(["task_id", "setting", "example_id", "generated_token_ids", "error"]).to_pylist():
            if r["error"]:
                raise RuntimeError(f"row {r['task_id']}/{r['setting']}/{r['example_id']} failed: {r['error']}")
            out[(r["task_id"], r["setting"], r["example_id"])] = r["generated_token_ids"]
            tokens += len(r["generated_token_ids"])
    return time.perf_counter() - start, tokens, out


def generate_stage(run: Path, config, scheduler: str, tmp: Path) -> tuple[float, int]:
    """(seconds, tokens) of the whole generation stage (Ray Data, actor, writing) in a copy of the run."""
    from lorabatch.generation import run_generation
    from lorabatch.sweep.run import settings_of

    copy = tmp / f"stage-{scheduler}"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("generations", "scores", "report"))
    gen = config.generation.model_copy(update={"settings": settings_of(config), "backend": "hf"})
    gen = gen.model_copy(update={"hf": gen.hf.model_copy(update={"scheduler": scheduler})})
    result = run_generation(copy, gen, seed=config.seed, progress=False)
    if result.failed:
        raise RuntimeError(f"{result.failed} rows failed in the {scheduler} stage run")
    return result.seconds, result.generated_tokens


def fewshot_side(run: Path, config, per_pass: int, tasks: list[dict], tmp: Path) -> tuple[float, list[dict]]:
    """(seconds, result rows) of select + refine on `tasks` with `per_pass` candidates per batch."""
    from lorabatch.fewshot.stage import FewShotWorker

    copy = tmp / f"fewshot-{per_pass}"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("generations", "scores", "report", "select", "refine"))
    fewshot = config.fewshot.model_copy(update={"candidates_per_pass": per_pass})
    start = time.perf_counter()
    worker = FewShotWorker(
        str(copy),
        fewshot.model_dump(mode="json"),
        config.synthesis.model_dump(mode="json"),
        list(config.distances.metrics),
        config.seed,
        config.generation.max_new_tokens,
    )
    rows = []
    for t in tasks:
        rows += worker.run_task(t["task_id"], t["dataset_path"])
    return time.perf_counter() - start, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="A finished demo sweep's run directory.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a generation actor's num_cpus).")
    ap.add_argument("--fewshot-tasks", type=int, default=4, help="Tasks the few-shot sides run (0: none).")
    ap.add_argument("--stage", action="store_true", help="Also time the whole generation stage both ways (Ray).")
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()

    import torch

    from lorabatch.bank.manifest import load_manifest
    from lorabatch.config import load_config
    from lorabatch.layout import RunLayout

    torch.set_num_threads(args.threads)
    run = args.run.resolve()
    config = load_config(RunLayout(run).config)
    print(f"machine: {machine_line(f'torch threads {args.threads}')}; run {run}")
    tmp = Path(tempfile.mkdtemp(prefix="lorabatch-bench-"))
    try:
        manifest = load_manifest(run)
        base = manifest.column("base_model_path")[0].as_py()
        per_token, params = flops_per_token(base)
        rate = matmul_rate()
        bound = rate / per_token
        print(
            f"model: {params:,} parameters, {per_token / 1e6:.2f} MFLOP per token in its linear layers; "
            f"float32 matmul {rate / 1e9:.1f} GFLOP/s here -> FLOP bound {bound:,.0f} tokens/s"
        )
        if not args.skip_generation:
            gen, work, ctx = planned_rows(run, config)
            prompt_tokens = sum(len(p) for p in work.column("prompt_token_ids").to_pylist())
            print(
                f"\ngeneration: {work.num_rows} rows ({len(set(work.column('setting').to_pylist()))} settings), "
                f"greedy, max_new_tokens {gen.max_new_tokens}, {prompt_tokens:,} prompt tokens"
            )
            sides = {}
            for scheduler in ("generate", "continuous"):
                seconds, tokens, out = generate_in_process(gen, ctx, work, scheduler)
                sides[scheduler] = (seconds, tokens, out)
                floor = (prompt_tokens + tokens) / bound  # seconds of arithmetic, prompts included
                print(
                    f"  {scheduler:<10} in process: {tokens:>8,} tokens in {seconds:6.1f} s = "
                    f"{tokens / seconds:8,.0f} tokens/s; the FLOP bound of these rows (prompts included) "
                    f"{floor:.1f} s = {100 * floor / seconds:.0f} % of the time"
                )
            (s0, t0, before), (s1, t1, after) = sides["generate"], sides["continuous"]
            same = sum(before[k] == after[k] for k in before)
            print(f"  greedy parity: {same} of {len(before)} rows identical token for token")
            print(f"  ratio continuous / generate: {(t1 / s1) / (t0 / s0):.1f}x tokens/s")
            if args.stage:
                import ray

                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                staged = {s: generate_stage(run, config, s, tmp) for s in ("generate", "continuous")}
                for s, (seconds, tokens) in staged.items():
                    print(
                        f"  {s:<10} stage (Ray): {tokens:>8,} tokens in {seconds:6.1f} s = {tokens / seconds:8,.0f} tokens/s"
                    )
                (a, ta), (b, tb) = staged["generate"], staged["continuous"]
                print(f"  ratio (stage): {(tb / b) / (ta / a):.1f}x")
        if args.fewshot_tasks:
            tasks = manifest.select(["task_id", "dataset_path"]).to_pylist()[: args.fewshot_tasks]
            per_pass = config.fewshot.candidates_per_pass
            print(f"\nfew-shot: {', '.join(config.fewshot.methods)} on {len(tasks)} tasks")
            results = {}
            for n in (1, per_pass):
                seconds, rows = fewshot_side(run, config, n, tasks, tmp)
                results[n] = (seconds, rows)
                passes = sum(r["forward_passes"] for r in rows if r["method"] == "refine")
                print(
                    f"  {n} candidate{'s' if n > 1 else ''} per pass: {seconds:6.1f} s "
                    f"({seconds / len(tasks):.2f} s per task; refine incl. select: {passes / len(tasks):.0f} forward passes per task)"
                )
            (a, ra), (b, rb) = results[1], results[per_pass]
            same = sum(
                (x["method"], x["task_id"], x["choice"], x["rouge_l"], json.loads(x["details"]).get("weights"))
                == (y["method"], y["task_id"], y["choice"], y["rouge_l"], json.loads(y["details"]).get("weights"))
                for x, y in zip(ra, rb)
            )
            print(f"  same choices: {same} of {len(ra)} (method, task) results")
            print(f"  ratio: {a / b:.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
