"""Mistakes a user can make on the command line end in one clear error (exit 2, no traceback)
before any state changes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorabatch.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "lorabatch.cli", *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def _config(tmp_path, run_dir, **bank):
    path = tmp_path / "run.yaml"
    bank = {"source": "local", "root": str(tmp_path), "base_model": "org/base", **bank}
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "bank": bank}))
    return path


def _assert_clean_error(res, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and res.stderr.startswith("error: ")
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_run_dir_that_is_a_file(tmp_path):
    run = tmp_path / "results.txt"
    run.write_text("my notes")
    config = _config(tmp_path, run)
    for command in ("sweep", "generate", "synthesize", "distances"):
        _assert_clean_error(_cli(command, str(config)), f"run_dir: Value error, '{run}' exists and is not a directory")
    assert run.read_text() == "my notes"


def test_run_dir_under_a_file_or_where_it_cannot_be_created(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    config = _config(tmp_path, tmp_path / "run")
    res = _cli("sweep", str(config), "--run-dir", str(notes / "run"))
    _assert_clean_error(
        res,
        "in command-line flags",
        f"run_dir: Value error, '{notes / 'run'}' cannot be created: '{notes}' is not a directory",
    )
    assert str(config) not in res.stderr  # the file did not say so: the flag did
    # In the config file, the same mistake is the file's.
    _assert_clean_error(
        _cli("sweep", str(_config(tmp_path, notes / "run"))), f"in {tmp_path / 'run.yaml'}", "cannot be created"
    )
    # Under a directory where nothing can be created (procfs refuses even root).
    res = _cli("generate", str(config), "--run-dir", "/proc/lorabatch-run")
    _assert_clean_error(res, "cannot create the run directory /proc/lorabatch-run (No such file or directory)")
    assert notes.read_text() == "my notes"


def test_errors_from_set_are_attributed_to_the_command_line(tmp_path):
    config = _config(tmp_path, tmp_path / "run")
    res = _cli("sweep", str(config), "--set", "bogus.x=1", "--set", "generation.max_new_tokens=-1")
    _assert_clean_error(res, "2 invalid config field(s) in command-line flags:", "bogus: unknown field")
    assert str(config) not in res.stderr
    # One problem in the file and one from a flag: each said where it came from.
    text = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**text, "seed": "zero"}))
    res = _cli("sweep", str(config), "--set", "generation.max_new_tokens=-1")
    _assert_clean_error(res, f"2 invalid config field(s) in {config} and command-line flags:")
    lines = res.stderr.splitlines()
    assert next(l for l in lines if "generation.max_new_tokens" in l).endswith("(from the command line)")
    assert not next(l for l in lines if "seed:" in l).endswith("(from the command line)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field, template, message",
    [
        ("dataset_repo", "org/task{number}_{slug}_{slug}", "must contain '{number}' and '{slug}' once each"),
        ("adapter_repo", "org/a-{number}-{number}", "must contain '{number}' once"),
        ("dataset_repo", "org/task{number}_{name}", "unknown placeholder(s) ['{name}']"),
    ],
)
def test_repeated_or_unknown_placeholder_in_a_repo_template(tmp_path, field, template, message):
    config = _config(tmp_path, tmp_path / "run", **{field: template})
    _assert_clean_error(_cli("bank", "manifest", str(config)), f"bank.{field}", message)
    assert not (tmp_path / "run").exists()


# `lorabatch` in a Python where vllm cannot be imported (sys.modules[name] = None blocks an import).
WITHOUT_VLLM = (
    "import sys; sys.modules['vllm'] = None; sys.argv[0] = 'lorabatch'; from lorabatch.cli import main; main()"
)


def test_vllm_backend_without_vllm_stops_before_ray_and_keeps_the_plan(tmp_path):
    from tests.helpers.processes import private_ray_env

    run = tmp_path / "run"
    RunLayout(run).generations.mkdir(parents=True)
    plan = {"rows_per_setting": {"base": 7}}
    RunLayout(run).generation_plan.write_text(json.dumps(plan))
    config = _config(tmp_path, run)
    env = private_ray_env()
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_VLLM, "generate", str(config), "--backend", "vllm"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    _assert_clean_error(res, "generation backend 'vllm' needs the vllm package", "--backend hf")
    assert len(res.stderr.strip().splitlines()) == 1
    assert json.loads(RunLayout(run).generation_plan.read_text()) == plan
    assert sorted(p.name for p in run.iterdir()) == ["generations"]  # not even the lock
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_VLLM, "sweep", str(config), "--set", "generation.backend=vllm"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    # sweep has no --backend flag: the message names the config field and the --set that change it.
    _assert_clean_error(res, "generation backend 'vllm' needs the vllm package", "--set generation.backend=hf")
    assert sorted(p.name for p in run.iterdir()) == ["generations"]
    assert not os.listdir(env["RAY_TMPDIR"])  # Ray never started
    os.rmdir(env["RAY_TMPDIR"])
