"""Schemas of the generation stage's rows.

Work row (one per task × setting × example), built by `lorabatch.generation.plan`:
    task_id str · setting str (a `lorabatch.settings.Setting` name) · example_id str
    prompt str (the raw `input`) · references list<str> (`output`) · adapter_path str | null (null for base)
    fingerprint str (what the output depends on: adapter identity, prompt, decoding parameters;
    see lorabatch.generation.fingerprint; null in rows written before it existed)

Generation row (`RUN/generations/part-*.parquet`), one per work row:
    the work row's columns · prediction str | null · generated_token_ids list<int32>
    num_input_tokens int32 · num_generated_tokens int32 · backend str · error str | null
A row with a non-null `error` failed (missing/broken adapter, prompt too long, engine error);
its prediction is null. Rows are keyed by (task_id, setting, example_id).
"""

from __future__ import annotations

from lorabatch.settings import BASE as BASE_SETTING  # noqa: F401  (re-exported)
from lorabatch.settings import ORACLE as ORACLE_SETTING  # noqa: F401  (re-exported)

KEY_COLUMNS = ("task_id", "setting", "example_id")
WORK_COLUMNS = (*KEY_COLUMNS, "prompt", "references", "adapter_path", "fingerprint")


def work_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("task_id", pa.string()),
            ("setting", pa.string()),
            ("example_id", pa.string()),
            ("prompt", pa.string()),
            ("references", pa.list_(pa.string())),
            ("adapter_path", pa.string()),
            ("fingerprint", pa.string()),
        ]
    )


def generation_schema():
    import pyarrow as pa

    return pa.schema(
        [
            *work_schema(),
            ("prediction", pa.string()),
            ("generated_token_ids", pa.list_(pa.int32())),
            ("num_input_tokens", pa.int32()),
            ("num_generated_tokens", pa.int32()),
            ("backend", pa.string()),
            ("error", pa.string()),
        ]
    )


def conform(table, schema):
    """`table` with exactly `schema`'s columns, in order and cast (missing columns become null)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(table.num_rows, type=field.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
