"""Accepting a demo bank on rows that carry no method: base, own adapters, `uniform` (valid split).

A demo bank stands in for Lots-of-LoRAs, so it is judged by the real bank's measured properties
before any method is run on it, on each task's **valid** split (the test split is the sweep's):

- own adapters (the oracle) reach Rouge-L ≥ 0.90;
- the base model reaches 0.2–0.4 of the oracle's Rouge-L (real bank: 0.26), with its answers'
  content mostly right (content ≥ 50 %, `lorabatch.scoring.content`) and rarely exactly right
  (exact match ≤ 10 %): it knows the tasks, not their forms;
- `uniform`, the plain mean of the other tasks' adapters (every tensor, A and B apart: the
  paper's mixing), closes 20–50 % of the base→oracle gap (real bank ≈ 37 %):
  gap closed = (R_uniform − R_base) / (R_oracle − R_base) on the means over tasks.

Generation is greedy on the raw `input`, as the sweep's; scores are means over tasks of the
means over each task's examples.
"""

from __future__ import annotations

from pathlib import Path

from lorabatch.demo.evaluate import greedy_generate
from lorabatch.scoring.content import content_match, template_words
from lorabatch.scoring.rouge import exact_match, rouge_l
from lorabatch.synthesis.mixing import mix_linear
from lorabatch.synthesis.tensors import bank_layout

# (lower, upper) bounds of each acceptance figure; None: unbounded on that side.
CRITERIA: dict[str, tuple[float | None, float | None]] = {
    "oracle_rouge_l": (0.90, None),
    "base_over_oracle": (0.2, 0.4),
    "base_content": (0.5, None),
    "base_exact_match": (None, 0.1),
    "uniform_gap_closed": (0.2, 0.5),
}
REAL_BANK = {"base_over_oracle": 0.26, "uniform_gap_closed": 0.37, "shared_init_fraction": 0.38}
ROWS = ("base", "oracle", "uniform")


def score_predictions(predictions: list[str], rows: list[dict]) -> dict:
    """Mean Rouge-L, exact match and content of `predictions` against each row's `output[0]`; the
    template words come from these rows' references (one task's split)."""
    refs = [r["output"][0] for r in rows]
    template = template_words(refs)
    n = len(rows)
    return {
        "rouge_l": sum(rouge_l(p, [ref]) for p, ref in zip(predictions, refs, strict=True)) / n,
        "exact_match": sum(exact_match(p, [ref]) for p, ref in zip(predictions, refs, strict=True)) / n,
        "content": sum(content_match(p, ref, template) for p, ref in zip(predictions, refs, strict=True)) / n,
    }


def uniform_tensors(layout, target: int) -> dict:
    """The paper-mixed mean of every adapter of `layout` (a `BankLayout`) but `target`'s:
    c_j = 1/(N−1), c_target = 0."""
    import numpy as np

    c = np.full(layout.n_tasks, 1.0 / (layout.n_tasks - 1))
    c[target] = 0.0
    return mix_linear(layout, c)


def accept_bank(
    base_dir: Path,
    adapters: dict[str, Path],
    valid: dict[str, list[dict]],
    max_new_tokens: int,
    progress: bool = True,
) -> dict:
    """Base, oracle and uniform on every task's `valid` rows; per task, the means and the verdict.

    `adapters` and `valid` are keyed by task id (bank order). Returns `{"tasks": {task: {row:
    scores}}, "mean": {row: scores}, "figures": {...}, "criteria": {...}, "accepted": bool,
    "examples": {task: {...}}}` with one base/oracle/uniform prediction per task.
    """
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task_ids = list(adapters)
    dirs = [adapters[t] for t in task_ids]
    layout = bank_layout(task_ids, dirs)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), dirs[0], adapter_name="uniform")
    for task, path in adapters.items():
        model.load_adapter(path, adapter_name=task)
    model.eval()
    per_task: dict[str, dict] = {}
    examples: dict[str, dict] = {}
    for i, task in enumerate(tqdm(task_ids, desc="accept (valid)", unit="task", disable=not progress or None)):
        rows = valid[task]
        prompts = [r["input"] for r in rows]
        set_peft_model_state_dict(
            model, {k: torch.from_numpy(v) for k, v in uniform_tensors(layout, i).items()}, "uniform"
        )
        predictions = {}
        with model.disable_adapter():
            predictions["base"] = greedy_generate(model, tokenizer, prompts, max_new_tokens)
        for row, adapter in (("oracle", task), ("uniform", "uniform")):
            model.set_adapter(adapter)
            predictions[row] = greedy_generate(model, tokenizer, prompts, max_new_tokens)
        per_task[task] = {row: _rounded(score_predictions(predictions[row], rows)) for row in ROWS}
        examples[task] = {"input": prompts[0], "reference": rows[0]["output"][0]} | {
            row: predictions[row][0] for row in ROWS
        }
    mean = {
        row: _rounded(
            {k: sum(per_task[t][row][k] for t in task_ids) / len(task_ids) for k in per_task[task_ids[0]][row]}
        )
        for row in ROWS
    }
    figures = acceptance_figures(mean)
    verdict = {name: _within(figures[name], bounds) for name, bounds in CRITERIA.items()}
    return {
        "split": "valid",
        "max_new_tokens": max_new_tokens,
        "tasks": per_task,
        "mean": mean,
        "figures": figures,
        "criteria": {name: {"bounds": list(CRITERIA[name]), "met": met} for name, met in verdict.items()},
        "accepted": all(verdict.values()),
        "real_bank": REAL_BANK,
        "examples": examples,
    }


def acceptance_figures(mean: dict) -> dict:
    """The figures the criteria bound, from the mean scores of base, oracle and uniform."""
    base, oracle, uniform = (mean[r]["rouge_l"] for r in ROWS)
    gap = oracle - base
    return _rounded(
        {
            "oracle_rouge_l": oracle,
            "base_over_oracle": base / oracle if oracle else float("nan"),
            "base_content": mean["base"]["content"],
            "base_exact_match": mean["base"]["exact_match"],
            "uniform_gap_closed": (uniform - base) / gap if gap > 0 else float("nan"),
        }
    )


def _within(value: float, bounds: tuple[float | None, float | None]) -> bool:
    lo, hi = bounds
    return value == value and (lo is None or value >= lo) and (hi is None or value <= hi)


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}
