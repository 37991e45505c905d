"""Processes of one test: find them by session, end them by pid, and give Ray a private corner.

Tests start the sweep (and `ray start`) in a new session (`start_new_session=True`), so every
process it spawns shares that session id — Ray's daemons and workers included, even though
workers sit in process groups of their own. A job driver started by Ray's job supervisor opens a
new session, but it stays a descendant of the supervisor; `session_tree` collects both. Ending
processes by these pids (never by name) leaves other Ray instances on the machine alone.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path


def session_pids(sid: int) -> set[int]:
    """Pids of the live processes whose session id is `sid`."""
    import psutil

    out = set()
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                out.add(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return out


def session_tree(sid: int) -> set[int]:
    """Live processes of session `sid` plus all their descendants (which may have left it)."""
    import psutil

    pids = session_pids(sid)
    for pid in list(pids):
        try:
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return {p for p in pids if _alive(p)}


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def end_session(sid: int, grace_s: float = 10.0) -> set[int]:
    """SIGTERM every process of `session_tree(sid)`, SIGKILL what is left after `grace_s`.

    Returns the pids still alive at the end (empty when all are gone)."""
    pids = session_tree(sid)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids | session_tree(sid)):
        time.sleep(0.2)
    return kill_session(sid, known=pids)


def kill_session(sid: int, known: set[int] = frozenset(), wait_s: float = 30.0) -> set[int]:
    """SIGKILL every process of `session_tree(sid)` (and `known` pids) until none is alive or
    `wait_s` has passed; returns the pids still alive."""
    deadline = time.monotonic() + wait_s
    while True:
        left = {p for p in known if _alive(p)} | session_tree(sid)
        if not left or time.monotonic() >= deadline:
            return left
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.2)


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that were free on `host` a moment ago."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            if s.getsockname()[1] not in ports:
                ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def private_ray_env(base: dict | None = None, ray_tmp: str | Path | None = None) -> dict[str, str]:
    """An environment in which `ray.init()` / `ray start` use their own temp dir (a short path:
    Ray's Unix sockets live under it) and so neither find nor disturb another local Ray."""
    env = dict(os.environ if base is None else base)
    for key in ("RAY_ADDRESS", "RAY_JOB_ID"):
        env.pop(key, None)
    env["RAY_TMPDIR"] = str(ray_tmp or tempfile.mkdtemp(prefix="lbray-", dir="/tmp"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def start_in_session(cmd: list[str], env: dict, log_path: str | Path, cwd: str | Path | None = None):
    """Popen `cmd` as the leader of a new session, stdout and stderr appended to `log_path`.
    The returned process's pid is the session id of everything it spawns."""
    import subprocess

    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_in_session(
    cmd: list[str], env: dict, log_path: str | Path, timeout: float, cwd: str | Path | None = None
) -> int:
    """Run `cmd` to completion in a new session; afterwards no process of that session is left
    (stragglers are killed, and an error is raised if any survives). Returns the exit status."""
    import subprocess

    proc = start_in_session(cmd, env, log_path, cwd)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        left = kill_session(proc.pid)
        if left:
            raise RuntimeError(f"processes of session {proc.pid} survived SIGKILL: {sorted(left)}")
