"""Shared test setup: no test may reach a model hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_demo_bank(tmp_path_factory):
    """The embedded demo bank, size 'small' (seed 0), built once per test session; its root path."""
    from lorabatch.bank.demo.build import build_demo_bank

    return build_demo_bank(tmp_path_factory.mktemp("demo") / "bank", size="small", seed=0, progress=False)
