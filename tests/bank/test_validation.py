"""Every validation failure names the task and the problem, and all are reported at once."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file, save_file

from lorabatch.bank.config import BankConfig
from lorabatch.bank.datasets import split_files
from lorabatch.bank.manifest import build_manifest, inspect_bank
from lorabatch.config import parse_config
from lorabatch.errors import BankValidationError
from lorabatch.layout import RunLayout
from tests.helpers.synthetic_bank import build_tiny_bank


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_tiny_bank(tmp_path_factory.mktemp("pristine"), n_tasks=4)


@pytest.fixture
def bank(pristine, tmp_path):
    shutil.copytree(pristine.root, tmp_path / "bank")
    return pristine.__class__(**{**pristine.__dict__, "root": tmp_path / "bank"})


def adapter_dir(bank, n):
    return bank.root / bank.adapter_repo.format(number=n)


def dataset_dir(bank, n):
    return bank.root / f"{bank.org}/task{n}_tiny_{n}"


def problems_of(bank, **overrides):
    with pytest.raises(BankValidationError) as info:
        inspect_bank(BankConfig(**bank.bank_config(**overrides)), progress=False)
    return info.value.problems, str(info.value)


def test_clean_bank_validates_and_manifest_reloads(bank, tmp_path):
    config = parse_config({"run_dir": str(tmp_path / "run"), "bank": bank.bank_config()})
    table = build_manifest(config, progress=False)
    again = pq.read_table(RunLayout(tmp_path / "run").manifest)
    assert again.column("task_id").to_pylist() == ["task1", "task2", "task3", "task4"]
    assert again.column("rank").to_pylist() == [8] * 4
    assert again.column("target_modules").to_pylist()[0] == ["k_proj", "q_proj", "v_proj"]
    assert again.column("n_train").to_pylist() == [8] * 4
    assert len(set(again.column("adapter_sha256").to_pylist())) == 4
    assert table.schema.metadata[b"lorabatch.manifest_hash"] == again.schema.metadata[b"lorabatch.manifest_hash"]
    assert RunLayout(tmp_path / "run").config.is_file()


def test_wrong_base_model(bank):
    cfg_file = adapter_dir(bank, 2) / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = "someone/other-model"
    cfg_file.write_text(json.dumps(cfg))
    problems, text = problems_of(bank)
    assert problems == [("task2", problems[0][1])]
    assert "someone/other-model" in text and "tiny-org/tiny-base" in text and "task2" in text


def test_rank_mismatch(bank):
    path = adapter_dir(bank, 3) / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors = {k: (v[:4] if ".lora_A." in k else v[:, :4]) for k, v in tensors.items()}
    save_file(tensors, path)
    cfg_file = adapter_dir(bank, 3) / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["r"] = 4
    cfg_file.write_text(json.dumps(cfg))
    problems, text = problems_of(bank)
    tasks = {t for t, _ in problems}
    assert tasks == {"task3"}
    assert "rank r: 4 differs from 8" in text


def test_nan_weights(bank):
    path = adapter_dir(bank, 1) / "adapter_model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] = np.nan
    save_file(tensors, path)
    problems, text = problems_of(bank)
    assert problems == [("task1", f"adapter: tensor {name} has non-finite values (NaN or inf)")]


def test_bf16_adapters_validate_and_their_nan_is_caught(bank):
    """Published adapters are mostly stored in bfloat16, which numpy cannot hold."""
    import torch
    from safetensors.torch import load_file as load_pt
    from safetensors.torch import save_file as save_pt

    for n in range(1, 5):
        path = adapter_dir(bank, n) / "adapter_model.safetensors"
        save_pt({k: v.to(torch.bfloat16) for k, v in load_pt(path).items()}, path)
    inspect_bank(BankConfig(**bank.bank_config()), progress=False)  # no problem raised
    path = adapter_dir(bank, 2) / "adapter_model.safetensors"
    tensors = load_pt(path)
    name = sorted(tensors)[-1]
    tensors[name][0, 0] = float("inf")
    save_pt(tensors, path)
    problems, _ = problems_of(bank)
    assert problems == [("task2", f"adapter: tensor {name} has non-finite values (NaN or inf)")]


def test_missing_column(bank):
    f = split_files(dataset_dir(bank, 4), "train")[0]
    pq.write_table(pq.read_table(f).drop_columns(["output"]), f)
    problems, text = problems_of(bank)
    assert [t for t, _ in problems] == ["task4"]
    assert "lacks column(s) ['output']" in text and "train" in text


def test_empty_split(bank):
    f = split_files(dataset_dir(bank, 2), "test")[0]
    pq.write_table(pq.read_table(f).slice(0, 0), f)
    problems, text = problems_of(bank)
    assert problems == [("task2", "dataset: the 'test' split is empty")]


def test_missing_files(bank):
    (adapter_dir(bank, 1) / "adapter_model.safetensors").unlink()
    for f in split_files(dataset_dir(bank, 3), "train"):
        f.unlink()
    problems, text = problems_of(bank)
    assert [t for t, _ in problems] == ["task1", "task3"]
    assert "missing file adapter_model.safetensors" in problems[0][1]
    assert "no 'train' split" in problems[1][1]


def test_adapter_from_another_base_model_is_caught_by_shapes(bank):
    """Same rank and names as the rest, but shapes of a wider model: all tasks agree with each
    other except the odd one, and the base model's config exposes the mismatch."""
    for n in bank.task_numbers:
        path = adapter_dir(bank, n) / "adapter_model.safetensors"
        tensors = load_file(path)
        save_file(
            {k: (np.zeros((v.shape[0], 128), v.dtype) if ".lora_A." in k else v) for k, v in tensors.items()}, path
        )
    problems, text = problems_of(bank)
    assert [t for t, _ in problems] == ["task1", "task2", "task3", "task4"]
    assert "needs [8, 64]" in text and "another base model" in text


