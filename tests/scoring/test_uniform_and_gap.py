"""The summary against the uniform control, and the gap share when there is no gap."""

import math

from lorabatch.scoring.aggregate import format_summary, summarize


def _tasks(scores: dict[str, list[float]]) -> list[dict]:
    return [
        {"task_id": f"t{i}", "setting": s, "rouge_l": v, "exact_match": 0.0, "n_examples": 1, "n_errors": 0}
        for s, values in scores.items()
        for i, v in enumerate(values)
    ]


def test_settings_are_compared_with_uniform_and_marked_when_not_above_it():
    rows = summarize(
        _tasks(
            {
                "base": [0.1, 0.1],
                "oracle": [0.9, 0.9],
                "uniform": [0.3, 0.5],
                "JS-normalized": [0.3, 0.4],
                "select": [0.6, 0.5],
                "nearest-JS": [0.3, 0.5],
            }
        )
    )
    by = {r["setting"]: r for r in rows}
    assert [r["setting"] for r in rows] == ["base", "JS-normalized", "uniform", "nearest-JS", "select", "oracle"]
    assert math.isclose(by["JS-normalized"]["vs_uniform"], -0.05) and by["JS-normalized"]["beats_uniform"] is False
    assert math.isclose(by["select"]["vs_uniform"], 0.15) and by["select"]["beats_uniform"] is True
    assert by["nearest-JS"]["vs_uniform"] == 0 and by["nearest-JS"]["beats_uniform"] is False  # equal is not better
    assert by["uniform"]["beats_uniform"] is None and by["oracle"]["beats_uniform"] is None
    text = format_summary(rows)
    marked = {line.split()[0] for line in text.splitlines() if "✗" in line and not line.startswith("✗")}
    assert marked == {"JS-normalized", "nearest-JS"}


def test_gap_closed_is_undefined_when_the_oracle_does_not_beat_base():
    rows = {
        r["setting"]: r
        for r in summarize(_tasks({"base": [0.5, 0.4], "oracle": [0.3, 0.4], "JS-normalized": [0.0, 0.0]}))
    }
    assert math.isnan(rows["JS-normalized"]["gap_closed"])
    assert "100%" not in format_summary(list(rows.values()))
    rows = {
        r["setting"]: r
        for r in summarize(_tasks({"base": [0.1, 0.1], "oracle": [0.5, 0.9], "JS-normalized": [0.3, 0.5]}))
    }
    assert math.isclose(rows["JS-normalized"]["gap_closed"], 0.6 / 1.2)
