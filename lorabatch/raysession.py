"""One way to get a Ray connection: attach to a cluster, or start Ray in this process.

Only the entry points call `ensure_ray`: the `lorabatch` commands, `jobs/sweep.py`, and the
functions the commands are thin wrappers of, each a whole command's work in the Python API —
`sweep.run.run_sweep`, `training.adapter.train_adapter`, `bank.extend.extend_bank` and
`demo.build.build_demo_bank` (the last three through `training.trainer.ensure_training_ray`, which
sizes a local instance for the training jobs, and only when they have something to train). The
stages use the connection they find (`require_ray`) and never start one.
"""

from __future__ import annotations

import os

from lorabatch.errors import LorabatchError


def ensure_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Connect to `address` (or RAY_ADDRESS) if given, else start a local Ray instance.

    Does nothing when Ray is already initialised in this process. `num_cpus` only applies to a
    local instance; a cluster's resources are its own.
    """
    import ray

    from lorabatch.progress import quiet_ray_data

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
