"""Atomic writes: data goes to a temporary file in the target's directory, then `os.replace`.

An interrupted write therefore never leaves a half-written file under the final name; readers
see either the old content or the complete new one. The result gets the permissions of an ordinary
new file or directory (0666 / 0777 less the umask): `mkstemp` and `mkdtemp` create theirs 0600 /
0700, which on shared storage would hide results from the other nodes and users of a run.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def current_umask() -> int:
    """The process's umask. Read from /proc where it can be: `os.umask` can only read it by
    setting it, and a file another thread creates in between would get the wrong mode."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(target: str | os.PathLike, table) -> None:
    """Write a pyarrow Table (or pandas DataFrame) to Parquet atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(target, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def write_npy(target: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(target, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def _owner_tag(pid: int) -> str:
    return f"{socket.gethostname()}-{pid}"


def _remove_orphans(target: Path) -> None:
    """Remove temporary directories of `target` left by dead writers on this host."""
    host = socket.gethostname()
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.{glob.escape(host)}-*.tmp"):
        pid = tmp.name[len(f".{target.name}.{host}-") :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, check_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` whole.

    `check_replace(target)`, if given, is called right before an existing `target` is replaced
    and may raise to keep it (e.g. a directory holding files this writer does not own).

    On failure the temporary directory is removed and `target` is left as it was (absent if it
    was absent), so a failed write never leaves a directory that looks complete. A writer killed
    outright (SIGKILL) cannot clean up: its hidden directory, named after its host and pid, is
    removed by the next write of the same target once that process is gone.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    prefix = f".{target.name}.{_owner_tag(os.getpid())}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if target.exists() or target.is_symlink():
            if check_replace is not None:
                check_replace(target)
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
