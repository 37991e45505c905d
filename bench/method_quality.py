"""The method-quality table of a finished sweep: every setting against base, oracle and the
controls, with what each costs per task next to training that task's LoRA.

    python bench/method_quality.py runs/demo --bank demo-bank            # markdown table
    python bench/method_quality.py runs/demo --bank demo-bank --json     # the same as JSON

Reads only what the sweep wrote (RUN/scores/{summary,tasks}.parquet, RUN/fewshot/*.parquet,
RUN/stages/*.json) and, for the training baseline, the demo bank's `demo_bank.json` (seconds the
builder spent training each task's LoRA, on the machine and thread count it records). Goals of the
project, checked here: the best training-free setting closes ≥ 50 % of the base→oracle gap, beats
`uniform`, every `nearest-<metric>` and every paper setting, and improves ≥ 90 % of tasks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorabatch.layout import RunLayout  # noqa: E402
from lorabatch.settings import Setting, display_order  # noqa: E402


def _fmt(v, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def collect(run: Path, bank: Path | None) -> dict:
    import pyarrow.parquet as pq

    layout = RunLayout(run)
    summary = pq.read_table(layout.score_table("summary")).to_pylist()
    markers = {p.stem: json.loads(p.read_text()) for p in layout.stages.glob("*.json")}
    n_tasks = max(r["n_tasks"] for r in summary)
    mixtures = [r["setting"] for r in summary if Setting.parse(r["setting"]).has_coefficients]
    # Mixture settings share the coefficients and synthesis stages: their wall seconds split evenly.
    shared = sum(m.get("seconds", 0.0) for k, m in markers.items() if k.startswith("coefficients") or k == "synthesis")
    mixture_seconds = shared / max(1, n_tasks * len(mixtures))
    fewshot = {}
    for method in ("select", "refine"):
        path = layout.fewshot(method)
        if path.is_file():
            rows = [r for r in pq.read_table(path).to_pylist() if not r["error"]]
            n = max(1, len(rows))
            fewshot[method] = {
                "seconds": sum(r["seconds"] for r in rows) / n,
                "forward_passes": sum(r["forward_passes"] for r in rows) / n,
                "evaluations": sum(r["evaluations"] for r in rows) / n,
            }
    training = None
    if bank is not None and (bank / "demo_bank.json").is_file():
        info = json.loads((bank / "demo_bank.json").read_text())
        secs = [t["train_seconds"] for t in info["tasks"] if "train_seconds" in t]
        if secs:
            training = {
                "seconds": sum(secs) / len(secs),
                "threads": info.get("threads"),
                "steps": info["training"]["lora_steps"],
            }
    rows = []
    for r in sorted(summary, key=lambda r: display_order(r["setting"])):
        s = r["setting"]
        cost = fewshot.get(s, {}).get("seconds") if s in fewshot else (mixture_seconds if s in mixtures else None)
        if s in fewshot and cost is not None:
            cost += mixture_seconds  # select and refine mix from the same coefficient files
        rows.append(
            {**r, "seconds_per_task": cost, "forward_passes_per_task": fewshot.get(s, {}).get("forward_passes")}
        )
    free = [r for r in rows if r["setting"] not in ("base", "oracle")]
    best = max(free, key=lambda r: r["rouge_l"]) if free else None
    goals = None
    if best is not None:
        others = [
            r
            for r in free
            if r["setting"] != best["setting"] and Setting.parse(r["setting"]).kind in ("paper", "uniform", "nearest")
        ]
        goals = {
            "best": best["setting"],
            "gap_closed>=50%": best["gap_closed"] >= 0.5,
            "beats uniform, nearest and every paper setting": all(best["rouge_l"] > o["rouge_l"] for o in others),
            "improves>=90% of tasks": best["share_improved"] >= 0.9,
        }
    return {"rows": rows, "training": training, "goals": goals, "n_tasks": n_tasks}


def markdown(result: dict) -> str:
    head = "| setting | Rouge-L | gap closed | tasks improved | Δ vs uniform | beats uniform | s / task | forward passes / task |"
    lines = [head, "|" + "---|" * 8]
    for r in result["rows"]:
        beats = {True: "yes", False: "**no**", None: "–"}[r.get("beats_uniform")]
        lines.append(
            f"| {r['setting']} | {_fmt(r['rouge_l'], '.3f')} | {_fmt(r['gap_closed'], '.0%')} | {_fmt(r['share_improved'], '.0%')} "
            f"| {_fmt(r.get('vs_uniform'), '+.3f')} | {beats} | {_fmt(r['seconds_per_task'], '.3f')} | {_fmt(r['forward_passes_per_task'], '.0f')} |"
        )
    t = result["training"]
    if t:
        lines.append(
            f"| *training the task's LoRA ({t['steps']} AdamW steps, {t['threads']} threads)* | | | | | | {t['seconds']:.1f} | |"
        )
    if result["goals"]:
        lines.append("")
        lines.append(
            f"Best training-free setting: **{result['goals']['best']}**. Goals: "
            + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["goals"].items() if k != "best")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--bank", type=Path, default=None, help="The demo bank directory (for the training baseline).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, run {args.run}")
    result = collect(args.run, args.bank)
    print(json.dumps(result, indent=2, default=str) if args.json else markdown(result))


if __name__ == "__main__":
    main()
