"""`lorabatch status RUN`: per stage and per setting, what is done, pending or failed."""

from __future__ import annotations

from pathlib import Path

from lorabatch.config import load_config
from lorabatch.errors import LorabatchError
from lorabatch.generation.schema import KEY_COLUMNS
from lorabatch.generation.store import read_generations
from lorabatch.layout import RunLayout
from lorabatch.settings import display_order
from lorabatch.sweep.run import resolved_bank_key
from lorabatch.sweep.stages import PIPELINE as STAGES
from lorabatch.sweep.stages import all_markers


def generation_counts(run_dir: Path) -> tuple[dict[str, dict[str, int]], int]:
    """({setting: {"done": n, "failed": n}}, rows outside the plan) over RUN/generations, one row
    per (task, setting, example) as the generation store resolves them (a success beats a recorded
    failure). With a recorded plan (plan.parquet) a row counts only if its key and fingerprint are
    the plan's: rows of settings, examples or adapters an earlier config asked for are not this
    plan's work, however many of them are on disk."""
    import pyarrow.parquet as pq

    table = read_generations(run_dir, columns=[*KEY_COLUMNS, "fingerprint", "error"])
    other = 0
    plan_rows = RunLayout(run_dir).generation_plan_rows
    if plan_rows.is_file():
        plan = pq.read_table(plan_rows, columns=[*KEY_COLUMNS, "fingerprint"])
        matched = table.join(plan, keys=[*KEY_COLUMNS, "fingerprint"], join_type="inner")
        other = table.num_rows - matched.num_rows
        table = matched
    counts: dict[str, dict[str, int]] = {}
    for setting, err in zip(table.column("setting").to_pylist(), table.column("error").to_pylist()):
        c = counts.setdefault(setting, {"done": 0, "failed": 0})
        c["failed" if err else "done"] += 1
    return counts, other


def _bank_changed(run_dir: Path, marker: dict) -> bool:
    """True if the bank of the recorded config (RUN/config.yaml) no longer has the identity the
    bank stage validated: files changed, removed, or no longer resolvable."""

    recorded = RunLayout(run_dir).config
    if not recorded.is_file():
        return False
    try:
        bank = load_config(recorded).bank
    except LorabatchError:
        return True
    return resolved_bank_key(bank) != marker.get("key")


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
    bank_changed = "bank" in markers and _bank_changed(run_dir, markers["bank"])
    for stage in STAGES:
        m = markers.get(stage)
        state = "stale" if stage == "bank" and bank_changed else "done" if m else "pending"
        lines.append(f"{stage:<14} {state:<8} {m['finished_at'] if m else ''}")
    if bank_changed:
        lines += [
            "",
            "bank: its files changed since it was validated, or cannot be found from this directory "
            "(relative paths are taken from it); the next sweep validates it again, and the stages "
            "after it may run again",
        ]
    planned = planned_counts(run_dir)
    done, other = generation_counts(run_dir)
    settings = sorted(set(planned) | set(done), key=display_order)
    if settings:
        lines += ["", f"{'setting':<22} {'done':>7} {'failed':>7} {'pending':>8} {'planned':>8}"]
        for s in settings:
            d = done.get(s, {"done": 0, "failed": 0})
            p = planned.get(s)
            pending = "?" if p is None else str(max(0, p - d["done"] - d["failed"]))
            lines.append(f"{s:<22} {d['done']:>7} {d['failed']:>7} {pending:>8} {p if p is not None else '?':>8}")
    if other:
        lines += ["", f"{other} generated row(s) of earlier plans are kept on disk and not counted above"]
    faults = RunLayout(run_dir).faults
    if faults.is_file():
        import json

        record = json.loads(faults.read_text())
        lost = record.get("nodes_lost", [])
        during = f" (during {', '.join(sorted({e.get('stage', '?') for e in lost}))})" if lost else ""
        lines += [
            "",
            f"nodes lost while the sweep ran: {len(lost)}{during}; tasks retried: {record.get('tasks_retried', 0)}",
        ]
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
