"""`lorabatch train` refuses bad input with a clear error (exit 2) before any training starts."""

from __future__ import annotations

import subprocess
import sys


def _train(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorabatch.cli", "train", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_not_a_prepared_bank(tmp_path, train_bank):
    _, data, _ = train_bank
    result = _train("--bank", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "is not a prepared bank" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "training").exists()


def test_missing_data_and_out_inside_the_bank(tmp_path, train_bank):
    run, data, _ = train_bank
    result = _train("--bank", str(run), "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "no such file" in result.stderr, result.stderr[-2000:]
    result = _train("--bank", str(run), "--data", str(data), "--out", str(run / "adapter"))
    assert result.returncode == 2 and "lies inside the bank" in result.stderr, result.stderr[-2000:]
    assert not (run / "training").exists()


def test_invalid_flags_name_the_field(tmp_path, train_bank):
    run, data, _ = train_bank
    result = _train(
        "--bank", str(run), "--data", str(data), "--out", str(tmp_path / "out"), "--workers", "4", "--batch-size", "2"
    )
    assert result.returncode == 2 and "batch_size" in result.stderr, result.stderr[-2000:]
