"""`lorabatch score RUN` runs where the run ran: its recorded `ray` section decides the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import lorabatch.config as config_module
from lorabatch.cli.main import app
from lorabatch.config import load_config

REPO = Path(__file__).resolve().parents[2]


class _Joined(Exception):
    """Raised by the stand-in `ensure_ray`: what it was asked is all this test needs."""


@pytest.mark.parametrize("executor, joins", [("ray", True), ("local", False)])
def test_score_joins_the_cluster_the_run_config_names(tmp_path, monkeypatch, executor, joins):
    run = tmp_path / "run"
    overrides = {"run_dir": str(run), "ray.address": "127.0.0.1:6553", "scoring.executor": executor}
    load_config(REPO / "configs" / "demo.yaml", overrides).record()
    asked = []

    def fake_ensure_ray(address, num_cpus=None, **kwargs):
        asked.append((address, kwargs.get("fault_tolerance")))
        raise _Joined

    monkeypatch.setattr(config_module, "ensure_ray", fake_ensure_ray)
    result = CliRunner().invoke(app, ["score", str(run)])
    if joins:
        assert isinstance(result.exception, _Joined), result.output
        assert asked[0][0] == "127.0.0.1:6553" and asked[0][1]["task_retries"] >= 1
    else:
        assert asked == [] and "run `lorabatch generate` first" in str(result.exception)
