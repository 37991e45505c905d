"""A user's dataset and where a command may write its adapter: what `predict`, `train` and `bank
extend` share.

A dataset is a JSONL / CSV / Parquet file or a dataset directory with `input` and `output`
columns; it is read into one pyarrow Table (`input` str, `output` list[str], `id` str) and named by
`rows_hash`, the sha256 of its (input, output) pairs, which keys the adapters made from it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path

import yaml

from lorabatch.bank.datasets import read_split, split_files
from lorabatch.errors import DatasetError
from lorabatch.layout import RunLayout
from lorabatch.synthesis.stage import SynthesisError
from lorabatch.synthesis.writer import not_replaceable

REQUIRED = ("input", "output")
NEWLINE = b"\n"
OPTIONAL = ("id",)


def read_user_dataset(path: str | Path):
    """The user's examples as a pyarrow Table with `input` (str), `output` (list[str]), `id` (str).

    Accepts .jsonl / .json (one object per line), .csv, .parquet, or a directory: the Lots-of-LoRAs
    layout (data/train-*.parquet) or a `datasets.save_to_disk` directory (its train split if split).
    Raises `DatasetError` for a missing, unreadable or empty file, or missing required columns.
    """
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    table = _read_any(path)
    names = table.column_names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        unknown = [c for c in names if c not in REQUIRED + OPTIONAL]
        raise DatasetError(
            f"{path}: missing column(s) {missing}; the file has {names} (unknown: {unknown}). "
            "Expected 'input' (prompt text) and 'output' (reference text or list of texts), optionally 'id'."
        )
    if table.num_rows == 0:
        raise DatasetError(f"{path}: the dataset has no rows")
    inputs = table.column("input").to_pylist()
    outputs = [o if isinstance(o, list) else [o] for o in table.column("output").to_pylist()]
    bad = [
        i
        for i, (x, o) in enumerate(zip(inputs, outputs))
        if not isinstance(x, str) or not o or not all(isinstance(s, str) for s in o)
    ]
    if bad:
        raise DatasetError(
            f"{path}: row {bad[0]} (and {len(bad) - 1} more) lacks a text 'input' or a non-empty text 'output'"
        )
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in names else [str(i) for i in range(len(inputs))]
    out = pa.table(
        {
            "input": pa.array(inputs, pa.string()),
            "output": pa.array(outputs, pa.list_(pa.string())),
            "id": pa.array(ids, pa.string()),
        }
    )
    return out.replace_schema_metadata(
        {"lorabatch.ignored_columns": json.dumps([c for c in names if c not in REQUIRED + OPTIONAL])}
    )


def _read_any(path: Path):
    import pyarrow as pa

    try:
        if path.is_dir():
            return _read_dir(path)
        suffix = path.suffix.lower()
        if path.stat().st_size == 0:
            raise DatasetError(f"{path}: the file is empty")
        if suffix in (".jsonl", ".json"):
            _check_utf8(path)
            return _read_jsonl(path)
        if suffix == ".csv":
            import pyarrow.csv as pc

            _check_utf8(path)
            return pc.read_csv(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
    except DatasetError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read it ({str(err).splitlines()[0]})") from None
    raise DatasetError(f"{path}: unsupported format {path.suffix!r}; use .jsonl, .csv, .parquet or a dataset directory")


def _check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """`DatasetError` naming the line and byte if a text file is not UTF-8 (pyarrow would read
    its columns as binary and the rows would look empty, or the header as unknown columns)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            data = decoder.getstate()[0] + block  # a character cut by the previous block, then this one
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                where = f"byte 0x{data[err.start]:02x}" if err.start < len(data) else "a cut multi-byte character"
                line += data[: err.start].count(NEWLINE)
                raise DatasetError(
                    f"{path}: not UTF-8 text ({where} on line {line}); "
                    "save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            if not block:
                return
            line += block.count(NEWLINE)


def _read_jsonl(path: Path):
    """One JSON object per line; `output` may be a string or a list of strings from row to row."""
    import pyarrow as pa

    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: line {n} is not JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path}: line {n} is not a JSON object")
            if isinstance(rec.get("output"), str):
                rec["output"] = [rec["output"]]
            records.append(rec)
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    return pa.table(columns) if columns else pa.table({})


def _read_dir(path: Path):
    if split_files(path, "train"):
        return read_split(path, "train")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DatasetError(f"{path}: a dataset dict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
        return ds.data.table if hasattr(ds.data, "table") else ds.with_format("arrow")[:]
    raise DatasetError(f"{path}: a directory without data/train-*.parquet nor a saved Hugging Face dataset")


def check_out_dir(out: Path) -> None:
    """OUT must be new, empty, or exactly a previous lorabatch adapter: it is replaced whole."""
    reason = not_replaceable(out)
    if reason:
        raise SynthesisError(f"{out} exists and {reason}: refusing to replace it; choose a new or empty directory")


def check_out_outside_bank(out: Path, bank_run: Path, manifest) -> None:
    """OUT must not lie inside the bank: its run directory, its root, an adapter, dataset or base model."""
    roots = {bank_run}
    for column in ("adapter_path", "dataset_path", "base_model_path"):
        if column in manifest.column_names:
            roots.update(Path(p) for p in manifest.column(column).to_pylist() if p)
    bank_root = _bank_root(bank_run)
    if bank_root is not None:
        roots.add(bank_root)
    target = out.expanduser().resolve()
    for root in sorted(roots):
        root = root.expanduser().resolve()
        if target == root or root in target.parents:
            raise SynthesisError(
                f"--out {out} lies inside the bank ({root}): write the adapter outside the bank's directories"
            )


def _bank_root(bank_run: Path) -> Path | None:
    """`bank.root` of the run's config (local banks), if the run has one."""
    try:
        bank = (yaml.safe_load(RunLayout(bank_run).config.read_text()) or {}).get("bank") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    root = bank.get("root") if isinstance(bank, dict) else None
    return Path(root) if root else None


def rows_hash(pairs) -> str:
    """sha256 over the (input, output) pairs, in order: the name of a dataset's content."""
    h = hashlib.sha256()
    for x, o in pairs:
        h.update(json.dumps([x, o]).encode())
    return h.hexdigest()


def dataset_hash(table) -> str:
    """`rows_hash` of a user dataset read by `read_user_dataset`."""
    return rows_hash(zip(table.column("input").to_pylist(), table.column("output").to_pylist()))


def ignored_columns(table) -> list[str]:
    """Columns of the user's file that `read_user_dataset` left out."""
    return json.loads(table.schema.metadata[b"lorabatch.ignored_columns"])
