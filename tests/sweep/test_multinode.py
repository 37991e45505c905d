"""The sweep on a multi-node Ray cluster (a head holding no CPU, two worker nodes), submitted with
`ray job submit` as on a real cluster: its work runs on the worker nodes, and a worker node lost
mid-generation (its raylet killed) plus a generation actor killed on the other node cost time
only — every (task, setting, example) is written exactly once and the summary is the one-node
sweep's. Each run prints what the faults cost (rows lost, rows duplicated, wall time)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lorabatch.generation.schema import KEY_COLUMNS
from lorabatch.generation.store import generation_files, read_generations
from lorabatch.layout import RunLayout
from tests.helpers.multinode import LoopbackNetwork, MultiNodeCluster
from tests.helpers.processes import private_ray_env, run_in_session, session_tree
from tests.sweep.test_interrupt_resume import _assert_same_summary, _summary
from tests.sweep.test_ray_job import TERMINAL, UPLOAD_EXCLUDES, _job_status

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 8
PLANNED = 4 * 4 * EXAMPLES  # tasks × settings (base, oracle, JS-attentional, JS-normalized) × examples
JOB_LIMIT_S = 900  # a hung job fails the test instead of hanging it (not a speed requirement)
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def multinode_config(write_sweep_config, tmp_path_factory):
    """write(run_dir) -> a sweep config whose features, distances, generation and scoring all run
    on Ray (two HF generation actors: one per worker node)."""
    root = tmp_path_factory.mktemp("multinode-config")

    def write(run_dir: Path) -> Path:
        path = write_sweep_config(
            root / f"{run_dir.name}.yaml", run_dir, examples_per_task=EXAMPLES, batch_size=2, concurrency=2
        )
        config = yaml.safe_load(path.read_text())
        config["distances"]["executor"] = "ray"
        config["scoring"]["executor"] = "ray"
        config.pop("ray")  # the cluster's resources, not an in-process instance's
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def one_node_run(multinode_config, tmp_path_factory) -> Path:
    """The same sweep on a one-node, in-process Ray with the cluster's 4 CPUs: the reference."""
    root = tmp_path_factory.mktemp("one-node")
    config = multinode_config(root / "run")
    env = private_ray_env()
    try:
        rc = run_in_session(
            [sys.executable, "-m", "lorabatch.cli", "sweep", str(config), "--set", "ray.num_cpus=4"],
            env,
            root / "sweep.log",
            timeout=JOB_LIMIT_S,
        )
    finally:
        import shutil

        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert rc == 0, (root / "sweep.log").read_text()[-5000:]
    return root / "run"


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module: the clean run first, then the run that loses a worker node."""
    with LoopbackNetwork() as net:
        nodes = MultiNodeCluster(VENV_BIN / "ray", net, workers=2, cpus_per_worker=2)
        try:
            yield nodes.start()
        finally:
            assert nodes.stop() == set()


def _submit(cluster: MultiNodeCluster, job_id: str, config: Path) -> None:
    runtime_env = {"excludes": UPLOAD_EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    out = cluster.ray(
        "job", "submit", "--address", cluster.dashboard_url, "--submission-id", job_id, "--no-wait",
        "--log-style", "record", "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
        "--", sys.executable, "jobs/sweep.py", "--config", str(config),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def _wait(cluster: MultiNodeCluster, job_id: str, step=None) -> tuple[str, str]:
    """Poll the job until it ends (calling `step()` between polls); its status and logs."""
    status, deadline = _job_status(cluster, job_id), time.monotonic() + JOB_LIMIT_S
    while status not in TERMINAL and time.monotonic() < deadline:
        if step is not None:
            step()
        time.sleep(1)
        status = _job_status(cluster, job_id)
    logs = cluster.ray("job", "logs", "--address", cluster.dashboard_url, job_id, timeout=60).stdout
    return status, logs


def _keys(table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS)))


def _assert_exactly_once_and_equal(run: Path, reference: Path) -> tuple[int, int]:
    """Every planned row once on disk and in the store, the same generations and summary as the
    reference; returns (rows lost, rows duplicated) for the record (both asserted 0)."""
    on_disk = [k for f in generation_files(run) for k in _keys(pq.read_table(f, columns=list(KEY_COLUMNS)))]
    rows, ref = read_generations(run), read_generations(reference)
    lost = len(set(_keys(ref)) - set(on_disk))
    duplicated = len(on_disk) - len(set(on_disk))
    assert (lost, duplicated) == (0, 0)
    assert rows.num_rows == len(on_disk) == PLANNED
    assert rows.column("error").null_count == rows.num_rows
    ours = dict(zip(_keys(rows), rows.column("generated_token_ids").to_pylist()))
    assert ours == dict(zip(_keys(ref), ref.column("generated_token_ids").to_pylist()))
    _assert_same_summary(_summary(run), _summary(reference))
    return lost, duplicated


def test_sweep_job_runs_on_the_worker_nodes_with_the_one_node_result(cluster, multinode_config, one_node_run, tmp_path):
    run = tmp_path / "run"
    started = time.monotonic()
    _submit(cluster, "clean", multinode_config(run))
    status, logs = _wait(cluster, "clean")
    assert status == "SUCCEEDED", logs[-6000:]
    print(f"[multinode] clean sweep job: {time.monotonic() - started:.0f} s")

    workers = {cluster.node_id_of(w) for w in cluster.workers}
    # Every stage's Ray work ran on a worker node (the head holds no CPU): from Ray's state API.
    tasks = cluster.state("tasks", "state=FINISHED")
    ran_on: dict[str, set[str]] = {}
    for task in tasks:
        ran_on.setdefault(task["name"], set()).add(task.get("node_id"))
    for stage, name in (
        ("features", "MapWorker(MapBatches(FeatureWorker)).submit"),
        ("distances", "MapBatches(block_task)"),
        ("generation", "MapWorker(MapBatches(HFGenerator)).submit"),
        ("generation writes", "Write"),
        ("scoring", "MapBatches(_score_batch)"),
    ):
        assert ran_on.get(name) and ran_on[name] <= workers, (stage, ran_on.get(name), workers)
    generators = {a["node_id"] for a in cluster.state("actors") if "HFGenerator" in a["class_name"]}
    assert generators == workers  # one generation actor on each worker node
    assert "visible from all 2 node(s) that hold work" in logs  # the shared-storage check ran
    _assert_exactly_once_and_equal(run, one_node_run)


def test_a_worker_node_and_an_actor_lost_mid_generation_cost_time_only(
    cluster, multinode_config, one_node_run, tmp_path
):
    run = tmp_path / "run"
    lost_node, other = cluster.workers
    lost_id = cluster.node_id_of(lost_node)
    faults: dict[str, float] = {}
    started = time.monotonic()

    def generator_pid(node) -> int | None:
        import psutil

        for pid in session_tree(node.sid):
            try:
                if "HFGenerator" in " ".join(psutil.Process(pid).cmdline()):
                    return pid
            except psutil.NoSuchProcess:
                continue
        return None

    def inject(stop: threading.Event) -> None:
        # Generation is under way once a generation actor runs on each worker node: then lose one
        # node (its raylet, with the actor and tasks it held) and at once the generation actor of
        # the surviving node. Polled here, every 0.1 s, from the nodes' processes.
        while not stop.wait(0.1):
            if generator_pid(lost_node) and (pid := generator_pid(other)):
                cluster.kill_raylet(lost_node)
                faults["raylet"] = time.monotonic() - started
                os.kill(pid, signal.SIGKILL)
                faults["actor"] = time.monotonic() - started
                return

    stop = threading.Event()
    injector = threading.Thread(target=inject, args=(stop,), daemon=True)
    injector.start()
    _submit(cluster, "faults", multinode_config(run))
    try:
        status, logs = _wait(cluster, "faults")
    finally:
        stop.set()
        injector.join()
    wall = time.monotonic() - started
    (tmp_path / "job.log").write_text(logs)
    assert status == "SUCCEEDED", logs[-6000:]
    assert set(faults) == {"raylet", "actor"}, faults  # both faults landed while generation ran
    lost, duplicated = _assert_exactly_once_and_equal(run, one_node_run)

    # The user was told once, in lorabatch's words, and the run recorded it.
    told = [line for line in logs.splitlines() if "was lost during generation" in line]
    assert len(told) == 1 and lost_id[:8] in told[0], [line for line in logs.splitlines() if "lost" in line]
    assert "[state-dump]" not in logs and "retries remaining" not in logs
    assert sum("its tasks are retried" in line for line in logs.splitlines()) <= 1
    recorded = json.loads(RunLayout(run).faults.read_text())
    assert [(e["node_id"], e["stage"]) for e in recorded["nodes_lost"]] == [(lost_id, "generation")]
    print(
        f"[multinode] faults: worker raylet killed at {faults['raylet']:.0f} s, generation actor killed at "
        f"{faults['actor']:.0f} s; rows lost {lost}, duplicated {duplicated}; sweep job {wall:.0f} s"
    )


def test_a_node_that_cannot_see_the_run_directory_stops_the_sweep_naming_it(multinode_config, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    with LoopbackNetwork() as net:
        nodes = MultiNodeCluster(VENV_BIN / "ray", net, workers=2, hidden={1: shared})
        try:
            nodes.start()
            blind = nodes.node_id_of(nodes.workers[1])
            _submit(nodes, "storage", multinode_config(shared / "run"))
            status, logs = _wait(nodes, "storage")
        finally:
            assert nodes.stop() == set()
    assert status == "FAILED"
    assert f"the run directory {shared / 'run'} is not visible from every node of the cluster" in logs
    assert f"node 127.0.0.1 ({blind[:8]}): cannot read {shared / 'run'}/.storage-probe-" in logs
    assert "Traceback" not in logs
    # Stopped before any work: the bank stage never ran.
    assert not RunLayout(shared / "run").manifest.exists()
