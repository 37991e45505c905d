"""Reading a task's dataset in the Lots-of-LoRAs layout: `<dir>/data/<split>-*.parquet`.

Schema of every split: `input` (string), `output` (list of strings: the references), `id` (string).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lorabatch.atomic import write_parquet
from lorabatch.errors import DatasetError

SPLITS = ("train", "valid", "test")
REQUIRED_COLUMNS = ("input", "output", "id")


def split_files(dataset_dir: str | Path, split: str) -> list[Path]:
    """The Parquet shards of one split, sorted (`data/<split>-00000-of-00002.parquet`, ...)."""
    data = Path(dataset_dir) / "data"
    return sorted(data.glob(f"{split}-*.parquet"))


def read_split(dataset_dir: str | Path, split: str, columns: list[str] | None = None):
    """One split as a pyarrow Table; raises `DatasetError` naming the directory if absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = split_files(dataset_dir, split)
    if not files:
        raise DatasetError(f"{dataset_dir}: no '{split}' split (expected data/{split}-*.parquet)")
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def sample_examples(dataset_dir: str | Path, split: str, k: int, seed: int, task_id: str) -> list[dict]:
    """A seeded sample of k rows of `split` with a non-empty output, in file order: the few-shot
    examples of a task (its `select`/`refine` criterion and its `icl` prompt). The draw depends on
    `seed` and `task_id` only. Raises `DatasetError` for the test split or a split without outputs."""
    import zlib

    import numpy as np

    if split == "test":
        raise DatasetError("few-shot examples never come from the test split")
    rows = [r for r in read_split(dataset_dir, split, columns=["input", "output", "id"]).to_pylist() if r["output"]]
    if not rows:
        raise DatasetError(f"{dataset_dir}: the {split} split has no example with an output")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(task_id.encode())])
    picked = np.sort(rng.choice(len(rows), size=min(k, len(rows)), replace=False))
    return [rows[int(i)] for i in picked]


def dataset_content_hash(dataset_dir: str | Path) -> str:
    """sha256 over every split file's name and bytes: the cache key of features of this dataset."""
    h = hashlib.sha256()
    for split in SPLITS:
        for f in split_files(dataset_dir, split):
            h.update(f.name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes.

    A file in the Hugging Face cache is a link to `blobs/<sha256>` for large (LFS) files: that
    name is the hash already, so a 502-adapter bank is not read twice just to be hashed.
    """
    path = Path(path)
    if path.is_symlink():
        target = path.resolve()
        if (
            target.parent.name == "blobs"
            and len(target.name) == 64
            and all(c in "0123456789abcdef" for c in target.name)
        ):
            return target.name
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_split(dataset_dir: str | Path, split: str, rows: list[dict]) -> Path:
    """Write one split as a single shard, atomically (used by the demo builder and tests)."""
    import pyarrow as pa

    schema = pa.schema([("input", pa.string()), ("output", pa.list_(pa.string())), ("id", pa.string())])
    table = pa.Table.from_pylist(
        [{"input": r["input"], "output": list(r["output"]), "id": str(r["id"])} for r in rows],
        schema=schema,
    )
    target = Path(dataset_dir) / "data" / f"{split}-00000-of-00001.parquet"
    write_parquet(target, table)
    return target
