"""`lorabatch status` counts each (task, setting, example) of the current plan once (a retried
success wins), and does not call a bank done that changed since it was validated."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lorabatch.generation.schema import conform, generation_schema
from lorabatch.layout import RunLayout
from lorabatch.sweep.stages import content_key, mark_done
from lorabatch.sweep.status import status_lines


def _part(path, rows):
    pq.write_table(conform(pa.Table.from_pylist(rows), generation_schema()), path)


def test_counts_and_stage_states(tmp_path):
    gen = RunLayout(tmp_path).generations
    gen.mkdir()
    row = {"task_id": "task1", "setting": "base", "prompt": "p", "references": ["r"], "backend": "hf"}
    _part(
        gen / "part-a.parquet",
        [
            {**row, "example_id": "1", "prediction": None, "error": "boom"},
            {**row, "example_id": "2", "prediction": None, "error": "boom"},
        ],
    )
    _part(gen / "part-b.parquet", [{**row, "example_id": "1", "prediction": "r", "error": None}])
    (gen / "plan.json").write_text(json.dumps({"rows_per_setting": {"base": 3, "oracle": 2}}))
    mark_done(tmp_path, "bank", content_key("x"), 0.0)
    lines = status_lines(tmp_path)
    assert any(l.startswith("bank") and "done" in l for l in lines)
    assert any(l.startswith("generation") and "pending" in l for l in lines)
    base = next(l for l in lines if l.startswith("base "))
    assert base.split() == ["base", "1", "1", "1", "3"]
    oracle = next(l for l in lines if l.startswith("oracle "))
    assert oracle.split() == ["oracle", "0", "0", "2", "2"]


def test_counts_only_rows_of_the_current_plan(tmp_path):
    from lorabatch.generation.stage import write_plan_file

    gen = RunLayout(tmp_path).generations
    gen.mkdir()
    row = {"task_id": "task1", "prompt": "p", "references": ["r"], "backend": "hf", "prediction": "r", "error": None}
    # An earlier config: 3 base examples and a setting the current config no longer has.
    earlier = [{**row, "setting": "base", "example_id": str(i), "fingerprint": "fa"} for i in (1, 2, 3)]
    earlier += [{**row, "setting": "JS-attentional", "example_id": str(i), "fingerprint": "fa"} for i in (1, 2)]
    _part(gen / "part-a.parquet", earlier)
    # The current plan: base examples 1 and 2 (2 with another adapter or decoding now) and oracle 1.
    plan = pa.table(
        {
            "task_id": ["task1"] * 3,
            "setting": ["base", "base", "oracle"],
            "example_id": ["1", "2", "1"],
            "fingerprint": ["fa", "fb", "fa"],
        }
    )
    write_plan_file(tmp_path, plan)
    lines = status_lines(tmp_path)
    assert next(l for l in lines if l.startswith("base ")).split() == ["base", "1", "0", "1", "2"]
    assert next(l for l in lines if l.startswith("oracle ")).split() == ["oracle", "0", "0", "1", "1"]
    assert not any(l.startswith("JS-attentional") for l in lines)
    assert "4 generated row(s) of earlier plans are kept on disk and not counted above" in lines


def test_a_bank_failing_validation_keeps_the_recorded_config_and_shows_stale(sweep_bank, tmp_path):
    import shutil

    import yaml

    from lorabatch.config import parse_config
    from lorabatch.errors import LorabatchError
    from lorabatch.sweep.run import stage_bank

    bank = sweep_bank.__class__(**{**sweep_bank.__dict__, "root": tmp_path / "bank"})
    shutil.copytree(sweep_bank.root, bank.root)
    run = tmp_path / "run"
    first = parse_config({"run_dir": str(run), "seed": 0, "bank": bank.bank_config()})
    stage_bank(first, progress=False)
    assert yaml.safe_load(RunLayout(run).config.read_text())["seed"] == 0
    assert next(l for l in status_lines(run) if l.startswith("bank")).split()[1] == "done"

    adapter = bank.root / bank.adapter_repo.format(number=bank.task_numbers[1]) / "adapter_config.json"
    adapter.write_text(adapter.read_text().replace('"r": 8', '"r": 4'))  # now disagrees with its weights
    second = parse_config({"run_dir": str(run), "seed": 1, "bank": bank.bank_config()})
    with pytest.raises(LorabatchError):
        stage_bank(second, progress=False)
    # The recorded config is still the one the results on disk came from ...
    assert yaml.safe_load(RunLayout(run).config.read_text())["seed"] == 0
    # ... and status no longer calls the bank stage done.
    lines = status_lines(run)
    assert next(l for l in lines if l.startswith("bank")).split()[1] == "stale"
    assert any("its files changed since it was validated" in l for l in lines)


def test_nodes_lost_are_recorded_and_reported(tmp_path):
    from lorabatch.sweep.run import record_faults

    record_faults(tmp_path, [{"node_id": "a" * 56, "address": "10.0.0.2", "stage": "generation", "at": 1.0}])
    record_faults(tmp_path, [{"node_id": "b" * 56, "address": "10.0.0.3", "stage": "fewshot", "at": 2.0}], retries=3)
    assert [e["node_id"][0] for e in json.loads(RunLayout(tmp_path).faults.read_text())["nodes_lost"]] == ["a", "b"]
    assert "nodes lost while the sweep ran: 2 (during fewshot, generation); tasks retried: 3" in status_lines(tmp_path)
