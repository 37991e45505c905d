"""Rouge-L against rouge-score itself and hand-checked values; the summary arithmetic."""

import math

import pytest

from lorabatch.layout import RunLayout
from lorabatch.scoring.aggregate import format_summary, score_examples, summarize, task_scores
from lorabatch.scoring.rouge import exact_match, rouge_l


def test_rouge_l_matches_rouge_score_and_hand_values():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    cases = [
        ("the cat sat on the mat", ["the cat is on the mat"]),
        ("running dogs", ["the dog runs"]),
        ("", ["something"]),
        ("Paris", ["paris", "France"]),
    ]
    for pred, refs in cases:
        assert rouge_l(pred, refs) == scorer.score(refs[0], pred)["rougeL"].fmeasure
    # Hand-checked: LCS("the cat sat on the mat", "the cat is on the mat") = 5 tokens of 6 / 6.
    assert rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # Stemming: running -> run, dogs -> dog; LCS("run dog", "the dog run") = 1, P = 1/2, R = 1/3.
    assert rouge_l("running dogs", ["the dog runs"]) == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert rouge_l("", ["something"]) == 0.0


def test_reference_first_versus_max():
    refs = ["France", "Paris is the capital"]
    assert rouge_l("Paris", refs) == 0.0
    assert rouge_l("Paris", refs, use_max=True) == pytest.approx(2 * 1 * 0.25 / 1.25)
    assert exact_match(" paris ", ["Paris"]) == 1.0
    assert exact_match("paris", ["France", "paris"]) == 0.0
    assert exact_match("paris", ["France", "paris"], use_max=True) == 1.0


def _rows(setting, task, preds, refs="a b c d", error=None):
    return [
        {
            "task_id": task,
            "setting": setting,
            "example_id": f"{task}-{i}",
            "prediction": p,
            "references": [refs],
            "error": error,
        }
        for i, p in enumerate(preds)
    ]


def test_failed_rows_excluded_or_zero():
    rows = _rows("base", "task1", ["a b c d"]) + _rows("base", "task1", [None], error="adapter missing")
    ex = score_examples(rows)
    assert [e["rouge_l"] for e in ex] == [1.0, None]
    assert ex[1]["error"] == "adapter missing"
    t = task_scores(ex)
    assert t[0]["rouge_l"] == 1.0 and t[0]["n_examples"] == 1 and t[0]["n_errors"] == 1
    t0 = task_scores(score_examples(rows, failed_rows="zero"))
    assert t0[0]["rouge_l"] == 0.5 and t0[0]["n_errors"] == 1


def test_summary_arithmetic():
    # Task scores (Rouge-L): base 0.2 / 0.4, oracle 0.8 / 0.6, S 0.5 / 0.3.
    tasks = [
        {"task_id": "task1", "setting": "base", "rouge_l": 0.2, "exact_match": 0.0, "n_examples": 2, "n_errors": 0},
        {"task_id": "task2", "setting": "base", "rouge_l": 0.4, "exact_match": 0.5, "n_examples": 2, "n_errors": 0},
        {"task_id": "task1", "setting": "oracle", "rouge_l": 0.8, "exact_match": 1.0, "n_examples": 2, "n_errors": 0},
        {"task_id": "task2", "setting": "oracle", "rouge_l": 0.6, "exact_match": 0.5, "n_examples": 2, "n_errors": 0},
        {
            "task_id": "task1",
            "setting": "JS-normalized",
            "rouge_l": 0.5,
            "exact_match": 0.0,
            "n_examples": 2,
            "n_errors": 0,
        },
        {
            "task_id": "task2",
            "setting": "JS-normalized",
            "rouge_l": 0.3,
            "exact_match": 0.0,
            "n_examples": 1,
            "n_errors": 1,
        },
    ]
    rows = {r["setting"]: r for r in summarize(tasks)}
    assert [r["setting"] for r in summarize(tasks)] == ["base", "JS-normalized", "oracle"]
    s = rows["JS-normalized"]
    assert s["rouge_l"] == pytest.approx(0.4)
    assert s["improvement"] == pytest.approx(0.1)  # mean(0.3, -0.1)
    assert s["improvement_rel"] == pytest.approx(0.1 / 0.3)
    assert s["share_improved"] == pytest.approx(0.5)
    assert s["gap_closed"] == pytest.approx((0.3 - 0.1) / (0.6 + 0.2))
    assert (s["n_tasks"], s["n_examples"], s["n_errors"]) == (2, 3, 1)
    assert rows["oracle"]["gap_closed"] == pytest.approx(1.0)
    assert rows["base"]["improvement"] == 0.0 and rows["base"]["gap_closed"] == 0.0
    text = format_summary(summarize(tasks))
    assert "JS-normalized" in text and "+0.100" in text and "25%" in text


def test_summary_without_base_is_nan_not_error():
    tasks = [
        {"task_id": "task1", "setting": "oracle", "rouge_l": 0.5, "exact_match": 0.0, "n_examples": 1, "n_errors": 0}
    ]
    (row,) = summarize(tasks)
    assert row["rouge_l"] == 0.5 and math.isnan(row["improvement"]) and math.isnan(row["gap_closed"])


def test_run_scoring_writes_three_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lorabatch.atomic import write_parquet
    from lorabatch.generation.schema import conform, generation_schema
    from lorabatch.scoring.config import ScoringConfig
    from lorabatch.scoring.stage import ScoringError, run_scoring

    with pytest.raises(ScoringError, match="no generations"):
        run_scoring(tmp_path, ScoringConfig(executor="local"))
    rows = _rows("base", "task1", ["a b", "x"]) + _rows("oracle", "task1", ["a b c d", "a b c"])
    write_parquet(
        RunLayout(tmp_path).generations / "part-1.parquet", conform(pa.Table.from_pylist(rows), generation_schema())
    )
    # A later failed duplicate of a successful row does not replace it.
    dup = dict(rows[0], prediction=None, error="late failure")
    write_parquet(
        RunLayout(tmp_path).generations / "part-2.parquet", conform(pa.Table.from_pylist([dup]), generation_schema())
    )
    summary = run_scoring(tmp_path, ScoringConfig(executor="local"))
    assert [r["setting"] for r in summary] == ["base", "oracle"]
    ex = pq.read_table(RunLayout(tmp_path).score_table("examples"))
    assert ex.num_rows == 4 and ex.column("error").null_count == 4
    tasks = pq.read_table(RunLayout(tmp_path).score_table("tasks")).to_pylist()
    base = next(t for t in tasks if t["setting"] == "base")
    assert base["rouge_l"] == pytest.approx((rouge_l("a b", ["a b c d"]) + 0.0) / 2)
    assert pq.read_table(RunLayout(tmp_path).score_table("summary")).num_rows == 2
