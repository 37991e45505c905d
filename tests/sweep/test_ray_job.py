"""The cluster path: `ray start --head` on 127.0.0.1, then `ray job submit --working-dir <repo> --
python jobs/sweep.py --config ...`, as the README's paper recipe does on a real cluster."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lorabatch.bank.datasets import read_split
from lorabatch.generation.schema import KEY_COLUMNS
from lorabatch.generation.store import generation_files
from lorabatch.layout import RunLayout
from tests.helpers.processes import session_tree
from tests.helpers.ray_cluster import LocalRayCluster

REPO = Path(__file__).resolve().parents[2]
METRICS = ("JS", "KL")
MODELS = ("attentional", "normalized")
EXAMPLES = 2
# What the job needs from the repo is lorabatch/ and jobs/; the rest stays home.
UPLOAD_EXCLUDES = [
    ".git",
    ".venv*",
    "runs",
    "demo-bank",
    "tests",
    "bench",
    ".ci",
    ".whl",
    ".gl",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
JOB_LIMIT_S = 600  # a hung job fails the test instead of hanging it (not a speed requirement)
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _listening_ips(pids) -> set[str]:
    import psutil

    ips = set()
    for pid in pids:
        try:
            ips |= {
                c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            }
        except psutil.NoSuchProcess:
            continue
    return ips


def _job_status(cluster, job_id) -> str:
    """The job's status as `ray job status` prints it (terminal states get a sentence of their own)."""
    out = cluster.ray("job", "status", "--address", cluster.dashboard_url, "--log-style", "record", job_id, timeout=60)
    text = ANSI.sub("", out.stdout + out.stderr)
    for pattern, status in (
        (f"Job '{job_id}' succeeded", "SUCCEEDED"),
        (f"Job '{job_id}' failed", "FAILED"),
        (f"Job '{job_id}' was stopped", "STOPPED"),
    ):
        if pattern in text:
            return status
    found = re.findall(rf"Status for job '{job_id}': (\w+)", text)
    return found[-1] if found else "UNKNOWN"


@pytest.mark.slow
def test_sweep_as_a_ray_job_on_a_local_cluster(sweep_bank, write_sweep_config, tmp_path):
    run = tmp_path / "run"
    config = write_sweep_config(
        tmp_path / "sweep.yaml", run, metrics=METRICS, models=MODELS, examples_per_task=EXAMPLES
    )
    venv_bin = Path(sys.executable).parent
    runtime_env = {"excludes": UPLOAD_EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    job_id = f"lorabatch-test-{int(time.time())}"

    cluster = LocalRayCluster(venv_bin / "ray", num_cpus=2, extra_path=str(venv_bin))
    try:
        cluster.start()
        submit = cluster.ray(
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--submission-id",
            job_id,
            "--no-wait",
            "--log-style",
            "record",
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            sys.executable,
            "jobs/sweep.py",
            "--config",
            str(config),
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        status, deadline = _job_status(cluster, job_id), time.monotonic() + JOB_LIMIT_S
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(2)
            status = _job_status(cluster, job_id)
        logs = cluster.ray("job", "logs", "--address", cluster.dashboard_url, job_id, timeout=60).stdout
        assert status == "SUCCEEDED", logs[-6000:]
        # The cluster listened on loopback only (Ray rewrites 127.0.0.1 unless told not to).
        listening = _listening_ips(session_tree(cluster.sid))
        assert listening and listening <= LOOPBACK, listening
    finally:
        left = cluster.stop()
    assert left == set(), f"processes of the Ray cluster survived SIGKILL: {left}"

    # The job ran the uploaded copy of the repo, with this venv's Python, attached to the cluster.
    job_line = re.search(r"\[lorabatch\] job: python (\S+), lorabatch from (\S+), Ray at (\S+)", logs)
    assert job_line, logs[-6000:]
    python, package, address = job_line.groups()
    assert Path(python) == Path(sys.executable)
    assert Path(package).parent != REPO and Path(package).is_relative_to(cluster.temp_dir)
    assert address.endswith(cluster.address)
    assert "[lorabatch] report:" in logs

    settings = ["base", "oracle", *[f"{m}-{model}" for m in METRICS for model in MODELS]]
    tasks = [f"task{n}" for n in sweep_bank.task_numbers]
    examples = {
        f"task{n}": [
            str(i)
            for i in read_split(sweep_bank.root / sweep_bank.org / f"task{n}_tiny_{n}", "test")
            .column("id")
            .to_pylist()[:EXAMPLES]
        ]
        for n in sweep_bank.task_numbers
    }
    expected = {(t, s, e) for s in settings for t in tasks for e in examples[t]}

    # Generations as written, before any de-duplication: exactly one row per key of the plan.
    files = generation_files(run)
    assert files
    raw = [row for f in files for row in pq.read_table(f, columns=[*KEY_COLUMNS, "error", "prediction"]).to_pylist()]
    keys = [tuple(r[c] for c in KEY_COLUMNS) for r in raw]
    assert len(keys) == len(set(keys)) == len(expected)
    assert set(keys) == expected
    assert all(r["error"] is None and r["prediction"] is not None for r in raw)

    summary = {r["setting"]: r for r in pq.read_table(RunLayout(run).score_table("summary")).to_pylist()}
    assert set(summary) == set(settings)
    for s, row in summary.items():
        assert row["n_tasks"] == len(tasks) and row["n_examples"] == len(tasks) * EXAMPLES and row["n_errors"] == 0, row
        assert 0.0 <= row["rouge_l"] <= 1.0
    assert RunLayout(run).report_index.is_file()
