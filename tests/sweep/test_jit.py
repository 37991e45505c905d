"""Just-in-time synthesis: waves bound the adapters on disk, and the sweep's rows are the same as
with every adapter synthesized up front."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from lorabatch.layout import RunLayout
from lorabatch.sweep.jit import Wave, pending_tasks_by_setting, plan_waves


def test_waves_cover_every_pending_pair_once_within_the_size():
    pending = {
        "JS-normalized": ["t1", "t2", "t3"],
        "KL-normalized": ["t1", "t2", "t3"],
        "WD-neural": ["t2"],
        "MMD-neural": [],
        "JS-neural": [f"t{i}" for i in range(1, 8)],
    }
    waves = plan_waves(pending, wave_size=6)
    assert all(len(w) <= 6 for w in waves)
    covered = [(s, t) for w in waves for s in w.settings for t in w.tasks]
    wanted = [(s, t) for s, tasks in pending.items() for t in tasks]
    assert sorted(covered) == sorted(wanted)  # each pending pair exactly once, nothing else
    assert Wave(("JS-normalized", "KL-normalized"), ("t1", "t2", "t3")) in waves  # same tasks: grouped
    assert [w.tasks for w in waves if w.settings == ("JS-neural",)] == [tuple(f"t{i}" for i in range(1, 7)), ("t7",)]


def test_pending_tasks_leave_out_base_and_oracle():
    table = pa.table(
        {
            "setting": ["base", "oracle", "JS-normalized", "JS-normalized", "JS-normalized"],
            "task_id": ["t1", "t1", "t2", "t1", "t2"],
        }
    )
    assert pending_tasks_by_setting(table) == {"JS-normalized": ["t2", "t1"]}


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    from tests.helpers.synthetic_bank import build_tiny_bank

    return build_tiny_bank(tmp_path_factory.mktemp("jit") / "bank", n_tasks=4, rank=8, rows=10)


def _config(bank, run_dir, jit: bool, temperature: float = 0.05):
    from lorabatch.config import parse_config

    return parse_config(
        {
            "run_dir": str(run_dir),
            "seed": 0,
            "ray": {"num_cpus": 2},
            "bank": bank.bank_config(validate_weights=False),
            "distances": {"metrics": ["JS", "WD"]},
            "synthesis": {
                "models": ["normalized"],
                "executor": "local",
                "chunk_size": 1024,
                "jit": jit,
                "jit_wave": 4,
                "temperature": temperature,
                "controls": [],
            },
            "fewshot": {"methods": [], "controls": []},
            "generation": {"backend": "hf", "examples_per_task": 2, "max_new_tokens": 4, "batch_size": 4},
        }
    )


def _predictions(run_dir) -> dict:
    from lorabatch.generation.store import read_generations

    t = read_generations(run_dir, columns=["task_id", "setting", "example_id", "prediction", "error"])
    assert all(e is None for e in t.column("error").to_pylist())
    keys = zip(*(t.column(c).to_pylist() for c in ("task_id", "setting", "example_id")))
    return dict(zip(keys, t.column("prediction").to_pylist()))


def test_jit_sweep_equals_up_front_sweep_and_leaves_no_adapters(tiny_bank, tmp_path):
    import shutil

    import ray

    from lorabatch.generation.store import generation_files
    from lorabatch.sweep.run import run_sweep

    def rows_written_since(files):
        import pyarrow.parquet as pq

        new = [f for f in generation_files(tmp_path / "jit") if f not in files]
        return sorted(s for f in new for s in pq.read_table(f, columns=["setting"]).column("setting").to_pylist())

    synthesized = sorted(["JS-normalized"] * 8 + ["WD-normalized"] * 8)
    try:
        run_sweep(_config(tiny_bank, tmp_path / "upfront", jit=False), progress=False)
        run_sweep(_config(tiny_bank, tmp_path / "jit", jit=True), progress=False)
        files = generation_files(tmp_path / "jit")
        run_sweep(_config(tiny_bank, tmp_path / "jit", jit=True), progress=False)
        assert rows_written_since(files) == []  # nothing changed: nothing regenerated
        # Another temperature gives other coefficients, so other adapters: exactly their rows are redone.
        run_sweep(_config(tiny_bank, tmp_path / "jit", jit=True, temperature=50.0), progress=False)
        assert rows_written_since(files) == synthesized
        hot = _predictions(tmp_path / "jit")
        files = generation_files(tmp_path / "jit")
        run_sweep(_config(tiny_bank, tmp_path / "jit", jit=True), progress=False)  # and back
        assert rows_written_since(files) == synthesized
        # A sweep killed mid-wave leaves the adapters of pairs the wave had finished: the next
        # run, which has nothing left to generate for them, removes them.
        leftover = RunLayout(tmp_path / "jit").adapter("JS-normalized", "task1")
        shutil.copytree(RunLayout(tmp_path / "upfront").adapter("JS-normalized", "task1"), leftover)
        files = generation_files(tmp_path / "jit")
        run_sweep(_config(tiny_bank, tmp_path / "jit", jit=True), progress=False)
        assert rows_written_since(files) == [] and not leftover.exists()
    finally:
        ray.shutdown()
    upfront, jit = _predictions(tmp_path / "upfront"), _predictions(tmp_path / "jit")
    assert len(jit) == 4 * 2 * 4  # 4 tasks × 2 examples × (base, oracle, JS-normalized, WD-normalized)
    assert jit == upfront
    # The synthesized settings really used their own adapters: they differ from base somewhere.
    for setting in ("JS-normalized", "WD-normalized"):
        assert any(jit[(t, setting, e)] != jit[(t, "base", e)] for (t, s, e) in jit if s == setting)
    # 8 adapters in 2 waves of 4, each deleted after its wave; up front they all stay.
    assert not any(RunLayout(tmp_path / "jit").adapters.rglob("adapter_config.json"))
    assert len(list(RunLayout(tmp_path / "upfront").adapters.rglob("adapter_config.json"))) == 8
    plan = json.loads(RunLayout(tmp_path / "jit").generation_plan.read_text())
    assert plan == json.loads(RunLayout(tmp_path / "upfront").generation_plan.read_text())
    assert plan["rows_per_setting"] == {s: 8 for s in ("base", "oracle", "JS-normalized", "WD-normalized")}
    assert any(hot[k] != jit[k] for k in jit if k[1] not in ("base", "oracle"))  # the redone rows really changed
