"""The sweep and Ray Train on a multi-node Ray cluster (a head holding no CPU, two worker nodes),
submitted with `ray job submit` as on a real cluster.

Its work runs on the worker nodes. In one sweep, a worker node is lost (its raylet killed) and a
stage actor is killed on another node during each of three stages — features, few-shot and
generation — and a replacement node joins after each loss: the faults cost time only, every
(task, setting, example) is written exactly once and the summary is the one-node sweep's. The test
prints one row per stage with its faults, the rows lost and duplicated and the extra wall time.
`lorabatch train --workers 2` runs its two workers on two nodes; a worker killed mid-run resumes
from its last checkpoint and the adapter equals an uninterrupted run's (within float rounding)."""

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
from tests.helpers.processes import private_ray_env, run_in_session
from tests.sweep.test_interrupt_resume import _assert_same_summary, _summary
from tests.sweep.test_ray_job import TERMINAL, UPLOAD_EXCLUDES, _job_status

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 6
SETTINGS = ("base", "oracle", "JS-attentional", "JS-normalized", "select")
PLANNED = 4 * len(SETTINGS) * EXAMPLES  # tasks × settings × examples
JOB_LIMIT_S = 900  # a hung job fails the test instead of hanging it (not a speed requirement)
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def multinode_config(write_sweep_config, tmp_path_factory):
    """write(run_dir) -> a sweep config whose features, distances, few-shot, generation and scoring
    all run on Ray (two few-shot and two HF generation actors: one per worker node). Few-shot
    `select` is as small as still runs the stage: 2 examples, the teacher-forced loss, 3 candidates."""
    root = tmp_path_factory.mktemp("multinode-config")

    def write(run_dir: Path) -> Path:
        path = write_sweep_config(
            root / f"{run_dir.name}.yaml",
            run_dir,
            fewshot=("select",),
            examples_per_task=EXAMPLES,
            batch_size=2,
            concurrency=2,
        )
        config = yaml.safe_load(path.read_text())
        config["fewshot"].update(
            examples=2, pool=0, criterion="loss", concurrency=2, select={"temperatures": [1.0], "top_k": [None]}
        )
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
    """One cluster for the module: the clean run, the run that loses nodes (and gains replacements),
    then training."""
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
    """Every planned row once on disk and in the store, the same few-shot choices, generations and
    summary as the reference; returns (rows lost, rows duplicated) for the record (both asserted 0)."""
    on_disk = [k for f in generation_files(run) for k in _keys(pq.read_table(f, columns=list(KEY_COLUMNS)))]
    rows, ref = read_generations(run), read_generations(reference)
    lost = len(set(_keys(ref)) - set(on_disk))
    duplicated = len(on_disk) - len(set(on_disk))
    assert (lost, duplicated) == (0, 0)
    assert rows.num_rows == len(on_disk) == PLANNED
    assert set(rows.column("setting").to_pylist()) == set(SETTINGS)
    assert rows.column("error").null_count == rows.num_rows
    ours = dict(zip(_keys(rows), rows.column("generated_token_ids").to_pylist()))
    assert ours == dict(zip(_keys(ref), ref.column("generated_token_ids").to_pylist()))
    _assert_same_summary(_summary(run), _summary(reference))
    assert _fewshot_choices(run) == _fewshot_choices(reference)
    return lost, duplicated


def _fewshot_choices(run: Path) -> list[tuple]:
    """select's result per task: the task, its choice, the loss and passes (not the seconds it took)."""
    rows = pq.read_table(RunLayout(run).fewshot("select")).to_pylist()
    return [(r["task_id"], r["choice"], r["loss"], r["forward_passes"], r["error"]) for r in rows]


# The stages a fault is injected in, with the Ray Data actor class whose process title marks them
# (`ray::MapWorker(MapBatches(<class>))`) and the stage name NodeWatch reports a node lost in.
FAULTED = {
    "features": ("FeatureWorker", "features and distances"),
    "fewshot": ("FewShotWorker", "fewshot"),
    "generation": ("HFGenerator", "generation"),
}


