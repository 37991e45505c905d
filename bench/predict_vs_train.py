"""Synthesized (training-free) adapters against gradient training, on held-out demo tasks:
wall seconds, CPU-seconds and test Rouge-L per task, as one table — the paper's claim measured.

    python -m bench.predict_vs_train runs/demo --tasks 3            # markdown table
    python -m bench.predict_vs_train runs/demo --tasks 3 --json     # the same as JSON

RUN is a prepared bank (manifest, features, distances: e.g. after `lorabatch sweep configs/demo.yaml`).
For each of the first `--tasks` tasks, held out: its train split is the user's dataset, and

- every paper setting (attentional, normalized) is `lorabatch predict` on the bank *without* that
  task (`predict_adapter(..., exclude=[task])`): wall seconds of the whole call — the dataset read,
  its features and query distances, coefficients over the other tasks, mixing, writing the
  adapter; the controls (uniform, nearest-<metric>) are the other tasks mixed by the same writer,
  timed with the metric's query features and distances (nearest) or alone (uniform);
- `select` and `refine` are `lorabatch predict --fewshot select|refine` (JS, the default metric,
  and the default few-shot config: 16 of the dataset's rows) with the task left out of the bank
  (`fewshot_predict(..., exclude=[task])`): wall seconds of the whole call, its query features and
  distances included (refine's include select's, which it starts from);
- `train` is `lorabatch train` on the same data with the demo builder's recipe (steps, batch, lr,
  2 threads, one Ray Train worker): wall seconds of the whole call (the Ray Train run's start and
  the model load included; Ray itself is started once, by the first task) and CPU-seconds of this
  process plus the worker's steps.

Imports and the tokenizer's first load are paid once, before the clock starts.

Every adapter, and the base model, is then scored on the task's first `--eval` test examples
(greedy, Rouge-L against output[0], the demo builder's evaluation). The baseline of the ratio
column is `train`, measured in the same invocation on the same machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_line
from lorabatch.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]

MODELS = ("attentional", "normalized")


class Meter:
    """Wall and CPU seconds (this process, all threads) of a block; adds to `into[name]`."""

    def __init__(self, into: dict, name: str):
        self.into, self.name = into, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.t, time.process_time() - self.c
        old = self.into.get(self.name, (0.0, 0.0))
        self.into[self.name] = (old[0] + wall, old[1] + cpu)


def held_out_settings(run: Path, task_id: str, data: Path, dataset, metrics: list[str], out_dir: Path) -> dict:
    """{setting: (adapter dir, wall s, CPU s)} of every training-free setting for one held-out task.

    The paper settings are `lorabatch predict` itself (`predict_adapter` with the task excluded), a
    whole call each; the controls mix the other tasks with the writer `predict` uses, their cost
    being the query's features and distances plus the mixing."""
    from lorabatch.synthesis.config import SynthesisConfig
    from lorabatch.synthesis.stage import synthesize_one
    from lorabatch.synthesis.tensors import layout_from_manifest
    from lorabatch.workflows.predict import predict_adapter, query_bank_distances

    layout = layout_from_manifest(run)
    held_out = layout.task_ids.index(task_id)
    others = [j for j in range(len(layout.task_ids)) if j != held_out]
    base_path = layout_base_model(run)
    syn = SynthesisConfig()
    cost: dict = {}
    made = {}
    for metric in metrics:
        for model in MODELS:
            setting = f"{metric}-{model}"
            with Meter(cost, setting):
                predict_adapter(
                    run, data, out_dir / setting, metric=metric, model=model, progress=False, exclude=[task_id]
                )
            made[setting] = (out_dir / setting, *cost[setting])
        with Meter(cost, f"query:{metric}"):
            _, d = query_bank_distances(run, dataset, metric, base_path, seed=0, progress=False)
        for setting in [f"nearest-{metric}"] + (["uniform"] if metric == metrics[0] else []):
            with Meter(cost, setting):
                c = np.zeros(len(layout.task_ids))
                if setting == "uniform":
                    c[others] = 1.0 / len(others)
                else:
                    c[others[int(np.argmin(d[others]))]] = 1.0
                synthesize_one(layout, c, out_dir / setting, syn, setting=setting, target=f"held-out:{task_id}")
            query = cost[f"query:{metric}"] if setting != "uniform" else (0.0, 0.0)
            made[setting] = (out_dir / setting, cost[setting][0] + query[0], cost[setting][1] + query[1])
    return made


def layout_base_model(run: Path) -> Path:
    from lorabatch.bank.manifest import load_manifest

    return Path(load_manifest(run).column("base_model_path")[0].as_py())


def fewshot_settings(run: Path, data: Path, task_id: str, out_dir: Path) -> dict:
    """{method: (adapter dir, wall s, CPU s)} of `lorabatch predict --fewshot` with the task left out."""
    from lorabatch.workflows.fewshot_predict import fewshot_predict

    made, cost = {}, {}
    for method in ("select", "refine"):
        with Meter(cost, method):
            fewshot_predict(run, data, out_dir / method, method=method, progress=False, exclude=[task_id])
        made[method] = (out_dir / method, *cost[method])
    return made


