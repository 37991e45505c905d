"""Scores per example -> per task -> per setting, and the summary in the paper's shape.

Per example (`examples.parquet`):
    task_id · setting · example_id · rouge_l float64 (null if failed and excluded)
    exact_match float64 (same) · content float64 (same: 1 when the prediction holds every content
    word of the reference, `lorabatch.scoring.content`; the template words come from the task's
    references, one per example) · error str | null
Per task (`tasks.parquet`), over the task's scored examples:
    task_id · setting · rouge_l = mean_e rouge_l · exact_match = mean_e exact_match
    content = mean_e content · n_examples (scored) · n_errors
Per setting (`summary.parquet`), s a setting, T_s the tasks with a score for s, R(t, s) a task score:
    rouge_l         = mean_{t∈T_s} R(t, s)                        (macro average over tasks)
    improvement     = mean_{t∈T_s∩T_base} R(t, s) − R(t, base)    (absolute, Rouge-L points)
    improvement_rel = improvement / mean_{t∈T_s∩T_base} R(t, base)
    share_improved  = |{t ∈ T_s∩T_base : R(t, s) > R(t, base)}| / |T_s∩T_base|
    gap_closed      = Σ_t (R(t, s) − R(t, base)) / Σ_t (R(t, oracle) − R(t, base)) over
                      t ∈ T_s∩T_base∩T_oracle (the share of the base→oracle gap closed; NaN
                      when the oracle does not beat base on those tasks: there is no gap)
    vs_uniform      = mean_{t∈T_s∩T_uniform} R(t, s) − R(t, uniform)   (NaN without a uniform row)
    beats_uniform   = vs_uniform > 0 (null for base, oracle, uniform itself and without uniform):
                      a setting that does not beat the data-free control adds nothing
    exact_match, content (means over tasks), n_tasks = |T_s|, n_examples, n_errors
Undefined ratios (no base tasks, zero base mean, zero gap) are NaN.
Summary rows in `lorabatch.settings.display_order`: base, paper settings, controls, select,
refine, oracle.
"""

from __future__ import annotations

import math

from lorabatch.scoring.content import content_match, template_words
from lorabatch.scoring.rouge import exact_match, rouge_l
from lorabatch.settings import BASE, ORACLE, UNIFORM, display_order


def task_templates(rows: list[dict]) -> dict[str, list[str]]:
    """Each task's template words, from the first reference of each of its examples (an example
    generated under several settings counts once)."""
    refs: dict[str, dict[str, str]] = {}
    for r in rows:
        if r.get("references"):
            refs.setdefault(r["task_id"], {})[r["example_id"]] = r["references"][0]
    return {task: sorted(template_words(list(by_id.values()))) for task, by_id in refs.items()}


def score_examples(
    rows: list[dict],
    reference: str = "first",
    failed_rows: str = "exclude",
    templates: dict[str, list[str]] | None = None,
) -> list[dict]:
    """Rouge-L F (stemmed), exact match and content of each generation row. `templates`: each
    task's template words (`task_templates`; computed from `rows` when None, which needs every
    example of a task among them)."""
    use_max = reference == "max"
    templates = task_templates(rows) if templates is None else templates
    template_sets = {task: frozenset(words) for task, words in templates.items()}
    out = []
    for r in rows:
        err = r.get("error")
        refs = list(r.get("references") or [])
        if err or r.get("prediction") is None or not refs:
            err = err or ("no reference to score against" if not refs else "no prediction")
            score = 0.0 if failed_rows == "zero" else None
            out.append({**_key(r), "rouge_l": score, "exact_match": score, "content": score, "error": err})
            continue
        template = template_sets.get(r["task_id"], frozenset())
        out.append(
            {
                **_key(r),
                "rouge_l": rouge_l(r["prediction"], refs, use_max=use_max),
                "exact_match": exact_match(r["prediction"], refs, use_max=use_max),
                "content": max(
                    content_match(r["prediction"], ref, template) for ref in (refs if use_max else refs[:1])
                ),
                "error": None,
            }
        )
    return out


