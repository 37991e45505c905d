"""The sweep's bank stage reuses its manifest only while the bank's files are unchanged."""

import logging
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lorabatch.config import parse_config
from lorabatch.errors import BankValidationError
from lorabatch.sweep.run import stage_bank
from tests.helpers.synthetic_bank import build_tiny_bank


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_tiny_bank(tmp_path_factory.mktemp("pristine"), n_tasks=3)


@pytest.fixture
def bank(pristine, tmp_path):
    shutil.copytree(pristine.root, tmp_path / "bank")
    return pristine.__class__(**{**pristine.__dict__, "root": tmp_path / "bank"})


def _config(bank, run_dir):
    return parse_config({"run_dir": str(run_dir), "bank": bank.bank_config()})


def test_changed_adapter_is_validated_again(bank, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lorabatch")
    config = _config(bank, tmp_path / "run")
    assert stage_bank(config, progress=False).num_rows == 3
    assert stage_bank(config, progress=False).num_rows == 3
    assert "(cached manifest)" in caplog.text
    caplog.clear()

    weights = bank.root / bank.adapter_repo.format(number=2) / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: np.full_like(v, np.nan) for k, v in tensors.items()}, str(weights))
    with pytest.raises(BankValidationError, match="task2: adapter: tensor .* non-finite"):
        stage_bank(config, progress=False)
    assert "(cached manifest)" not in caplog.text


def test_changed_dataset_or_new_task_rebuilds_the_manifest(bank, tmp_path, caplog):
    from lorabatch.bank.datasets import read_split, write_split

    caplog.set_level(logging.INFO, logger="lorabatch")
    config = _config(bank, tmp_path / "run")
    stage_bank(config, progress=False)
    ds = bank.root / f"{bank.org}/task1_tiny_1"
    write_split(ds, "train", read_split(ds, "train").to_pylist()[:3])
    assert stage_bank(config, progress=False).column("n_train").to_pylist()[0] == 3
    assert "3 tasks validated" in caplog.text
    caplog.clear()

    # `tasks: all`: a task added to the bank is part of it on the next run.
    shutil.copytree(bank.root / bank.adapter_repo.format(number=3), bank.root / bank.adapter_repo.format(number=4))
    shutil.copytree(bank.root / f"{bank.org}/task3_tiny_3", bank.root / f"{bank.org}/task4_tiny_4")
    assert stage_bank(config, progress=False).column("task_id").to_pylist() == ["task1", "task2", "task3", "task4"]
    assert "4 tasks validated" in caplog.text
