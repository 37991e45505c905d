"""A sweep with the controls (uniform, nearest-<metric>, icl) and the few-shot settings (select,
refine): every one is generated, scored against uniform, listed by status and the report, and a
re-run reuses them."""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
from typer.testing import CliRunner

from lorabatch.bank.datasets import sample_examples
from lorabatch.cli import app
from lorabatch.generation.store import read_generations
from lorabatch.layout import RunLayout


def test_sweep_evaluates_controls_and_fewshot_settings(sweep_bank, write_sweep_config, tmp_path, caplog):
    import ray

    from lorabatch.config import load_config
    from lorabatch.generation.store import generation_files
    from lorabatch.sweep.run import run_sweep
    from lorabatch.sweep.status import status_lines

    run = tmp_path / "run"
    path = write_sweep_config(
        tmp_path / "sweep.yaml",
        run,
        controls=("uniform", "nearest"),
        fewshot=("select", "refine"),
        fewshot_controls=("icl",),
        examples_per_task=3,
        max_new_tokens=4,
        features_executor="local",
    )
    sets = ["fewshot.examples=4", "fewshot.refine.budget=8", "fewshot.refine.top_k=2"]
    command = ["sweep", str(path), *[x for kv in sets for x in ("--set", kv)]]
    caplog.set_level(logging.INFO, logger="lorabatch")
    try:
        res = CliRunner().invoke(app, command)  # the CLI prints the results table
        assert res.exit_code == 0, res.output
        first = res.output
        files = generation_files(run)
        caplog.clear()
        overrides = {"fewshot.examples": 4, "fewshot.refine.budget": 8, "fewshot.refine.top_k": 2}
        run_sweep(load_config(path, overrides), progress=False)
        again = caplog.text  # progress goes to the loggers
    finally:
        ray.shutdown()
    settings = {"base", "oracle", "JS-attentional", "JS-normalized", "uniform", "nearest-JS", "icl", "select", "refine"}
    summary = {r["setting"]: r for r in pq.read_table(RunLayout(run).score_table("summary")).to_pylist()}
    assert set(summary) == settings
    assert all(r["n_errors"] == 0 and r["n_tasks"] == 4 for r in summary.values())
    # vs_uniform is the mean per-task difference to uniform; beats_uniform is its sign.
    tasks = pq.read_table(RunLayout(run).score_table("tasks")).to_pylist()
    score = {(t["setting"], t["task_id"]): t["rouge_l"] for t in tasks}
    ids = sorted({t["task_id"] for t in tasks})
    for s in settings - {"base", "oracle", "uniform"}:
        delta = sum(score[(s, t)] - score[("uniform", t)] for t in ids) / len(ids)
        assert abs(summary[s]["vs_uniform"] - delta) < 1e-12
        assert summary[s]["beats_uniform"] == (delta > 0)
    assert summary["uniform"]["beats_uniform"] is None and summary["base"]["beats_uniform"] is None
    # The printed table marks every setting that does not beat uniform, and shows what few-shot cost.
    table = first[first.index("setting") :]
    for s, r in summary.items():
        line = next(l for l in table.splitlines() if l.startswith(s + " "))
        assert ("✗" in line) == (r["beats_uniform"] is False)
    assert "few-shot cost" in first and "select" in first.split("few-shot cost")[1]
    # Few-shot adapters carry their record; results list the cost per task.
    for method in ("select", "refine"):
        rows = pq.read_table(RunLayout(run).fewshot(method)).to_pylist()
        assert [r["error"] for r in rows] == [None] * 4
        # several candidates share a forward pass (fewshot.candidates_per_pass): passes may be fewer
        assert all(r["forward_passes"] > 0 and r["evaluations"] > 0 and r["seconds"] > 0 for r in rows)
        prov = json.loads((RunLayout(run).adapter(method, rows[0]["task_id"]) / "provenance.json").read_text())
        assert prov["setting"] == method and prov["fewshot"]["loss"] == rows[0]["loss"]
    # icl: the base model with the task's few-shot examples (those select was judged on) before
    # each test prompt, no adapter; the same prompts as base after that prefix.
    generations = {
        (r["setting"], r["task_id"], r["example_id"]): r
        for r in read_generations(run).to_pylist()
        if r["setting"] in ("base", "icl")
    }
    selected = {
        r["task_id"]: json.loads(r["details"]) for r in pq.read_table(RunLayout(run).fewshot("select")).to_pylist()
    }
    manifest = {r["task_id"]: r for r in pq.read_table(RunLayout(run).manifest).to_pylist()}
    for (setting, task, example), row in generations.items():
        if setting != "icl":
            continue
        base = generations[("base", task, example)]
        shots = sample_examples(manifest[task]["dataset_path"], "train", 4, 0, task)
        assert row["adapter_path"] is None and row["prompt"].endswith(base["prompt"])
        prefix = row["prompt"][: -len(base["prompt"])]
        assert (
            prefix
            and prefix.endswith("\n\n")
            and prefix in "".join(f"{s['input']} {s['output'][0]}\n\n" for s in shots)
        )
        assert selected[task]  # select ran on these tasks with the same k and seed
    assert summary["icl"]["n_tasks"] == 4 and summary["icl"]["beats_uniform"] is not None
    assert all(r["content"] == r["content"] for r in summary.values())  # a content score on every row
    # status and the report list them too.
    lines = status_lines(run)
    assert any(l.startswith("fewshot ") and "done" in l for l in lines)
    for s in ("uniform", "nearest-JS", "icl", "select", "refine"):
        assert any(l.split()[:2] == [s, "12"] for l in lines), lines  # 4 tasks × 3 examples done
    scores = lines[lines.index(next(l for l in lines if l.startswith("scores"))) + 1 :]
    for s, r in summary.items():
        line = next(l for l in scores if l.split()[0] == s)
        assert line.split()[1:4] == [f"{r['rouge_l']:.3f}", f"{r['exact_match']:.3f}", f"{r['content']:.3f}"]
    page = RunLayout(run).report_index.read_text()
    assert "<th>content</th>" in page and ">icl<" in page
    assert "<table id='fewshot'>" in page
    assert ("class='below-uniform'" in page) == any(r["beats_uniform"] is False for r in summary.values())
    # A re-run with nothing changed reuses the few-shot results and every generated row.
    assert "few-shot: select/refine cached" in again
    assert generation_files(run) == files
