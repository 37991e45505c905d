"""`lorabatch status` counts each (task, setting, example) once; a retried success wins."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from lorabatch.generation.schema import conform, generation_schema
from lorabatch.layout import RunLayout
from lorabatch.sweep.stages import content_key, mark_done
from lorabatch.sweep.status import status_lines


def _part(path, rows):
    pq.write_table(conform(pa.Table.from_pylist(rows), generation_schema()), path)


def test_counts_and_stage_states(tmp_path):
    gen = RunLayout(tmp_path).generations
    gen.mkdir()
    row = {"task_id": "task1", "setting": "base", "prompt": "p", "references": ["r"], "backend": "hf"}
    _part(
        gen / "part-a.parquet",
        [
            {**row, "example_id": "1", "prediction": None, "error": "boom"},
            {**row, "example_id": "2", "prediction": None, "error": "boom"},
        ],
    )
    _part(gen / "part-b.parquet", [{**row, "example_id": "1", "prediction": "r", "error": None}])
    (gen / "plan.json").write_text(json.dumps({"rows_per_setting": {"base": 3, "oracle": 2}}))
    mark_done(tmp_path, "bank", content_key("x"), 0.0)
    lines = status_lines(tmp_path)
    assert any(l.startswith("bank") and "done" in l for l in lines)
    assert any(l.startswith("generation") and "pending" in l for l in lines)
    base = next(l for l in lines if l.startswith("base "))
    assert base.split() == ["base", "1", "1", "1", "3"]
    oracle = next(l for l in lines if l.startswith("oracle "))
    assert oracle.split() == ["oracle", "0", "0", "2", "2"]