def train_setting(run: Path, data: Path, out: Path, size: str, threads: int) -> tuple[Path, float, float, dict]:
    from lorabatch.demo.build import SIZES
    from lorabatch.workflows.train import train_adapter

    config = SIZES[size].train.training_config(threads=threads)
    t, c = time.perf_counter(), time.process_time()
    result = train_adapter(run, data, out, config=config, seed=0)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    r = result.result
    return (
        out,
        wall,
        cpu + r.cpu_seconds,
        {"steps": len(r.losses), "step_seconds": r.train_seconds, "loss": [r.losses[0], r.losses[-1]]},
    )


def score(adapters: dict[str, Path], base_path: Path, rows: list[dict]) -> dict[str, float]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorabatch.demo.evaluate import greedy_generate, mean_rouge_l

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    prompts = [r["input"] for r in rows]
    out = {"base": mean_rouge_l(greedy_generate(base, tokenizer, prompts), rows)}
    for name, path in adapters.items():
        model = PeftModel.from_pretrained(base, path).eval()
        out[name] = mean_rouge_l(greedy_generate(model, tokenizer, prompts), rows)
        base = model.unload()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--tasks", type=int, default=3, help="held-out tasks (the bank's first ones)")
    parser.add_argument("--eval", type=int, default=25, help="test examples scored per task")
    parser.add_argument("--size", default=None, help="demo size whose recipe `train` uses (default: the bank's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import pyarrow as pa
    import torch

    from lorabatch.bank.datasets import read_split
    from lorabatch.bank.manifest import load_manifest

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="predict-vs-train-"))
    run = work / "run"  # a copy of what predict and train read: the bank's run directory is left alone
    source = RunLayout(args.run)
    for part in (source.bank, source.features, source.distances_dir):
        shutil.copytree(part, run / part.relative_to(source.root))
    manifest = load_manifest(run).to_pylist()
    base_path = Path(manifest[0]["base_model_path"])
    size = args.size or json.loads((Path(base_path).parents[1] / "demo_bank.json").read_text())["size"]
    metrics = RunLayout(run).distance_metrics()
    per_setting: dict[str, list] = {}
    # Imports and the tokenizer's first load are paid once per process, not per dataset: warm up.
    from lorabatch.workflows.predict import query_bank_distances

    warm = read_split(manifest[0]["dataset_path"], "train", ["input", "output"]).slice(0, 8)
    query_bank_distances(
        run,
        warm.append_column("id", pa.array([str(i) for i in range(warm.num_rows)])),
        metrics[0],
        base_path,
        seed=0,
        progress=False,
    )
    for task in manifest[: args.tasks]:
        train_rows = read_split(task["dataset_path"], "train", ["input", "output"]).to_pylist()
        dataset = pa.table(
            {
                "input": [r["input"] for r in train_rows],
                "output": [list(r["output"]) for r in train_rows],
                "id": [str(i) for i in range(len(train_rows))],
            }
        )
        dataset = dataset.replace_schema_metadata({"lorabatch.ignored_columns": "[]"})
        data = work / f"{task['task_id']}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
        made = held_out_settings(run, task["task_id"], data, dataset, metrics, work / task["task_id"])
        made.update(fewshot_settings(run, data, task["task_id"], work / task["task_id"]))
        path, wall, cpu, info = train_setting(run, data, work / task["task_id"] / "train", size, args.threads)
        made["train"] = (path, wall, cpu)
        test = read_split(task["dataset_path"], "test", ["input", "output"]).to_pylist()[: args.eval]
        scores = score({k: v[0] for k, v in made.items()}, base_path, test)
        for name, (_, w, c) in made.items():
            per_setting.setdefault(name, []).append((w, c, scores[name]))
        per_setting.setdefault("base", []).append((0.0, 0.0, scores["base"]))
        print(
            f"{task['task_id']}: train {wall:.1f} s ({info}), " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
            file=sys.stderr,
        )
    train_wall = float(np.mean([w for w, _, _ in per_setting["train"]]))
    table = [
        {
            "setting": k,
            "wall_s": float(np.mean([w for w, _, _ in v])),
            "cpu_s": float(np.mean([c for _, c, _ in v])),
            "rouge_l": float(np.mean([r for _, _, r in v])),
            "train_wall_ratio": train_wall / max(float(np.mean([w for w, _, _ in v])), 1e-9),
        }
        for k, v in per_setting.items()
    ]
    table.sort(key=lambda r: -r["rouge_l"])
    machine = {
        "machine": machine_line(),
        "threads": args.threads,
        "tasks": args.tasks,
        "eval_examples": args.eval,
    }
    if args.json:
        print(json.dumps({"machine": machine, "table": table}, indent=1))
        return
    print(f"held-out tasks: {args.tasks} of {len(manifest)} · {args.eval} test examples each · {machine}")
    print("| setting | wall s / task | CPU-s / task | test Rouge-L | train wall ÷ this |")
    print("|---|---:|---:|---:|---:|")
    for r in table:
        if r["setting"] == "base":  # nothing is built for the base model
            print(f"| base | – | – | {r['rouge_l']:.3f} | – |")
        else:
            ratio = f"{r['train_wall_ratio']:.1f}×"
            print(f"| {r['setting']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['rouge_l']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
