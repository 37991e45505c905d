"""Generation rows on disk: `RUN/generations/part-<write id>-<block>.parquet`, each file atomic.

Ray Data writes them through `generations_datasink` (one file per write task, temp file + rename,
so an interrupted sweep leaves only complete files). A file is named after the keys and
fingerprints of its rows: a write task that Ray retries (its node was lost after the file was
written) writes the same name again, replacing the file instead of adding its rows a second time.
`read_generations` reads them back with
one row per (task_id, setting, example_id): the row in the later file wins, except that a failed
row never replaces a successful one of the same fingerprint.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from lorabatch import telemetry
from lorabatch.atomic import write_parquet
from lorabatch.generation.schema import KEY_COLUMNS, conform, generation_schema
from lorabatch.layout import RunLayout


def generations_dir(run_dir) -> Path:
    return RunLayout(run_dir).generations


def generation_files(run_dir) -> list[Path]:
    """Part files in write order (their names start with a time-ordered write id)."""
    return sorted(p for p in generations_dir(run_dir).glob("part-*.parquet") if p.is_file())


def _write_id() -> str:
    import time

    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def generations_datasink(run_dir, count_metrics: bool = True):
    """A Ray Data Datasink writing each block of generation rows to its own atomic Parquet file."""
    return _datasink_class()(run_dir, count_metrics)


_DATASINK_CLASS = None


def _datasink_class():
    global _DATASINK_CLASS
    if _DATASINK_CLASS is not None:
        return _DATASINK_CLASS
    from ray.data import Datasink

    class GenerationsDatasink(Datasink):
        def __init__(self, run_dir, count_metrics: bool = True):
            self.out_dir = str(generations_dir(run_dir))
            self.write_id = _write_id()
            self.count_metrics = count_metrics

        def get_name(self) -> str:
            return "WriteGenerations"

        def write(self, blocks, ctx) -> int:
            import pyarrow as pa

            tables = [t for t in (_to_arrow(b) for b in blocks) if t.num_rows]
            if not tables:
                return 0
            schema = generation_schema()
            table = pa.concat_tables([conform(t, schema) for t in tables])
            name = f"part-{self.write_id}-{_rows_digest(table)}.parquet"
            write_parquet(Path(self.out_dir) / name, table)
            if self.count_metrics:
                _count(table)
            return table.num_rows

    _DATASINK_CLASS = GenerationsDatasink
    return GenerationsDatasink


def _rows_digest(table) -> str:
    """Names the rows of a part file: sha256 of their keys and fingerprints, in order."""
    import hashlib

    digest = hashlib.sha256()
    for column in (*KEY_COLUMNS, "fingerprint"):
        for value in table.column(column).to_pylist():
            digest.update(b"\0" if value is None else value.encode() + b"\1")
    return digest.hexdigest()[:20]


def _to_arrow(block):
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).to_arrow()


def _count(table) -> None:

    per: dict[str, list[int]] = {}
    for setting, err in zip(table.column("setting").to_pylist(), table.column("error").to_pylist()):
        c = per.setdefault(setting, [0, 0])
        c[0] += 1
        c[1] += bool(err)
    for setting, (n, failed) in per.items():
        telemetry.rows_generated(setting, n, failed)


def read_generations(run_dir, columns: list[str] | None = None):
    """All generation rows of a run, one per key: the latest written wins, except that a failed
    row does not replace an earlier successful row with the same fingerprint (a failed retry of
    the same work). A row with another fingerprint (other adapter, prompt or decoding) replaces
    whatever came before, since it is what the run was last asked to generate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = generation_schema()
    wanted = list(dict.fromkeys([*KEY_COLUMNS, "error", "fingerprint", *(columns or schema.names)]))
    tables = []
    for f in generation_files(run_dir):
        try:
            tables.append(conform(pq.read_table(f), schema).select(wanted))
        except Exception as err:  # a foreign or damaged file must not hide the others
            import warnings

            warnings.warn(f"skipping unreadable generations file {f}: {err}", stacklevel=2)
    if not tables:
        return conform(pa.table({}), schema).select(wanted if columns is None else list(dict.fromkeys(columns)))
    table = pa.concat_tables(tables)
    keys = zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS))
    errors = table.column("error").to_pylist()
    prints = table.column("fingerprint").to_pylist()
    best: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        prev = best.get(key)
        if prev is not None and errors[i] and not errors[prev] and prints[i] == prints[prev]:
            continue
        best[key] = i
    table = table.take(pa.array(sorted(best.values()), type=pa.int64()))
    return table if columns is None else table.select(list(dict.fromkeys(columns)))


def done_keys(run_dir, include_failed: bool = True) -> dict[tuple[str, str, str], str | None]:
    """{key: fingerprint} of the rows already generated (as `read_generations` resolves them);
    with `include_failed=False` failed rows do not count as done."""
    table = read_generations(run_dir, columns=[*KEY_COLUMNS, "error", "fingerprint"])
    keys = zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS))
    rows = zip(keys, table.column("error").to_pylist(), table.column("fingerprint").to_pylist())
    return {k: fp for k, e, fp in rows if include_failed or not e}
