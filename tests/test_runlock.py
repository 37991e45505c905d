"""One writer per run directory: a second command refuses (exit 2, naming the holder) or waits;
a lock whose holder was killed is taken over. Real processes throughout."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lorabatch.errors import LorabatchError
from lorabatch.layout import RunLayout
from lorabatch.runlock import lock_path, read_holder, run_lock

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent(
    """
    import sys
    from lorabatch.runlock import run_lock

    with run_lock(sys.argv[1], command="lorabatch sweep held.yaml"):
        print("locked", flush=True)
        sys.stdin.readline()  # hold until told (or killed)
    """
)


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of tmp_path/run until its stdin gets a line."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout.readline().strip() == "locked"
    yield run, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _scoreable(run: Path) -> None:
    """One generation row, so that `lorabatch score RUN --local` has something to score."""
    import pyarrow as pa

    from lorabatch.atomic import write_parquet
    from lorabatch.generation.schema import conform, generation_schema

    row = {
        "task_id": "task1",
        "setting": "base",
        "example_id": "1",
        "prompt": "p",
        "references": ["red cat"],
        "prediction": "red cat",
        "fingerprint": "f",
    }
    write_parquet(
        RunLayout(run).generations / "part-a.parquet", conform(pa.Table.from_pylist([row]), generation_schema())
    )


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "lorabatch.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        **kwargs,
    )


def test_second_command_refuses_naming_the_holder(holder, tmp_path):
    run, proc = holder
    _scoreable(run)
    config = tmp_path / "sweep.yaml"
    config.write_text(
        json.dumps({"run_dir": str(run), "bank": {"source": "local", "root": str(tmp_path), "base_model": "x/y"}})
    )
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for args in (["sweep", str(config)], ["generate", str(config)], ["score", str(run), "--local"]):
        res = _cli(*args)
        assert res.returncode == 2, res.stderr
        assert (
            f"run directory {run} is in use by pid {proc.pid}" in res.stderr
            and "lorabatch sweep held.yaml" in res.stderr
        )
        assert "Traceback" not in res.stderr
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert job.returncode == 2 and f"in use by pid {proc.pid}" in job.stderr
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written, no scores
    assert read_holder(run)["pid"] == proc.pid


def test_wait_runs_once_the_holder_is_done(holder):
    run, proc = holder
    _scoreable(run)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "lorabatch.cli", "score", str(run), "--local", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    time.sleep(3)
    assert waiting.poll() is None and not RunLayout(run).scores.exists()
    proc.stdin.write("done\n")
    proc.stdin.flush()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert f"waiting for run directory {run}, in use by pid {proc.pid}" in err
    assert RunLayout(run).score_table("summary").is_file() and read_holder(run) is None


def test_lock_of_a_killed_process_is_taken_over(holder):
    run, proc = holder
    _scoreable(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_holder(run)["pid"] == proc.pid  # its record stays, its flock is gone
    res = _cli("score", str(run), "--local")
    assert res.returncode == 0, res.stderr
    assert f"taking over the lock left by pid {proc.pid}" in res.stderr
    assert RunLayout(run).score_table("summary").is_file()


def test_reentrant_in_one_process_and_run_dir_must_be_a_directory(tmp_path):
    with run_lock(tmp_path / "run", command="outer"):
        with run_lock(tmp_path / "run", command="inner"):
            assert read_holder(tmp_path / "run")["command"] == "outer"
        assert read_holder(tmp_path / "run")["command"] == "outer"
    assert read_holder(tmp_path / "run") is None and lock_path(tmp_path / "run").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LorabatchError, match="exists and is not a directory"):
        with run_lock(tmp_path / "file"):
            pass