def test_every_problem_reported_at_once(bank):
    (adapter_dir(bank, 1) / "adapter_config.json").unlink()
    f = split_files(dataset_dir(bank, 4), "test")[0]
    pq.write_table(pq.read_table(f).slice(0, 0), f)
    problems, _ = problems_of(bank)
    assert {t for t, _ in problems} == {"task1", "task4"}


def test_missing_task_listed_explicitly(bank):
    problems, text = problems_of(bank, tasks=["task1", "task9"])
    assert problems[0][0] == "task9" and "tiny-org/task9_*" in problems[0][1]


def test_output_column_must_be_a_list(bank):
    f = split_files(dataset_dir(bank, 2), "train")[0]
    t = pq.read_table(f)
    t = t.set_column(
        t.schema.get_field_index("output"), "output", pa.array([x[0] for x in t.column("output").to_pylist()])
    )
    pq.write_table(t, f)
    problems, text = problems_of(bank)
    assert problems[0][0] == "task2" and "expected a list of strings" in text


def test_duplicate_example_ids_are_named_per_task_and_split(bank, tmp_path):
    """`lorabatch bank manifest` refuses a split whose ids repeat (within a shard or across
    shards), naming task, split, id and count; a split whose ids are unique is not reported."""
    import yaml
    from typer.testing import CliRunner

    from lorabatch.cli import app

    f = split_files(dataset_dir(bank, 2), "test")[0]
    t = pq.read_table(f)
    ids = t.column("id").to_pylist()
    t = t.set_column(t.schema.get_field_index("id"), "id", pa.array([ids[0]] * len(ids)))
    pq.write_table(t, f)
    train = split_files(dataset_dir(bank, 3), "train")[0]
    rows = pq.read_table(train)
    pq.write_table(rows.slice(0, 2), train.with_name("train-00000-of-00002.parquet"))
    pq.write_table(rows.slice(1), train.with_name("train-00001-of-00002.parquet"))  # row 1 in both shards
    train.unlink()

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "bank": bank.bank_config()}))
    res = CliRunner().invoke(app, ["bank", "manifest", str(config)])
    assert isinstance(res.exception, BankValidationError)
    assert res.exception.problems == [
        ("task2", f"dataset: the 'test' split has duplicate example ids: {ids[0]!r} ({len(ids)} times)"),
        ("task3", f"dataset: the 'train' split has duplicate example ids: {rows.column('id')[1].as_py()!r} (2 times)"),
    ]
    assert not RunLayout(tmp_path / "run").manifest.exists()
