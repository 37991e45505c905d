"""Two Ray Train workers (DDP over gloo) train the same adapter as one, and it beats the base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lorabatch.training.config import TrainingConfig

HYPER = {"steps": 40, "batch_size": 8, "lr": 2e-2, "checkpoint_every": 20, "report_every": 5, "threads_per_worker": 1}


def test_two_workers_match_one_and_beat_base(fresh_run, tmp_path, local_ray, rouge_own_vs_base):
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.training.checkpoint import ADAPTER_WEIGHTS
    from lorabatch.workflows.train import train_adapter

    run_one, data, test_rows = fresh_run("run-one")
    run, _, _ = fresh_run("run-two")
    one = train_adapter(run_one, data, tmp_path / "one", config=TrainingConfig(workers=1, **HYPER), seed=3)
    two = train_adapter(run, data, tmp_path / "two", config=TrainingConfig(workers=2, **HYPER), seed=3)
    assert one.result.starts == two.result.starts == [0]

    a, b = np.array(one.result.losses), np.array(two.result.losses)
    assert len(a) == len(b) == HYPER["steps"]
    assert a[-5:].mean() < 0.1 * a[:5].mean()  # it learned
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)

    base_dir = Path(load_manifest(run).column("base_model_path")[0].as_py())
    own, base = rouge_own_vs_base(tmp_path / "two", base_dir, test_rows)
    assert own > base + 0.3, (own, base)

    out = tmp_path / "two"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", ADAPTER_WEIGHTS, "provenance.json"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["setting"] == "train" and prov["training"]["workers"] == 2 and prov["training"]["starts"] == [0]
    assert prov["query"]["n_examples"] == 64
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == "tiny-org/tiny-base"
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"]


def test_config_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="batch_size"):
        TrainingConfig(workers=4, batch_size=2)
    with pytest.raises(ValidationError, match="lora_a_lr_factor"):
        TrainingConfig(lora_a_lr_factor=0)
    assert TrainingConfig(steps=60).warmup_steps() == 6
