"""A word-level tokenizer (BOS added like Mistral's) and small datasets in the Lots-of-LoRAs layout."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from lorabatch.bank.datasets import dataset_content_hash, write_split

ROWS = {
    "task1": [("red cat run", "yes"), ("blue dog jump", "no"), ("red red bird", "yes")],
    "task2": [("one two three", "four"), ("apple pear", "plum"), ("hot cold", "up")],
    "task3": [("red cat run", "yes"), ("blue dog jump", "no"), ("red red bird", "yes")],  # = task1
}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from tests.helpers.synthetic_bank import build_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return out


def write_dataset(root: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    data = [{"input": x, "output": [y, "other"], "id": f"ex-{k}"} for k, (x, y) in enumerate(rows)]
    write_split(root / name, "train", data)
    write_split(root / name, "test", data[:1])
    return root / name


def manifest_for(dirs: dict[str, Path], base: Path):
    return pa.table(
        {
            "task_id": list(dirs),
            "dataset_path": [str(d) for d in dirs.values()],
            "dataset_sha256": [dataset_content_hash(d) for d in dirs.values()],
            "base_model_path": [str(base)] * len(dirs),
        }
    )


@pytest.fixture
def make_bank(tmp_path, tokenizer_dir):
    """make_bank({task: rows}) -> manifest table (datasets under tmp_path/data)."""

    def make(rows_by_task: dict) -> pa.Table:
        dirs = {t: write_dataset(tmp_path / "data", t, rows) for t, rows in rows_by_task.items()}
        return manifest_for(dirs, tokenizer_dir)

    return make


@pytest.fixture
def bank(tmp_path, tokenizer_dir):
    dirs = {t: write_dataset(tmp_path / "data", t, rows) for t, rows in ROWS.items()}
    return manifest_for(dirs, tokenizer_dir), tmp_path / "run"
