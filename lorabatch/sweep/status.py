"""`lorabatch status RUN`: per stage and per setting, what is done, pending or failed."""

from __future__ import annotations

from pathlib import Path

from lorabatch.layout import RunLayout
from lorabatch.settings import display_order
from lorabatch.sweep.stages import PIPELINE as STAGES
from lorabatch.sweep.stages import all_markers


def generation_counts(run_dir: Path) -> dict[str, dict[str, int]]:
    """{setting: {"done": n, "failed": n}} over RUN/generations, one row per (task, setting,
    example) as the generation store resolves them (a success beats a recorded failure)."""
    from lorabatch.generation.store import read_generations

    table = read_generations(run_dir, columns=["setting", "error"])
    counts: dict[str, dict[str, int]] = {}
    for setting, err in zip(table.column("setting").to_pylist(), table.column("error").to_pylist()):
        c = counts.setdefault(setting, {"done": 0, "failed": 0})
        c["failed" if err else "done"] += 1
    return counts


def planned_counts(run_dir: Path) -> dict[str, int]:
    """{setting: planned rows} from RUN/generations/plan.json if the sweep wrote one."""
    import json

    path = RunLayout(run_dir).generation_plan
    if not path.is_file():
        return {}
    return {k: int(v) for k, v in json.loads(path.read_text()).get("rows_per_setting", {}).items()}


def status_lines(run_dir: str | Path) -> list[str]:
    run_dir = Path(run_dir)
    markers = all_markers(run_dir)
    lines = [f"run {run_dir}", "", f"{'stage':<14} {'state':<8} finished"]
    for stage in STAGES:
        m = markers.get(stage)
        lines.append(f"{stage:<14} {'done' if m else 'pending':<8} {m['finished_at'] if m else ''}")
    planned = planned_counts(run_dir)
    done = generation_counts(run_dir)
    settings = sorted(set(planned) | set(done), key=display_order)
    if settings:
        lines += ["", f"{'setting':<22} {'done':>7} {'failed':>7} {'pending':>8} {'planned':>8}"]
        for s in settings:
            d = done.get(s, {"done": 0, "failed": 0})
            p = planned.get(s)
            pending = "?" if p is None else str(max(0, p - d["done"] - d["failed"]))
            lines.append(f"{s:<22} {d['done']:>7} {d['failed']:>7} {pending:>8} {p if p is not None else '?':>8}")
    return lines + score_lines(run_dir)


def score_lines(run_dir: Path) -> list[str]:
    """Per setting, the last scoring's Rouge-L, exact match and content (RUN/scores/summary.parquet),
    or nothing before the first scoring."""
    import math

    import pyarrow.parquet as pq

    path = RunLayout(run_dir).score_table("summary")
    if not path.is_file():
        return []

    def f(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["", f"{'scores (last scoring)':<22} {'Rouge-L':>8} {'exact':>7} {'content':>8} {'gap closed':>11}"]
    for r in sorted(pq.read_table(path).to_pylist(), key=lambda r: display_order(r["setting"])):
        gap = r.get("gap_closed")
        gap_text = "–" if gap is None or math.isnan(gap) else f"{gap:.0%}"
        lines.append(
            f"{r['setting']:<22} {f(r.get('rouge_l')):>8} {f(r.get('exact_match')):>7} {f(r.get('content')):>8} {gap_text:>11}"
        )
    return lines
