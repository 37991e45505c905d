"""Stage markers decide what reruns; the report renders whatever the run directory holds."""

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lorabatch.layout import RunLayout
from lorabatch.sweep.report import write_report
from lorabatch.sweep.stages import all_markers, content_key, is_done, mark_done


def test_marker_matches_only_its_key(tmp_path):
    key = content_key({"metric": "JS"}, [1, 2])
    assert key == content_key({"metric": "JS"}, [1, 2])
    assert key != content_key({"metric": "KL"}, [1, 2])
    assert not is_done(tmp_path, "distances", key)
    mark_done(tmp_path, "distances", key, time.time(), {"metrics": ["JS"]})
    assert is_done(tmp_path, "distances", key)
    assert not is_done(tmp_path, "distances", content_key("other"))
    assert all_markers(tmp_path)["distances"]["info"] == {"metrics": ["JS"]}


def _square_table(tasks, values, name):
    rows = [
        {"target": t, "source": s, name: float(values[i, j])} for i, t in enumerate(tasks) for j, s in enumerate(tasks)
    ]
    return pa.Table.from_pylist(rows)


def test_report_shows_pending_then_results(tmp_path):
    page = write_report(tmp_path).read_text()
    assert "Scores pending" in page and "<img" not in page

    tasks = ["task1", "task2", "task3"]
    rng = np.random.default_rng(0)
    RunLayout(tmp_path).distances_dir.mkdir()
    pq.write_table(_square_table(tasks, rng.random((3, 3)), "d"), RunLayout(tmp_path).distances("JS"))
    (RunLayout(tmp_path).coefficients_dir / "JS").mkdir(parents=True)
    pq.write_table(
        _square_table(tasks, rng.random((3, 3)), "c"), RunLayout(tmp_path).coefficients_file("JS", "normalized")
    )
    RunLayout(tmp_path).scores.mkdir()
    summary = [
        {"setting": "base", "rouge_l": 0.2, "improvement": 0.0, "n_tasks": 3},
        {"setting": "JS-normalized", "rouge_l": 0.45, "improvement": 0.25, "n_tasks": 3},
        {"setting": "oracle", "rouge_l": 0.7, "improvement": 0.5, "n_tasks": 3},
    ]
    pq.write_table(pa.Table.from_pylist(summary), RunLayout(tmp_path).score_table("summary"))
    per_task = [
        {"task_id": t, "setting": s, "rouge_l": v}
        for t in tasks
        for s, v in (("base", 0.2), ("JS-normalized", 0.4), ("oracle", 0.7))
    ]
    pq.write_table(pa.Table.from_pylist(per_task), RunLayout(tmp_path).score_table("tasks"))

    page = write_report(tmp_path, {"bank": {"finished_at": "now", "seconds": 1.0}}).read_text()
    assert "<table id='results'>" in page
    assert "<td>JS-normalized</td><td>0.450</td><td>+0.250</td>" in page
    assert page.count("data:image/png;base64,") == 3  # improvement box plot + 1 coefficient + 1 distance heatmap
    assert "Scores pending" not in page and "http" not in page.split("</style>")[1]


def test_scoring_and_report_markers_are_keyed_by_their_inputs(tmp_path):
    """Scoring the same generations with the same scoring config gives the same marker key (no
    clock in it); another generation file or another reference changes it; the report's key
    follows the other stages' keys."""
    from lorabatch.atomic import write_parquet
    from lorabatch.config import parse_config
    from lorabatch.generation.schema import conform, generation_schema
    from lorabatch.sweep.evaluation import stage_scoring
    from lorabatch.sweep.run import report_key
    from lorabatch.sweep.stages import read_marker

    def config(**scoring):
        return parse_config(
            {
                "run_dir": str(tmp_path),
                "bank": {"source": "local", "root": str(tmp_path), "base_model": "m"},
                "scoring": {"executor": "local", **scoring},
            }
        )

    def part(name, example):
        row = {
            "task_id": "task1",
            "setting": "base",
            "example_id": example,
            "prompt": "p",
            "references": ["red cat"],
            "prediction": "red",
            "fingerprint": "f",
        }
        write_parquet(RunLayout(tmp_path).generations / name, conform(pa.Table.from_pylist([row]), generation_schema()))

    part("part-a.parquet", "1")
    stage_scoring(config(), progress=False)
    first = read_marker(tmp_path, "scoring")["key"]
    report = report_key(tmp_path)
    time.sleep(1.1)
    stage_scoring(config(batch_size=7), progress=False)
    assert read_marker(tmp_path, "scoring")["key"] == first and report_key(tmp_path) == report
    stage_scoring(config(reference="max"), progress=False)
    assert read_marker(tmp_path, "scoring")["key"] != first
    stage_scoring(config(), progress=False)
    assert read_marker(tmp_path, "scoring")["key"] == first
    part("part-b.parquet", "2")
    stage_scoring(config(), progress=False)
    assert read_marker(tmp_path, "scoring")["key"] != first and report_key(tmp_path) != report


def test_heatmaps_are_redrawn_when_their_file_changes(tmp_path):
    """Heatmaps are drawn once per file content: a refresh with the same distances reuses the
    image, a changed distance file (same path) gets a new one."""
    import re

    tasks = ["task1", "task2", "task3"]
    layout = RunLayout(tmp_path)
    layout.distances_dir.mkdir()

    def image(matrix) -> str:
        pq.write_table(_square_table(tasks, matrix, "d"), layout.distances("JS"))
        return re.findall(r"src='(data:image/png;base64,[^']+)'", write_report(tmp_path).read_text())[0]

    rng = np.random.default_rng(1)
    first = rng.random((3, 3))
    before = image(first)
    assert image(first) == before
    flipped = first.copy()
    flipped[0, 1], flipped[2, 0] = 5.0, 0.0
    assert image(flipped) != before
