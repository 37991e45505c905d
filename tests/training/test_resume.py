"""Checkpoints resume a run: after a worker is killed (Ray Train restarts it), and after the
driver is killed and the same command is run again."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from lorabatch.training.config import TrainingConfig

STEPS, EVERY = 150, 20
FLAGS = ["--steps", str(STEPS), "--batch-size", "8", "--checkpoint-every", str(EVERY), "--threads-per-worker", "1"]


def _progress(storage: Path) -> dict | None:
    """Rank 0's heartbeat of the one training run under `storage`, once it has written one."""
    for path in (storage / "progress").glob("*.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # replaced while read
            return None
    return None


def _checkpointed(storage: Path) -> bool:
    """Ray Train has registered a checkpoint of the run (its snapshot names one)."""
    for path in storage.glob("train-*/checkpoint_manager_snapshot.json"):
        try:
            return "checkpoint" in path.read_text()
        except OSError:
            return False
    return False


def _wait_for_checkpoint(storage: Path, alive, timeout: float = 900.0) -> dict:
    """Poll until a checkpoint is registered while training still runs; the heartbeat then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        progress = _progress(storage)
        if progress and _checkpointed(storage):
            assert progress["step"] < STEPS, f"training finished before it could be interrupted: {progress}"
            return progress
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint while training ran ({_progress(storage)})")


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint(fresh_run, tmp_path, local_ray):
    from lorabatch.workflows.train import train_adapter

    run, data, _ = fresh_run()
    storage = run / "training"
    killed = {}

    def kill_rank0():
        progress = _wait_for_checkpoint(storage, alive=lambda: not finished.is_set())
        os.kill(progress["pid"], signal.SIGKILL)
        killed.update(progress)

    finished = threading.Event()
    killer = threading.Thread(target=kill_rank0, daemon=True)
    killer.start()
    config = TrainingConfig(steps=STEPS, batch_size=8, checkpoint_every=EVERY, max_failures=1, threads_per_worker=1)
    try:
        result = train_adapter(run, data, tmp_path / "out", config=config, seed=0).result
    finally:
        finished.set()
        killer.join(timeout=60)
    assert killed, "the worker was never killed"
    first, resumed = result.starts
    assert first == 0 and 0 < resumed <= killed["step"] and resumed % EVERY == 0, (result.starts, killed)
    assert len(result.losses) == STEPS
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["training"]["starts"] == [0, resumed]


@pytest.mark.slow
def test_killed_driver_resumes_when_the_command_runs_again(fresh_run, tmp_path, ray_env):
    from tests.helpers.processes import (
        kill_session,
        run_in_session,
        start_in_session,
    )

    run, data, _ = fresh_run()
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lorabatch.cli",
        "train",
        "--bank",
        str(run),
        "--data",
        str(data),
        "--out",
        str(out),
        *FLAGS,
    ]
    proc = start_in_session(cmd, ray_env, tmp_path / "first.log")
    try:
        progress = _wait_for_checkpoint(run / "training", alive=lambda: proc.poll() is None)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray goes with the session below
        proc.wait()
    finally:
        kill_session(proc.pid)
    assert not out.exists()

    log = tmp_path / "second.log"
    rc = run_in_session(cmd, ray_env, log, timeout=900)
    assert rc == 0, log.read_text()[-4000:]
    prov = json.loads((out / "provenance.json").read_text())
    first, resumed = prov["training"]["starts"]
    assert first == 0 and 0 < resumed <= progress["step"] + EVERY and resumed % EVERY == 0, (prov["training"], progress)
    assert f"resumed at step {resumed}" in log.read_text()
