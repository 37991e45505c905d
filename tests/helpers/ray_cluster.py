"""A throwaway single-node Ray cluster (`ray start --head`) on 127.0.0.1 for job-submission tests.

    with LocalRayCluster(ray_bin, num_cpus=2) as cluster:
        cluster.ray("job", "submit", "--address", cluster.dashboard_url, ...)

Every address is loopback, every port is chosen free, the temp dir is private, and token authentication is set up with a
token of its own (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`) so nothing under ~/.ray is read or
written. Stopping ends exactly the processes of this cluster (its session and their descendants,
by pid): `ray stop` would end every Ray process of the user on the machine, other clusters too.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.processes import end_session, free_ports, private_ray_env

HOST = "127.0.0.1"


class LocalRayCluster:
    def __init__(self, ray_bin: str | Path, num_cpus: int = 2, env: dict | None = None, extra_path: str | None = None):
        self.ray_bin = str(ray_bin)
        self.num_cpus = num_cpus
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lbray-", dir="/tmp"))
        self.env = private_ray_env(env, self.temp_dir)
        # Ray turns --node-ip-address 127.0.0.1 into the machine's routable IP unless it believes
        # clusters are off (its Windows/macOS single-node mode): then every address is loopback.
        self.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        self.env["RAY_AUTH_MODE"] = "token"
        self.env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        if extra_path:
            self.env["PATH"] = f"{extra_path}:{self.env.get('PATH', '')}"
        names = (
            "gcs",
            "dashboard",
            "client",
            "agent_http",
            "agent_grpc",
            "runtime_env",
            "metrics",
            "node_manager",
            "object_manager",
        )
        self.ports = dict(zip(names, free_ports(len(names))))
        self.sid: int | None = None
        self.start_output = ""

    @property
    def address(self) -> str:
        return f"{HOST}:{self.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.ports['dashboard']}"

    def ray(self, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
        """Run the `ray` CLI with this cluster's environment (output captured as text)."""
        return subprocess.run(
            [self.ray_bin, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=check
        )

    def start(self) -> "LocalRayCluster":
        p = self.ports
        cmd = [
            self.ray_bin,
            "start",
            "--head",
            "--disable-usage-stats",
            "--node-ip-address",
            HOST,
            "--num-cpus",
            str(self.num_cpus),
            "--num-gpus",
            "0",
            "--port",
            str(p["gcs"]),
            "--ray-client-server-port",
            str(p["client"]),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(p["dashboard"]),
            "--dashboard-agent-listen-port",
            str(p["agent_http"]),
            "--dashboard-agent-grpc-port",
            str(p["agent_grpc"]),
            "--runtime-env-agent-port",
            str(p["runtime_env"]),
            "--metrics-export-port",
            str(p["metrics"]),
            "--node-manager-port",
            str(p["node_manager"]),
            "--object-manager-port",
            str(p["object_manager"]),
            "--temp-dir",
            str(self.temp_dir),
        ]
        # A session of its own: every daemon (and every worker they fork) carries its id.
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.sid = proc.pid
        self.start_output, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{self.start_output}")
        return self

    def stop(self) -> set[int]:
        """End every process of this cluster; returns pids that would not die (empty if none)."""
        if self.sid is None:
            return set()
        left = end_session(self.sid)
        self.sid = None
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
