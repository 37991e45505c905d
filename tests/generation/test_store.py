"""A generation write that Ray retries leaves its rows once: part files are named by their rows."""

import pyarrow as pa
import pyarrow.parquet as pq

from lorabatch.generation.schema import conform, generation_schema
from lorabatch.generation.store import generation_files, generations_datasink, read_generations


def _block(examples, fingerprint="fp"):
    rows = [
        {
            "task_id": "task1",
            "setting": "base",
            "example_id": str(i),
            "prompt": "p",
            "references": ["r"],
            "prediction": f"answer {i}",
            "backend": "hf",
            "fingerprint": fingerprint,
        }
        for i in examples
    ]
    return conform(pa.Table.from_pylist(rows), generation_schema())


def test_a_retried_write_task_replaces_its_file_instead_of_adding_the_rows_again(tmp_path):
    sink = generations_datasink(tmp_path, count_metrics=False)
    (tmp_path / "generations").mkdir()
    assert sink.write([_block([1, 2])], ctx=None) == 2
    assert sink.write([_block([1, 2])], ctx=None) == 2  # the same task again, after its node was lost
    assert len(generation_files(tmp_path)) == 1
    sink.write([_block([3])], ctx=None)
    sink.write([_block([1, 2], fingerprint="other")], ctx=None)  # other work on the same keys: its own file
    files = generation_files(tmp_path)
    assert len(files) == 3
    assert sum(pq.read_metadata(f).num_rows for f in files) == 5
    assert read_generations(tmp_path).num_rows == 3