def _stage_seconds(run: Path) -> dict[str, float]:
    """Seconds each faulted stage took (features and distances together), from the stage markers."""
    seconds = {
        m: json.loads(RunLayout(run).stage_marker(m).read_text())["seconds"]
        for m in ("features", "distances", "fewshot", "generation")
    }
    return {
        "features": seconds["features"] + seconds["distances"],
        "fewshot": seconds["fewshot"],
        "generation": seconds["generation"],
    }


@pytest.fixture(scope="module")
def clean_run(cluster, multinode_config, tmp_path_factory) -> tuple[Path, float, str]:
    """The sweep submitted to the undisturbed cluster: (run directory, wall seconds, job logs)."""
    run = tmp_path_factory.mktemp("clean") / "run"
    started = time.monotonic()
    _submit(cluster, "clean", multinode_config(run))
    status, logs = _wait(cluster, "clean")
    assert status == "SUCCEEDED", logs[-6000:]
    return run, time.monotonic() - started, logs


def test_sweep_job_runs_on_the_worker_nodes_with_the_one_node_result(cluster, clean_run, one_node_run):
    run, wall, logs = clean_run
    print(f"[multinode] clean sweep job: {wall:.0f} s")

    workers = {cluster.node_id_of(w) for w in cluster.workers}
    # Every stage's Ray work ran on a worker node (the head holds no CPU): from Ray's state API.
    tasks = cluster.state("tasks", "state=FINISHED")
    ran_on: dict[str, set[str]] = {}
    for task in tasks:
        ran_on.setdefault(task["name"], set()).add(task.get("node_id"))
    for stage, name in (
        ("features", "MapWorker(MapBatches(FeatureWorker)).submit"),
        ("distances", "MapBatches(block_task)"),
        ("few-shot", "MapWorker(MapBatches(FewShotWorker)).submit"),
        ("generation", "MapWorker(MapBatches(HFGenerator)).submit"),
        ("generation writes", "Write"),
        ("scoring", "MapBatches(_score_batch)"),
    ):
        assert ran_on.get(name) and ran_on[name] <= workers, (stage, ran_on.get(name), workers)
    # The stages' actors were placed on worker nodes only (an actor the pool no longer needed by
    # the time resources freed up ends without ever being placed: no node).
    for actor in ("FeatureWorker", "FewShotWorker", "HFGenerator"):
        placed = {a["node_id"] for a in cluster.state("actors") if actor in a["class_name"] and a["node_id"]}
        assert placed and placed <= workers, (actor, placed, workers)
    assert "visible from all 2 node(s) that hold work" in logs  # the shared-storage check ran
    assert "node(s) lost" not in logs  # no fault, no fault line
    _assert_exactly_once_and_equal(run, one_node_run)


