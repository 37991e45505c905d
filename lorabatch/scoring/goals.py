"""The project's quality goals, checked on a sweep's summary rows (`scoring.aggregate.summarize`).

With R(s) a setting's Rouge-L, G(s) its share of the base→oracle gap closed and EM(s) its exact
match, among the training-free settings (every setting but base and oracle):

- the best paper setting p* = argmax R over `<metric>-<model>`:
  R(p*) > R(uniform) and G(p*) ≥ 0.5 (the paper closes 59 % on Lots-of-LoRAs);
- the best training-free setting b* = argmax R:
  G(b*) ≥ 0.75, EM(b*) ≥ 0.5 · EM(oracle), R(b*) above `uniform`, `icl`, every `nearest-<metric>`
  and every paper setting (b* itself left out), and R(t, b*) > R(t, base) on ≥ 90 % of tasks.

A goal whose rows are missing from the summary (no `icl` row, say) is reported as None: not
checked, rather than met.
"""

from __future__ import annotations

import math

from lorabatch.settings import BASE, ICL, ORACLE, UNIFORM, Setting

PAPER_GAP = 0.5
BEST_GAP = 0.75
BEST_EXACT_OF_ORACLE = 0.5
BEST_TASKS_IMPROVED = 0.9


def quality_goals(summary: list[dict]) -> dict:
    """{"best_paper": name, "best": name, "goals": {goal: True | False | None}} of `summary`."""
    rows = {r["setting"]: r for r in summary}
    free = [r for s, r in rows.items() if s not in (BASE, ORACLE) and _number(r["rouge_l"])]
    paper = [r for r in free if Setting.parse(r["setting"]).kind == "paper"]
    out: dict = {"best_paper": None, "best": None, "goals": {}}
    goals = out["goals"]
    uniform = rows.get(UNIFORM)
    if paper:
        p = max(paper, key=lambda r: r["rouge_l"])
        out["best_paper"] = p["setting"]
        goals["best paper setting beats uniform"] = None if uniform is None else p["rouge_l"] > uniform["rouge_l"]
        goals[f"best paper setting closes >= {PAPER_GAP:.0%} of the gap"] = _at_least(p.get("gap_closed"), PAPER_GAP)
    if free:
        b = max(free, key=lambda r: r["rouge_l"])
        out["best"] = b["setting"]
        oracle = rows.get(ORACLE)
        goals[f"best closes >= {BEST_GAP:.0%} of the gap"] = _at_least(b.get("gap_closed"), BEST_GAP)
        goals[f"best exact match >= {BEST_EXACT_OF_ORACLE:.0%} of the oracle's"] = (
            None
            if oracle is None or not _number(oracle.get("exact_match"))
            else _at_least(b.get("exact_match"), BEST_EXACT_OF_ORACLE * oracle["exact_match"])
        )
        rivals = [
            r
            for r in free
            if r["setting"] != b["setting"] and Setting.parse(r["setting"]).kind in ("paper", UNIFORM, "nearest", ICL)
        ]
        kinds = {Setting.parse(r["setting"]).kind for r in rivals}
        goals["best beats uniform, icl, every nearest and every paper setting"] = (
            all(b["rouge_l"] > r["rouge_l"] for r in rivals) if {UNIFORM, ICL, "nearest", "paper"} <= kinds else None
        )
        goals[f"best improves >= {BEST_TASKS_IMPROVED:.0%} of tasks"] = _at_least(
            b.get("share_improved"), BEST_TASKS_IMPROVED
        )
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def _at_least(v, bound: float) -> bool | None:
    return bool(v >= bound) if _number(v) else None
