"""A throwaway multi-node Ray cluster on one machine: a head holding no CPU and worker raylets
with their own CPUs, each node a `ray start` of its own, so every stage's work must run on the
workers, and a worker can be lost (its raylet killed) while the others go on.

    with LoopbackNetwork() as net, MultiNodeCluster(ray_bin, net, workers=2) as cluster:
        cluster.ray("job", "submit", "--address", cluster.dashboard_url, ...)
        cluster.kill_raylet(cluster.workers[0])

Where this process may (root, `unshare` and `nsenter` present), the cluster lives in a network
namespace of its own whose only interface is loopback: nothing outside the machine can reach it
or be reached from it, and its ports cannot collide with another cluster's. Elsewhere it binds
127.0.0.1 of the machine. Ray refuses a second node on one address unless it believes clusters
are on (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`); token authentication (`RAY_AUTH_MODE`,
`RAY_AUTH_TOKEN`) is set on every process, so nothing under ~/.ray is read or written. Each node
is a session of its own: stopping ends exactly its processes, by pid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.processes import end_session, free_ports, private_ray_env, session_tree

HOST = "127.0.0.1"


class LoopbackNetwork:
    """A network namespace with only `lo` up, held open by a sleeping process; `prefix` runs a
    command inside it (empty when namespaces are not available here: then the machine's 127.0.0.1)."""

    def __init__(self) -> None:
        self.holder: subprocess.Popen | None = None
        self.prefix: list[str] = []

    @staticmethod
    def possible() -> bool:
        return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "nsenter", "ip"))

    def __enter__(self) -> "LoopbackNetwork":
        if self.possible():
            holder = subprocess.Popen(
                ["unshare", "-n", "sh", "-c", "ip link set lo up && echo ready && exec sleep 86400"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            if holder.stdout.readline().strip() == "ready":
                self.holder = holder
                self.prefix = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
            else:
                holder.kill()
                holder.wait()
        return self

    def __exit__(self, *exc) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


@dataclass
class Node:
    name: str
    sid: int  # session id of its `ray start`: every daemon and worker of the node carries it
    num_cpus: int


class MultiNodeCluster:
    def __init__(
        self,
        ray_bin: str | Path,
        net: LoopbackNetwork,
        workers: int = 2,
        cpus_per_worker: int = 1,
        hidden: dict[int, Path] | None = None,
    ):
        """`hidden` {worker index: directory}: that worker node sees an empty file system mounted
        over the directory (a node that lacks the shared storage); needs a mount namespace."""
        self.ray_bin = str(ray_bin)
        self.net = net
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lbmn-", dir="/tmp"))
        self.env = private_ray_env(None, self.temp_dir)
        self.env["PATH"] = f"{Path(self.ray_bin).parent}:{self.env.get('PATH', '')}"
        self.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
        self.env["RAY_AUTH_MODE"] = "token"
        self.env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        # A lost node is declared dead after ~3 s instead of Ray's default ~30 s.
        self.env["RAY_health_check_period_ms"] = "1000"
        self.env["RAY_health_check_timeout_ms"] = "1000"
        self.env["RAY_health_check_failure_threshold"] = "3"
        self.n_workers, self.cpus_per_worker = workers, cpus_per_worker
        self.hidden = hidden or {}
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.head: Node | None = None
        self.workers: list[Node] = []
        self.lost: set[str] = set()  # names of the workers whose raylet was killed
        self._next_worker_port = 20000

    @property
    def address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def command(self, *args: str) -> list[str]:
        """`args` as run inside the cluster's network."""
        return [*self.net.prefix, *args]

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The `ray` CLI against this cluster (output captured as text)."""
        return subprocess.run(
            self.command(self.ray_bin, *args), env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def _start_node(self, name: str, num_cpus: int, head: bool, hide: Path | None = None) -> Node:
        node_manager, object_manager, runtime_env, agent_http, agent_grpc, metrics = free_ports(6)
        low = self._next_worker_port
        self._next_worker_port += 200  # worker ports of each node apart from the others'
        cmd = [self.ray_bin, "start", "--disable-usage-stats", "--node-ip-address", HOST, "--num-cpus", str(num_cpus)]
        cmd += [
            "--num-gpus",
            "0",
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
        ]
        cmd += ["--runtime-env-agent-port", str(runtime_env), "--dashboard-agent-listen-port", str(agent_http)]
        cmd += ["--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics)]
        cmd += ["--min-worker-port", str(low), "--max-worker-port", str(low + 199)]
        if head:
            (client,) = free_ports(1)
            cmd += ["--head", "--port", str(self.gcs_port), "--ray-client-server-port", str(client)]
            cmd += [
                "--include-dashboard",
                "true",
                "--dashboard-host",
                HOST,
                "--dashboard-port",
                str(self.dashboard_port),
            ]
            cmd += ["--temp-dir", str(self.temp_dir)]
        else:
            # A temp dir of its own, as on a machine of its own: nodes sharing one would also share
            # runtime_resources/, and one node's runtime-env agent replaces the working_dir
            # another node's job driver is importing from.
            cmd += ["--address", self.address, "--temp-dir", str(self.temp_dir / name)]
        if hide is not None:  # a mount namespace of its own, with an empty tmpfs over `hide`
            cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide), *cmd]
        for attempt in range(2):
            proc = subprocess.Popen(
                self.command(*cmd),
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            node = Node(name, proc.pid, num_cpus)
            out, _ = proc.communicate(timeout=180)
            if proc.returncode == 0:
                return node
            end_session(node.sid)
            # `ray start` gives its raylet a fixed 30 s to register, which a loaded machine can miss.
            if attempt or "timed out during startup" not in out:
                raise RuntimeError(f"ray start of {name} failed ({proc.returncode}):\n{out}")
        raise AssertionError("unreachable")

    def add_worker(self) -> Node:
        """Start one more worker node (a replacement for a lost one) and join it to the cluster."""
        node = self._start_node(f"worker{len(self.workers) + 1}", self.cpus_per_worker, head=False)
        self.workers.append(node)
        return node

    @property
    def live_workers(self) -> list[Node]:
        """The worker nodes whose raylet has not been killed."""
        return [w for w in self.workers if w.name not in self.lost]

    def start(self) -> "MultiNodeCluster":
        try:
            self.head = self._start_node("head", 0, head=True)
            for k in range(self.n_workers):
                self.workers.append(
                    self._start_node(f"worker{k + 1}", self.cpus_per_worker, head=False, hide=self.hidden.get(k))
                )
        except BaseException:
            self.stop()
            raise
        return self

    def nodes(self) -> list[dict]:
        """Ray's state API view of the nodes (node_id, node_ip, is_head_node, state, resources_total)."""
        out = self.ray("list", "nodes", "--address", self.dashboard_url, "--format", "json", "--limit", "100")
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
        return json.loads(out.stdout)

    def node_id_of(self, node: Node) -> str:
        """The Ray node id of `node` (its raylet is started with it)."""
        import psutil

        for arg in psutil.Process(self.raylet_pid(node)).cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise LookupError(f"no node id on the raylet of {node.name}")

    def state(self, kind: str, *filters: str) -> list[dict]:
        """`ray list <kind> --detail` as JSON (actors, tasks), with `--filter` expressions."""
        args = ["list", kind, "--address", self.dashboard_url, "--format", "json", "--detail", "--limit", "10000"]
        for f in filters:
            args += ["--filter", f]
        out = self.ray(*args)
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
        return json.loads(out.stdout)

    def raylet_pid(self, node: Node) -> int:
        import psutil

        for pid in session_tree(node.sid):
            try:
                if psutil.Process(pid).name() == "raylet":
                    return pid
            except psutil.NoSuchProcess:
                continue
        raise LookupError(f"no raylet in {node.name}")

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the raylet of `node`, as when its machine goes away; returns the raylet's pid.
        Its workers notice and exit; the head declares the node dead."""
        pid = self.raylet_pid(node)
        os.kill(pid, signal.SIGKILL)
        self.lost.add(node.name)
        return pid

    def processes_named(self, node: Node, fragment: str) -> list[int]:
        """Pids of `node`'s processes whose command line holds `fragment` (Ray titles a worker
        process `ray::<its actor or task>`)."""
        import psutil

        found = []
        for pid in session_tree(node.sid):
            try:
                if fragment in " ".join(psutil.Process(pid).cmdline()):
                    found.append(pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self) -> set[int]:
        """End every process of every node; returns pids that would not die (empty if none)."""
        left: set[int] = set()
        for node in [*self.workers, *([self.head] if self.head else [])]:
            left |= end_session(node.sid)
        self.workers, self.head = [], None
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def __enter__(self) -> "MultiNodeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
