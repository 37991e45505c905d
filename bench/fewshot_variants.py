"""Few-shot variants compared on each task's *valid* split: how `select` and `refine` settings are
chosen without looking at the test split.

    python -m bench.fewshot_variants runs/demo --config configs/demo.yaml \
        --variant '{}' --variant '{"examples": 32}'

Each variant is a set of `fewshot` overrides (JSON) on the run's config. Per task, select runs once
per distinct (examples, criterion, pool, select grid) on the few-shot examples of the train split,
refine runs from it; the resulting adapters answer the task's valid split (greedy, Rouge-L against
output[0]) — rows the few-shot examples never include, and the sweep's test split is never read.
Prints one row per variant and method: mean valid Rouge-L, tasks improved over select's, adapters
tried, forward passes and seconds per task. Needs a finished sweep's run directory (manifest,
distances, coefficients).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.machine import machine_line

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument(
        "--variant", action="append", default=[], help="fewshot overrides as JSON (repeatable; '{}' = the config's)"
    )
    parser.add_argument("--config", type=Path, default=None, help="The sweep's config (default: RUN/config.yaml).")
    parser.add_argument(
        "--split", default="valid", choices=["valid", "train"], help="Split the adapters are scored on."
    )
    parser.add_argument("--tasks", type=int, default=None, help="Only the first N tasks.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from lorabatch.bank.datasets import read_split
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.config import load_config
    from lorabatch.fewshot.config import FewShotConfig
    from lorabatch.fewshot.methods import candidate_rows, refine_task, select
    from lorabatch.fewshot.stage import FewShotWorker, few_shot_examples, singles
    from lorabatch.layout import RunLayout
    from lorabatch.synthesis.stage import mix_row

    torch.set_num_threads(args.threads)
    config = load_config(args.config or RunLayout(args.run).config)
    base = config.fewshot.model_dump(mode="json")
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    print(
        f"# machine: {machine_line(f'{args.threads} threads')}, run {args.run}, scored on the {args.split} split",
        flush=True,
    )

    def merged(over: dict) -> dict:
        out = json.loads(json.dumps(base))
        for k, v in over.items():
            out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        out["methods"] = ["select", "refine"]
        return out

    configs = [FewShotConfig.model_validate(merged(v)) for v in variants]
    worker = FewShotWorker(
        str(args.run),
        configs[0].model_dump(mode="json"),
        config.synthesis.model_dump(mode="json"),
        list(config.distances.metrics),
        config.seed,
        config.generation.max_new_tokens,
    )
    ev, layout = worker.evaluator, worker.layout
    manifest = {r["task_id"]: r for r in load_manifest(args.run).to_pylist()}
    tasks = layout.task_ids[: args.tasks] if args.tasks else layout.task_ids
    stats = {
        (k, m): {"rouge": [], "evals": [], "passes": [], "seconds": []}
        for k in range(len(configs))
        for m in ("select", "refine")
    }
    for n, task in enumerate(tasks, 1):
        i = layout.task_ids.index(task)
        held = [
            r
            for r in read_split(
                manifest[task]["dataset_path"], args.split, columns=["input", "output", "id"]
            ).to_pylist()
            if r["output"]
        ]
        select_cache: dict = {}
        for k, fs in enumerate(configs):
            worker.config = fs
            seed = worker.seed
            ev.set_examples(few_shot_examples(manifest[task]["dataset_path"], fs.split, fs.examples, seed, task))
            pool = worker.pool(i)
            candidates = candidate_rows(i, worker.matrices, singles(pool, layout.task_ids))
            key = json.dumps([fs.examples, fs.criterion, fs.pool, fs.select.model_dump(mode="json")])
            if key not in select_cache:
                select_cache[key] = select(
                    ev, layout, candidates, config.synthesis, worker.paper_names, fs.criterion, worker.max_new_tokens
                )
            chosen = select_cache[key]
            refined, syn = refine_task(
                ev, layout, fs, config.synthesis, candidates, pool, {}, chosen, seed + i, worker.max_new_tokens
            )
            for method, result, mixing in (("select", chosen, config.synthesis), ("refine", refined, syn)):
                ev.set_examples(held)
                tensors, _, _ = mix_row(layout, result.coefficients, mixing)
                s = stats[(k, method)]
                s["rouge"].append(ev.rouge(tensors, worker.max_new_tokens))
                s["evals"].append(result.evaluations)
                s["passes"].append(result.forward_passes)
                s["seconds"].append(result.seconds)
        line = "  ".join(
            f"v{k}: {stats[(k, 'select')]['rouge'][-1]:.3f}/{stats[(k, 'refine')]['rouge'][-1]:.3f}"
            for k in range(len(configs))
        )
        print(f"[{n}/{len(tasks)}] {task}  select/refine {args.split} Rouge-L  {line}", flush=True)
    print(
        f"\n| variant | method | {args.split} Rouge-L | tasks above select | adapters tried / task | forward passes / task | s / task |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, v in enumerate(variants):
        sel = np.array(stats[(k, "select")]["rouge"])
        for method in ("select", "refine"):
            s = stats[(k, method)]
            r = np.array(s["rouge"])
            above = f"{np.mean(r > sel + 1e-12):.0%}" if method == "refine" else "–"
            print(
                f"| `{json.dumps(v)}` | {method} | {r.mean():.3f} | {above} | {np.mean(s['evals']):.1f} | "
                f"{np.mean(s['passes']):.0f} | {np.mean(s['seconds']):.2f} |"
            )


if __name__ == "__main__":
    main()
