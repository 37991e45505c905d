"""The shared-storage contract, checked: on a cluster, every node that will hold work must see the
run directory (adapters are loaded by path, results written there from the workers).

At the start of a sweep a token file is written into RUN/, and a zero-CPU task pinned to each alive
node that holds CPUs or GPUs reads it back. A node that cannot — another file system mounted
there, a mount missing — stops the sweep before any work with an error naming it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from lorabatch.atomic import write_text
from lorabatch.errors import LorabatchError
from lorabatch.generation.backends import ray_is_local

PROBE_TIMEOUT_S = 300.0  # a node that cannot even start a task is a fault of its own; do not wait forever


class SharedStorageError(LorabatchError):
    """A node of the cluster cannot see the run directory."""


def _read_probe(path: str, token: str) -> str | None:
    """On the node: None if `path` holds `token`, else what went wrong."""
    try:
        found = Path(path).read_text()
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    return None if found == token else f"{path} holds other content (another file system is mounted there?)"


def check_shared_storage(run_dir: str | Path) -> int:
    """Raise `SharedStorageError` naming every work-holding node of the connected cluster that
    cannot read a file just written into `run_dir`; returns the number of nodes checked (0 when Ray
    runs on this machine alone: nothing to check)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if ray_is_local():
        return 0
    nodes = [
        n
        for n in ray.nodes()
        if n.get("Alive") and (n.get("Resources", {}).get("CPU", 0) or n.get("Resources", {}).get("GPU", 0))
    ]
    token = uuid.uuid4().hex
    probe = Path(run_dir).resolve() / f".storage-probe-{token}"
    write_text(probe, token)
    read = ray.remote(num_cpus=0, max_retries=0)(_read_probe)
    try:
        refs = [
            read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(probe), token
            )
            for n in nodes
        ]
        answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    finally:
        probe.unlink(missing_ok=True)
    blind = [
        f"node {n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]}): {why}" for n, why in zip(nodes, answers) if why
    ]
    if blind:
        raise SharedStorageError(
            f"the run directory {Path(run_dir).resolve()} is not visible from every node of the cluster:\n  "
            + "\n  ".join(blind)
            + "\nput run_dir on storage every node mounts at the same path (README: Paper-scale sweep on a Ray cluster)"
        )
    return len(nodes)