def test_nodes_and_actors_lost_in_three_stages_cost_time_only(
    cluster, multinode_config, one_node_run, clean_run, tmp_path
):
    """During features, few-shot and generation: the raylet of a worker node holding the stage's
    actors is killed (the node is lost with the work it held) and a stage actor on another node is
    killed; a replacement node joins after each loss, so the cluster keeps two worker nodes."""
    run = tmp_path / "run"
    injected: list[dict] = []  # {stage, fault, node, node_id, at}
    joining: list[threading.Thread] = []
    not_started: list[str] = []  # replacement nodes that failed to start
    started = time.monotonic()

    def replace() -> None:
        try:
            cluster.add_worker()
        except RuntimeError as err:  # a machine too loaded to start a node: the next one may
            not_started.append(str(err).splitlines()[0])

    def inject(stop: threading.Event) -> None:
        # Polled every 0.1 s from the nodes' processes: a stage is under way once its actors run.
        for stage, (actor, _) in FAULTED.items():
            victim = None
            while not stop.wait(0.1):
                live = cluster.live_workers
                holding = {w.name: cluster.processes_named(w, actor) for w in live}
                if victim is None:
                    nodes = [w for w in live if holding[w.name]]
                    if not nodes or len(live) < 2:  # never the last worker node: wait for a replacement
                        continue
                    victim = nodes[0]
                    node_id = cluster.node_id_of(victim)
                    cluster.kill_raylet(victim)
                    injected.append(
                        {
                            "stage": stage,
                            "fault": "raylet",
                            "node": victim.name,
                            "node_id": node_id,
                            "at": _since(started),
                        }
                    )
                    joining.append(threading.Thread(target=replace, daemon=True))
                    joining[-1].start()
                other = next(((w, holding[w.name][0]) for w in live if w is not victim and holding.get(w.name)), None)
                if other is not None:
                    os.kill(other[1], signal.SIGKILL)
                    injected.append({"stage": stage, "fault": "actor", "node": other[0].name, "at": _since(started)})
                    break

    stop = threading.Event()
    injector = threading.Thread(target=inject, args=(stop,), daemon=True)
    injector.start()
    _submit(cluster, "faults", multinode_config(run))
    try:
        status, logs = _wait(cluster, "faults")
    finally:
        stop.set()
        injector.join()
        for thread in joining:
            thread.join(timeout=300)
    wall = time.monotonic() - started
    (tmp_path / "job.log").write_text(logs)
    assert status == "SUCCEEDED", logs[-6000:]
    # Every fault landed while its stage ran: a raylet and then an actor in each of the three stages.
    assert [(f["stage"], f["fault"]) for f in injected] == [
        (stage, fault) for stage in FAULTED for fault in ("raylet", "actor")
    ], injected
    lost, duplicated = _assert_exactly_once_and_equal(run, one_node_run)

    # The user was told once per node, in lorabatch's words, and the run recorded it.
    lost_nodes = [(f["node_id"], FAULTED[f["stage"]][1]) for f in injected if f["fault"] == "raylet"]
    lines = logs.splitlines()
    for node_id, stage in lost_nodes:
        told = [line for line in lines if f"({node_id[:8]}) was lost during" in line]
        assert len(told) == 1 and f"was lost during {stage}:" in told[0], [line for line in lines if "lost" in line]
    assert "[state-dump]" not in logs and "retries remaining" not in logs
    assert sum("its tasks are retried" in line for line in lines) <= 1
    recorded = json.loads(RunLayout(run).faults.read_text())
    assert [(e["node_id"], e["stage"]) for e in recorded["nodes_lost"]] == lost_nodes
    assert any(f"this sweep: {len(lost_nodes)} node(s) lost" in line for line in lines), lines[-20:]

    clean_seconds, fault_seconds = _stage_seconds(clean_run[0]), _stage_seconds(run)
    table = [f"{'stage':<11} {'faults injected (s after submit)':<40} {'lost':>5} {'duplicated':>10} {'extra s':>8}"]
    for stage in FAULTED:
        what = ", ".join(f"{f['fault']} {f['node']} {f['at']:.0f}" for f in injected if f["stage"] == stage)
        extra = fault_seconds[stage] - clean_seconds[stage]
        table.append(f"{stage:<11} {what:<40} {lost:>5} {duplicated:>10} {extra:>8.0f}")
    everything = f"{len(injected)} faults"
    table.append(f"{'whole job':<11} {everything:<40} {lost:>5} {duplicated:>10} {wall - clean_run[1]:>8.0f}")
    if not_started:
        print(f"\n[multinode] replacement nodes that did not start: {not_started}")
    print(
        f"\n[multinode] faulted sweep job: {wall:.0f} s, {wall / clean_run[1]:.2f}× the clean job's {clean_run[1]:.0f} s"
        "\n[multinode] fault costs (extra s: the stage's or job's seconds minus the clean run's)\n" + "\n".join(table)
    )


def _since(started: float) -> float:
    return time.monotonic() - started


TRAIN_STEPS, TRAIN_EVERY = 120, 20
TRAIN_FLAGS = [
    "--workers", "2", "--threads-per-worker", "2", "--steps", str(TRAIN_STEPS), "--batch-size", "8",
    "--checkpoint-every", str(TRAIN_EVERY), "--max-failures", "1", "--seed", "0",
]  # fmt: skip


