"""One writer per run directory: an exclusive lock on `RUN/run.lock`.

Every command that writes a run's stages (`sweep`, `generate`, `synthesize`, `score`, ...) and
the Ray job entrypoint hold it for their whole run, so that a second one on the same directory
cannot interleave its writes with the first. The lock is `fcntl.flock` on the file, which the
kernel drops when its holder exits or is killed, so a crashed run never leaves the directory
locked; the file's content only says who holds it:

    {"pid": int, "host": str, "command": str, "started_at": ISO-8601 UTC}

The file itself is never removed (removing a locked file would let a second process lock a new
file of the same name). A second command on the same run refuses to start with an error naming
the holder, or with `wait` blocks until the holder is done. Re-entrant within one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from lorabatch.errors import LorabatchError
from lorabatch.layout import RunLayout

log = logging.getLogger(__name__)
_held: dict[str, int] = {}  # resolved run dir -> nesting depth, in this process


class RunLockedError(LorabatchError):
    """Another process holds the run directory's lock."""


def lock_path(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).lock


def read_holder(run_dir: str | Path) -> dict | None:
    """What the lock file says about its (last) holder; None if empty or unreadable."""
    try:
        return json.loads(lock_path(run_dir).read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, "
        f"started {holder.get('started_at')})"
    )


def check_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` as a Path; `LorabatchError` if it exists and is not a directory."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise LorabatchError(f"run directory {run_dir} exists and is not a directory")
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str | None = None, wait: bool = False) -> Iterator[Path]:
    """Hold the lock of `run_dir` (created if absent) for the `with` block.

    Raises `RunLockedError` naming the holder if another process holds it, unless `wait`, in which
    case it says whom it waits for and blocks until the lock is free.
    """
    run_dir = check_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LorabatchError(
            f"cannot create the run directory {run_dir} ({err.strerror}): choose another run_dir / --run-dir"
        ) from None
    key = str(run_dir.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield run_dir
        finally:
            _held[key] -= 1
        return
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise LorabatchError(f"cannot write in the run directory {run_dir} ({err.strerror}): {path}") from None
    try:
        locked = _acquire(fd, run_dir, wait)
        if locked:
            previous = read_holder(run_dir)
            if previous:  # its holder never released it: killed, or its machine went down
                log.info(
                    f"run directory {run_dir}: taking over the lock left by {describe_holder(previous)}, which is no longer held"
                )
            _write_holder(fd, command)
        _held[key] = 1
        try:
            yield run_dir
        finally:
            del _held[key]
            if locked:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _acquire(fd: int, run_dir: Path, wait: bool) -> bool:
    """True once the lock is held; False where the file system cannot lock (run unlocked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    except OSError as err:  # e.g. ENOLCK: a network file system without lock support
        log.warning(
            f"cannot lock {lock_path(run_dir)} ({err.strerror}); nothing keeps a second command from "
            "writing to this run directory at the same time"
        )
        return False
    holder = describe_holder(read_holder(run_dir))
    if not wait:
        raise RunLockedError(
            f"run directory {run_dir} is in use by {holder}; wait for it to finish (or pass --wait), "
            "or use another run directory"
        )
    log.info(f"waiting for run directory {run_dir}, in use by {holder}")
    fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def _write_holder(fd: int, command: str | None) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join(["lorabatch", *sys.argv[1:]]),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