def _key(r: dict) -> dict:
    return {"task_id": r["task_id"], "setting": r["setting"], "example_id": r["example_id"]}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def task_scores(examples: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in examples:
        groups.setdefault((e["task_id"], e["setting"]), []).append(e)
    out = []
    for (task, setting), rows in groups.items():
        scored = [r for r in rows if r["rouge_l"] is not None]
        out.append(
            {
                "task_id": task,
                "setting": setting,
                "rouge_l": _mean([r["rouge_l"] for r in scored]),
                "exact_match": _mean([r["exact_match"] for r in scored]),
                "content": _mean([r.get("content") for r in scored]),
                "n_examples": len(scored),
                "n_errors": sum(1 for r in rows if r["error"]),
            }
        )
    return sorted(out, key=lambda r: (setting_order(r["setting"]), task_order(r["task_id"])))


def setting_order(setting: str):
    return display_order(setting)


def task_order(task: str):
    digits = "".join(ch for ch in task if ch.isdigit())
    return (int(digits) if digits else 0, task)


def _ratio(num: float | None, den: float | None) -> float:
    if num is None or den is None or den == 0:
        return math.nan
    return num / den


def summarize(tasks: list[dict]) -> list[dict]:
    """One row per setting: mean, improvement over base, share improved, share of the gap closed."""
    score: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    em: dict[str, list[float]] = {}
    content: dict[str, list[float]] = {}
    for t in tasks:
        c = counts.setdefault(t["setting"], {"n_examples": 0, "n_errors": 0})
        c["n_examples"] += t["n_examples"]
        c["n_errors"] += t["n_errors"]
        if t["rouge_l"] is not None:
            score.setdefault(t["setting"], {})[t["task_id"]] = t["rouge_l"]
            em.setdefault(t["setting"], []).append(t["exact_match"])
            if t.get("content") is not None:
                content.setdefault(t["setting"], []).append(t["content"])
    base = score.get(BASE, {})
    oracle = score.get(ORACLE, {})
    uniform = score.get(UNIFORM, {})
    rows = []
    for setting in sorted(counts, key=setting_order):
        s = score.get(setting, {})
        common = [t for t in s if t in base]
        gap_tasks = [t for t in common if t in oracle]
        diff = _mean([s[t] - base[t] for t in common]) if common else None
        base_mean = _mean([base[t] for t in common]) if common else None
        rows.append(
            {
                "setting": setting,
                "rouge_l": _mean(list(s.values())) if s else math.nan,
                "improvement": diff if diff is not None else math.nan,
                "improvement_rel": _ratio(diff, base_mean),
                "share_improved": (sum(s[t] > base[t] for t in common) / len(common)) if common else math.nan,
                "gap_closed": _gap_closed(s, base, oracle, gap_tasks),
                **_versus_uniform(setting, s, uniform),
                "exact_match": _mean(em.get(setting, [])) if em.get(setting) else math.nan,
                "content": _mean(content[setting]) if content.get(setting) else math.nan,
                "n_tasks": len(s),
                **counts[setting],
            }
        )
    return rows


def _gap_closed(s: dict, base: dict, oracle: dict, tasks: list[str]) -> float:
    gap = sum(oracle[t] - base[t] for t in tasks) if tasks else None
    if gap is None or gap <= 0:
        return math.nan
    return sum(s[t] - base[t] for t in tasks) / gap


def _versus_uniform(setting: str, s: dict, uniform: dict) -> dict:
    common = [t for t in s if t in uniform]
    if not common or setting in (BASE, ORACLE, UNIFORM):
        delta = _mean([s[t] - uniform[t] for t in common]) if common and setting != UNIFORM else None
        return {"vs_uniform": delta if delta is not None else math.nan, "beats_uniform": None}
    delta = _mean([s[t] - uniform[t] for t in common])
    return {"vs_uniform": delta, "beats_uniform": bool(delta > 0)}


def format_summary(rows: list[dict]) -> str:
    """The summary as a text table (rows = settings), as the paper reports it."""
    head = (
        f"{'setting':<24} {'Rouge-L':>8} {'Δ base':>8} {'Δ% base':>8} {'improved':>9} {'gap closed':>11} "
        f"{'Δ uniform':>10} {'EM':>6} {'content':>8} {'tasks':>6} {'errors':>7}"
    )
    lines = [head, "-" * len(head)]

    def f(v, spec):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for r in rows:
        lines.append(
            f"{r['setting']:<24} {f(r['rouge_l'], '.3f'):>8} {f(r['improvement'], '+.3f'):>8} "
            f"{f(r['improvement_rel'], '+.1%'):>8} {f(r['share_improved'], '.0%'):>9} "
            f"{f(r['gap_closed'], '.0%'):>11} {f(r.get('vs_uniform'), '+.3f'):>10} {f(r['exact_match'], '.3f'):>6} "
            f"{f(r.get('content'), '.3f'):>8} {r['n_tasks']:>6} {r['n_errors']:>7}{'  ✗ not above uniform' if r.get('beats_uniform') is False else ''}"
        )
    if any(r.get("beats_uniform") is False for r in rows):
        lines.append("✗: does not beat `uniform`, the plain mean of the other tasks' adapters (no task information).")
    return "\n".join(lines)
