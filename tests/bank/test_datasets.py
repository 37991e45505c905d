"""Dataset files: round trip, content hash, and the HF-cache blob-name shortcut of the hash."""

import hashlib
import os

import pytest

from lorabatch.bank.datasets import dataset_content_hash, file_sha256, read_split, write_split
from lorabatch.errors import DatasetError


def test_round_trip_and_hash_changes_with_content(tmp_path):
    rows = [{"input": "a b", "output": ["c", "d"], "id": 1}, {"input": "e", "output": ["f"], "id": "2"}]
    write_split(tmp_path, "train", rows)
    table = read_split(tmp_path, "train")
    assert table.to_pylist() == [
        {"input": "a b", "output": ["c", "d"], "id": "1"},
        {"input": "e", "output": ["f"], "id": "2"},
    ]
    before = dataset_content_hash(tmp_path)
    write_split(tmp_path, "train", rows[:1])
    assert dataset_content_hash(tmp_path) != before
    with pytest.raises(DatasetError, match="no 'test' split"):
        read_split(tmp_path, "test")


def test_blob_link_hash_equals_content_hash(tmp_path):
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / digest).write_bytes(data)
    os.symlink(tmp_path / "blobs" / digest, tmp_path / "adapter_model.safetensors")
    (tmp_path / "plain.bin").write_bytes(data)
    assert file_sha256(tmp_path / "adapter_model.safetensors") == digest == file_sha256(tmp_path / "plain.bin")


def test_blob_link_is_not_read(tmp_path):
    """The cache's blob name is trusted: a link into blobs/ is hashed without reading the file."""
    name = "ab" * 32
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / name).write_bytes(b"content whose hash is not the name")
    os.symlink(tmp_path / "blobs" / name, tmp_path / "linked")
    assert file_sha256(tmp_path / "linked") == name
