"""One way to get a Ray connection: attach to a cluster, or start Ray in this process.

Only the entry points call `ensure_ray`: the `lorabatch` commands, `jobs/sweep.py`, and the
functions the commands are thin wrappers of, each a whole command's work in the Python API —
`sweep.run.run_sweep`, `workflows.train.train_adapter`, `workflows.extend.extend_bank` and
`demo.build.build_demo_bank` (the last three through `training.trainer.ensure_training_ray`, which
sizes a local instance for the training jobs, and only when they have something to train). The
stages use the connection they find (`require_ray`) and never start one.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from lorabatch import interrupt
from lorabatch.errors import LorabatchError
from lorabatch.progress import quiet_ray_data

_log = logging.getLogger(__name__)

# What survives a lost node or process (`ray.fault_tolerance` in the run config). Every stage's
# work is idempotent — rows are keyed, files written atomically and named by their content — so
# redoing work a dead process or node held costs time only. A process killed with its node is
# restarted (actors) or its task rerun, up to these counts per actor / task: enough for repeated
# node losses, yet a process that dies each time it starts (a model too big for the node's memory)
# stops the run with Ray's error instead of restarting forever. Exceptions raised by lorabatch's
# own code are not retried (they are recorded per row where a row can fail alone), and no block
# may fail (Ray Data's errored-block budget is 0): a block lost would be rows silently missing.
FAULT_TOLERANCE = {"actor_restarts": 5, "actor_task_retries": 5, "task_retries": 5}
_fault_tolerance = dict(FAULT_TOLERANCE)


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    fault_tolerance: dict | None = None,
) -> None:
    """Connect to `address` (or RAY_ADDRESS) if given, else start a local Ray instance.

    Does nothing when Ray is already initialised in this process. `num_cpus` only applies to a
    local instance; a cluster's resources are its own. `fault_tolerance` ({name: count} as in
    `FAULT_TOLERANCE`) sets the retries of the actors and tasks this process starts from now on.
    """
    import ray

    _fault_tolerance.update(fault_tolerance or {})
    _apply_data_context()
    # Actor restarts and task retries have no named parameter in Ray Data's map_batches: they go
    # as remote args, which Ray 2.60 accepts with a deprecation warning on every stage.
    warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
    if ray.is_initialized():
        return
    quiet_ray_data()  # each stage prints its own progress line
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # Ray Train's controller polls its workers every 2 s by default and a worker's report
        # waits for the previous one to be collected, so reports closer than that stall training;
        # the daemons of a local instance (and so its workers) inherit this environment.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False)
    interrupt.reclaim()  # ray.init takes SIGTERM over; a stopped command must still keep its work


def _apply_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.max_errored_blocks = 0
    ctx.actor_task_retry_on_errors = False


def actor_fault_tolerance() -> dict:
    """Ray remote args of the stages' actors (Ray Data actor pools): restarts after the actor's
    process or node died, and retries of the tasks it held."""
    return {
        "max_restarts": _fault_tolerance["actor_restarts"],
        "max_task_retries": _fault_tolerance["actor_task_retries"],
    }


def task_fault_tolerance() -> dict:
    """Ray remote args of the stages' tasks (Ray Data task pools, writes): reruns after the task's
    process or node died."""
    return {"max_retries": _fault_tolerance["task_retries"]}


def require_ray(what: str) -> None:
    """`LorabatchError` unless Ray is initialised in this process (by an entry point's `ensure_ray`)."""
    import ray

    if not ray.is_initialized():
        raise LorabatchError(
            f"{what} runs on Ray, which this process has not connected to: call "
            "lorabatch.raysession.ensure_ray() first (every lorabatch command does), or choose the 'local' executor"
        )


def actor_pool_size(concurrency: int | str, num_cpus: float, num_gpus: float, items: int) -> int:
    """The actors of a pool: `concurrency`, or for 'auto' as many as the cluster's resources hold.

    'auto' = ⌊cluster GPUs / num_gpus⌋ when the actors take GPUs, else ⌊cluster CPUs / num_cpus⌋,
    at least 1 and at most `items` (an actor without work only costs its start).
    """
    import ray

    if concurrency != "auto":
        return int(concurrency)
    resources = ray.cluster_resources()
    held = resources.get("GPU", 0) / num_gpus if num_gpus else resources.get("CPU", 1) / num_cpus
    return max(1, min(int(held), items))


class NodeWatch:
    """While a run is under way, say in one line when a node of the cluster is lost, and keep a
    record (`events`: node id, address, stage, time; `retries`: tasks Ray retried) for the run
    directory.

    Ray retries the lost node's work on the others (`FAULT_TOLERANCE`); what it prints meanwhile —
    the raylet's state dump and one line per retried task — is replaced by these lines. A node
    is reported when Ray's message that it was marked dead arrives, or when the control plane no
    longer lists it alive, whichever comes first. `stage` is set by the caller as the run moves on."""

    def __init__(self, period_s: float = 1.0) -> None:
        import threading

        self.period_s = period_s
        self.stage = ""
        self.events: list[dict] = []
        self.retries = 0
        self._alive: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lorabatch-node-watch", daemon=True)

    def __enter__(self) -> "NodeWatch":
        global _watch
        self._alive = self._alive_nodes()
        _quiet_fault_messages()
        _watch = self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _watch
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.check()  # a loss in the last period
        except Exception:  # Ray may be gone already (the run was stopped)
            pass
        _watch = None

    @staticmethod
    def _alive_nodes() -> dict[str, str]:
        import ray

        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception as err:  # the control plane may answer again
                _log.debug(f"node watch: {err!r}")

    def check(self) -> None:
        """Report every node that was alive at the last check and is not now; watch the nodes that
        joined since (a replacement node can be lost too)."""
        now = self._alive_nodes()
        with self._lock:
            known = set(self._alive) | {e["node_id"] for e in self.events}
            self._alive.update({n: a for n, a in now.items() if n not in known})
        for node_id in list(self._alive):
            if node_id not in now:
                self.lost(node_id, remaining=len(now))

    def lost(self, node_id: str, remaining: int | None = None) -> None:
        """Record and report node `node_id` as lost (once)."""
        import time

        with self._lock:
            if node_id not in self._alive:
                return
            address = self._alive.pop(node_id)
            self.events.append({"node_id": node_id, "address": address, "stage": self.stage, "at": time.time()})
        left = remaining if remaining is not None else len(self._alive)
        _log.warning(
            f"node {address} ({node_id[:8]}) was lost during {self.stage or 'the run'}: "
            f"its work is retried on the remaining {left} node(s)"
        )

    def retried(self) -> None:
        with self._lock:
            self.retries += 1
            first = self.retries == 1
        if first:
            _log.warning("a Ray worker process or node was lost: its tasks are retried (ray.fault_tolerance)")


_watch: NodeWatch | None = None
_NODE_DEAD = re.compile(r"node id: ([0-9a-f]{56}) .*has been marked dead")
_RETRIED = ("retries remaining, so the task will be retried", "A worker died or was killed while executing a task")
_FAULT_NOISE = ("Raylet is terminated", "has been marked dead", *_RETRIED)


def _on_fault_message(line: str) -> None:
    watch = _watch
    if watch is None:
        return
    dead = _NODE_DEAD.search(line)
    if dead:
        watch.lost(dead.group(1))
    elif any(r in line for r in _RETRIED):
        watch.retried()


def _quiet_fault_messages() -> None:
    """Turn the messages Ray's raylets send the driver about a lost node or a retried task into
    `NodeWatch`'s lines; every other message is printed as Ray would."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "lorabatch_quiet", False):
        return  # (a Ray without this private hook prints its messages as they are)

    def print_to_stdstream(data, ignore_prefix):
        if data.get("pid") == "raylet":
            lines = []
            for line in data.get("lines", []):
                if any(n in line for n in _FAULT_NOISE):
                    _on_fault_message(line)
                else:
                    lines.append(line)
            if not lines:
                return
            data = {**data, "lines": lines}
        original(data, ignore_prefix)

    print_to_stdstream.lorabatch_quiet = True
    ray_worker.print_to_stdstream = print_to_stdstream
