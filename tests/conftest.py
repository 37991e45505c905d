"""Shared test setup: no test may reach a model hub."""

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


import pytest


@pytest.fixture(scope="session")
def small_demo_bank(tmp_path_factory):
    """The embedded demo bank, size 'small' (seed 0), built once per test session; its root path."""
    from lorabatch.demo.build import build_demo_bank

    # Threads fixed: the bank then does not depend on how busy the machine is (rounding differs
    # between thread counts).
    return build_demo_bank(tmp_path_factory.mktemp("demo") / "bank", size="small", seed=0, progress=False, threads=2)


@pytest.fixture(scope="session")
def small_demo_bank_config(small_demo_bank):
    """The `bank` section of a run config over `small_demo_bank` (its repos as the builder names them)."""
    from lorabatch.demo.build import ADAPTER_REPO, BASE_REPO, DATASET_REPO

    return {
        "source": "local",
        "root": str(small_demo_bank),
        "base_model": BASE_REPO,
        "adapter_repo": ADAPTER_REPO,
        "dataset_repo": DATASET_REPO,
    }


@pytest.fixture(scope="session")
def sweep_bank(tmp_path_factory):
    """A tiny bank for end-to-end sweeps: 4 tasks with random LoRAs, 30 test examples each."""
    from tests.helpers.synthetic_bank import build_tiny_bank

    return build_tiny_bank(tmp_path_factory.mktemp("sweep") / "bank", n_tasks=4, rank=8, rows=40, test_rows=30)


@pytest.fixture(scope="session")
def write_sweep_config(sweep_bank):
    """write(path, run_dir, metrics=..., models=..., **generation) -> path of a sweep config YAML
    over `sweep_bank` (hf backend, few new tokens; generation fields override the defaults).
    Controls and few-shot settings are off unless asked for: these sweeps test the mechanics."""
    import yaml

    def write(
        path,
        run_dir,
        metrics=("JS",),
        models=("attentional", "normalized"),
        features_executor="ray",
        controls=(),
        fewshot=(),
        fewshot_controls=(),
        **generation,
    ):
        config = {
            "run_dir": str(run_dir),
            "seed": 0,
            "bank": sweep_bank.bank_config(),
            "ray": {"num_cpus": 2},
            "features": {"executor": features_executor},
            "distances": {"metrics": list(metrics), "executor": "local"},
            "synthesis": {"models": list(models), "executor": "local", "controls": list(controls)},
            "fewshot": {"methods": list(fewshot), "controls": list(fewshot_controls)},
            "generation": {"backend": "hf", "max_new_tokens": 16, "batch_size": 4, **generation},
            "scoring": {"executor": "local"},
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def interruptible_sweep_config(write_sweep_config):
    """write(path, run_dir) -> a config whose generation runs as 480 one-row blocks (4 tasks × 4
    settings × 30 examples), so that a sweep can be interrupted with some part files written."""

    def write(path, run_dir):
        # rows_per_call: the hf actors take 4 rows per call, so part files are written as rows finish
        return write_sweep_config(
            path, run_dir, features_executor="local", batch_size=1, max_new_tokens=16, hf={"rows_per_call": 4}
        )

    return write


@pytest.fixture(scope="session")
def reference_sweep(interruptible_sweep_config, tmp_path_factory) -> Path:
    """The run directory of one uninterrupted `lorabatch sweep` of `interruptible_sweep_config`."""
    import sys

    from tests.helpers.processes import private_ray_env, run_in_session

    root = tmp_path_factory.mktemp("reference")
    config = interruptible_sweep_config(root / "sweep.yaml", root / "run")
    log = root / "sweep.log"
    env = private_ray_env()
    try:
        rc = run_in_session([sys.executable, "-m", "lorabatch.cli", "sweep", str(config)], env, log, timeout=900)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert rc == 0, log.read_text()[-5000:]
    return root / "run"


@pytest.fixture
def ray_env():
    """An environment for subprocesses whose Ray must be private (own short temp dir, removed
    afterwards; no RAY_ADDRESS), with the model hubs offline."""
    from tests.helpers.processes import private_ray_env

    env = private_ray_env()
    yield env
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