def _train(cluster: MultiNodeCluster, job_id: str, bank: Path, data: Path, out: Path) -> None:
    """Submit `lorabatch train --workers 2` as a job (2 CPUs per worker: one worker per node)."""
    runtime_env = {
        "excludes": UPLOAD_EXCLUDES,
        # Ray Train's controller collects reports every 2 s by default; closer reports wait for it.
        "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
    }
    submitted = cluster.ray(
        "job", "submit", "--address", cluster.dashboard_url, "--submission-id", job_id, "--no-wait",
        "--log-style", "record", "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
        "--", sys.executable, "-m", "lorabatch.cli", "train", "--bank", str(bank), "--data", str(data),
        "--out", str(out), *TRAIN_FLAGS,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr


def _train_progress(storage: Path) -> tuple[dict | None, bool]:
    """(rank 0's heartbeat once written, whether Ray Train has registered a checkpoint of the run)."""
    try:
        progress = json.loads(next((storage / "progress").glob("*.json")).read_text())
        snapshot = next(storage.glob("train-*/checkpoint_manager_snapshot.json"), None)
        return progress, snapshot is not None and "checkpoint" in snapshot.read_text()
    except (OSError, StopIteration, json.JSONDecodeError):  # not written yet, or replaced while read
        return None, False


def test_train_on_two_nodes_resumes_a_killed_worker_to_the_same_adapter(cluster, sweep_bank, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file

    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import parse_config

    while len(cluster.live_workers) < 2:  # a replacement the previous test could not start
        cluster.add_worker()
    banks = {}
    for name in ("clean", "killed"):  # a prepared bank each: a bank's training state lives under RUN/training/
        banks[name] = tmp_path / name
        manifest = build_manifest(
            parse_config({"run_dir": str(banks[name]), "bank": sweep_bank.bank_config()}), progress=False
        )
    data = Path(manifest.column("dataset_path")[0].as_py())  # a bank task's dataset: its train split

    _train(cluster, "train-clean", banks["clean"], data, tmp_path / "clean-adapter")
    status, logs = _wait(cluster, "train-clean")
    assert status == "SUCCEEDED", logs[-6000:]

    killed: dict = {}

    def kill_a_worker(stop: threading.Event) -> None:
        # Once Ray Train has registered a checkpoint: note the nodes whose processes include a
        # train worker, then SIGKILL rank 0's process (on one of them).
        while not stop.wait(0.05):
            progress, checkpointed = _train_progress(banks["killed"] / "training")
            if progress is None or not checkpointed:
                continue
            killed["nodes"] = [w.name for w in cluster.live_workers if cluster.processes_named(w, "RayTrainWorker")]
            os.kill(progress["pid"], signal.SIGKILL)
            killed.update(progress)
            return

    stop = threading.Event()
    killer = threading.Thread(target=kill_a_worker, args=(stop,), daemon=True)
    killer.start()
    _train(cluster, "train-killed", banks["killed"], data, tmp_path / "killed-adapter")
    try:
        status, logs = _wait(cluster, "train-killed")
    finally:
        stop.set()
        killer.join()
    assert status == "SUCCEEDED", logs[-6000:]
    assert "step" in killed, f"the worker was never killed: {killed}"
    assert killed["step"] < TRAIN_STEPS, f"training finished before it could be interrupted: {killed}"
    assert len(killed["nodes"]) == 2  # its two workers ran on two different nodes

    clean = json.loads((tmp_path / "clean-adapter" / "provenance.json").read_text())["training"]
    resumed = json.loads((tmp_path / "killed-adapter" / "provenance.json").read_text())["training"]
    assert clean["starts"] == [0] and clean["workers"] == resumed["workers"] == 2
    first, again = resumed["starts"]
    assert first == 0 and 0 < again <= killed["step"] and again % TRAIN_EVERY == 0, (resumed["starts"], killed)
    assert f"resumed at step {again}" in logs

    # The resumed attempt redoes the steps after its checkpoint from the saved weights, optimizer
    # state and example order: the uninterrupted run's adapter, up to float rounding.
    a = load_file(str(tmp_path / "clean-adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed-adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    scale = max(float(np.max(np.abs(a[k]))) for k in a)
    print(
        f"[multinode] train on 2 nodes: rank 0 killed at step {killed['step']}, resumed at step {again}; "
        f"adapter max |Δ| {worst:.2e} (largest weight {scale:.2e})"
    )
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6 * scale, err_msg=k)


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
