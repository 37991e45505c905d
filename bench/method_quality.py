"""The method-quality table of a finished sweep: every setting against base, oracle and the
controls, with what each costs per task next to training that task's LoRA.

    python -m bench.method_quality runs/demo --bank demo-bank            # markdown table
    python -m bench.method_quality runs/demo --bank demo-bank --json     # the same as JSON
    python -m bench.method_quality runs/demo --forms                     # + where answers go wrong

Reads only what the sweep wrote (RUN/scores/{summary,tasks}.parquet, RUN/fewshot/*.parquet,
RUN/stages/*.json) and, for the training baseline, the demo bank's `demo_bank.json` (seconds the
builder spent training each task's LoRA, on the machine and thread count it records). The
project's quality goals (`lorabatch.scoring.goals`) are checked on the summary and printed below
the table; every row carries Rouge-L, exact match and content.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.machine import machine_line
from lorabatch.layout import RunLayout
from lorabatch.scoring.goals import quality_goals
from lorabatch.settings import Setting, display_order

REPO = Path(__file__).resolve().parents[1]


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
    goals = quality_goals(summary)
    return {"rows": rows, "training": training, "goals": goals, "n_tasks": n_tasks}


def markdown(result: dict) -> str:
    head = (
        "| setting | Rouge-L | exact match | content | gap closed | tasks improved | Δ vs uniform | beats uniform "
        "| s / task | forward passes / task |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in result["rows"]:
        beats = {True: "yes", False: "**no**", None: "–"}[r.get("beats_uniform")]
        lines.append(
            f"| {r['setting']} | {_fmt(r['rouge_l'], '.3f')} | {_fmt(r.get('exact_match'), '.3f')} "
            f"| {_fmt(r.get('content'), '.3f')} | {_fmt(r['gap_closed'], '.0%')} | {_fmt(r['share_improved'], '.0%')} "
            f"| {_fmt(r.get('vs_uniform'), '+.3f')} | {beats} | {_fmt(r['seconds_per_task'], '.3f')} | {_fmt(r['forward_passes_per_task'], '.0f')} |"
        )
    t = result["training"]
    if t:
        lines.append(
            f"| *training the task's LoRA ({t['steps']} AdamW steps, {t['threads']} threads)* | | | | | | | | {t['seconds']:.1f} | |"
        )
    g = result["goals"]
    if g["best"]:
        verdict = {True: "met", False: "NOT met", None: "not checked"}
        lines.append("")
        lines.append(
            f"Best training-free setting: **{g['best']}**; best paper setting: **{g['best_paper']}**. Goals: "
            + "; ".join(f"{k}: {verdict[v]}" for k, v in g["goals"].items())
        )
    return "\n".join(lines)


def answer_forms(run: Path) -> dict[str, dict[str, float]]:
    """Per setting, the share of test predictions that are exact, that hold the answer's content in
    another form, or that miss it. A task's template words are the tokens found in ≥ 90 % of its
    references (e.g. "it is" in "it is blue"); the content of a reference is its other tokens. A
    prediction holds the content when every content token appears in it."""
    from collections import Counter, defaultdict

    from lorabatch.generation.store import read_generations

    columns = ["task_id", "example_id", "setting", "prediction", "references", "error"]
    rows = [r for r in read_generations(run, columns=columns).to_pylist() if not r["error"] and r["references"]]
    refs_by_task = defaultdict(dict)  # each test example once, whichever setting generated it
    for r in rows:
        refs_by_task[r["task_id"]][r["example_id"]] = r["references"][0].split()
    template = {}
    for task, refs in refs_by_task.items():
        counts = Counter(tok for ref in refs.values() for tok in set(ref))
        template[task] = {tok for tok, n in counts.items() if n >= 0.9 * len(refs)}
    out: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        ref, pred = r["references"][0].split(), r["prediction"].split()
        content = [t for t in ref if t not in template.get(r["task_id"], set())] or ref
        kind = (
            "exact" if pred == ref else ("content, other form" if all(t in pred for t in content) else "content missed")
        )
        out[r["setting"]][kind] += 1
    return {
        s: {k: c[k] / sum(c.values()) for k in ("exact", "content, other form", "content missed")}
        for s, c in out.items()
    }


def forms_markdown(forms: dict[str, dict[str, float]]) -> str:
    lines = ["| setting | exact | content, other form | content missed |", "|---|---:|---:|---:|"]
    for setting in sorted(forms, key=display_order):
        f = forms[setting]
        lines.append(f"| {setting} | {f['exact']:.0%} | {f['content, other form']:.0%} | {f['content missed']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--bank", type=Path, default=None, help="The demo bank directory (for the training baseline).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--forms", action="store_true", help="Also: exact / content in another form / content missed.")
    args = parser.parse_args()
    print(f"# machine: {machine_line()}, run {args.run}")
    result = collect(args.run, args.bank)
    print(json.dumps(result, indent=2, default=str) if args.json else markdown(result))
    if args.forms:
        print()
        print(forms_markdown(answer_forms(args.run)))


if __name__ == "__main__":
    main()
