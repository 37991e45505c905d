"""`bank extend`: a bank missing two adapters gets them trained back (loadable PEFT adapters), and
the distances stage then computes only the pairs that involve them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


@pytest.mark.slow
def test_extend_restores_two_adapters_and_computes_only_their_pairs(tmp_path, monkeypatch):
    import ray
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorabatch.bank.manifest import build_manifest, load_manifest
    from lorabatch.config import parse_config
    from lorabatch.distances import matrix
    from lorabatch.features import compute_bank_features
    from lorabatch.workflows.extend import extend_bank, missing_adapters
    from tests.helpers.synthetic_bank import build_tiny_bank

    bank = build_tiny_bank(tmp_path / "bank", n_tasks=4, rank=8, rows=12, test_rows=2)
    for n in (2, 4):
        shutil.rmtree(bank.root / bank.adapter_repo.format(number=n))
    cfg = parse_config(
        {
            "run_dir": str(tmp_path / "run"),
            "bank": bank.bank_config(),
            "ray": {"num_cpus": 2},
            "features": {"executor": "local"},
            "distances": {"metrics": ["JS"], "executor": "local"},
            "training": {
                "steps": 4,
                "batch_size": 4,
                "threads_per_worker": 1,
                "parallel_tasks": 2,
                "checkpoint_every": 4,
            },
        }
    )
    assert [m.task_id for m in missing_adapters(cfg.bank)] == ["task2", "task4"]
    build_manifest(cfg, progress=False)
    compute_bank_features(load_manifest(cfg.run_dir), cfg.run_dir, cfg.features)
    matrix.compute_distances(cfg.run_dir, cfg.distances, progress=False)
    _, d_before = matrix.load_distance_matrix(cfg.run_dir, "JS")

    computed: list[tuple[int, int]] = []
    original = matrix.compute_blocks

    def recording(m, state, blocks, *args, **kwargs):
        computed.extend((int(i), int(j)) for rows, cols in blocks for i in rows for j in cols)
        return original(m, state, blocks, *args, **kwargs)

    monkeypatch.setattr(matrix, "compute_blocks", recording)
    try:
        result = extend_bank(cfg, progress=False)
    finally:
        ray.shutdown()

    assert result.trained == ["task2", "task4"] and result.manifest_tasks == 4 and result.distance_metrics == ["JS"]
    assert missing_adapters(cfg.bank) == []
    base = AutoModelForCausalLM.from_pretrained(bank.root / bank.base_model)
    for path in result.adapter_dirs:
        model = PeftModel.from_pretrained(base, path)
        assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())  # trained, not the init
        assert json.loads((path / "provenance.json").read_text())["setting"] == "train"
        base = model.unload()

    tasks, d = matrix.load_distance_matrix(cfg.run_dir, "JS")
    assert tasks == ["task1", "task2", "task3", "task4"]
    new = {tasks.index("task2"), tasks.index("task4")}
    assert computed and all(i in new or j in new for i, j in computed)  # no old pair again
    assert {(i, j) for i in range(4) for j in range(4) if i in new or j in new} <= computed_pairs(computed)
    old = [tasks.index("task1"), tasks.index("task3")]
    np.testing.assert_array_equal(d[np.ix_(old, old)], d_before)


def computed_pairs(computed: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """Pairs the blocks covered, both orders (a symmetric metric computes one and mirrors it)."""
    return {p for i, j in computed for p in ((i, j), (j, i))}
