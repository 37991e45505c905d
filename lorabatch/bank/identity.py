"""What the bank's files are right now, cheaply: the key the sweep's bank stage caches on.

The manifest (and the validation behind it) is only as good as the files it was built from, so
it is reused only while they are unchanged. Hashing a bank (502 × 27 MB adapters) on every run is
too slow; instead every resolved file is identified by

    (path relative to its repo, path it resolves to, size, mtime_ns, ctime_ns, inode)

which changes whenever a file is rewritten in place or replaced. For a hub bank the resolved path
is `…/snapshots/<revision>/…` → `…/blobs/<sha256 or git oid>`, so the snapshot revision and the
blob of each file are part of it. With `tasks: all` the listing of repos is part of it too (a new
or removed task changes the bank).
"""

from __future__ import annotations

import os
from pathlib import Path

from lorabatch.bank.manifest import resolve_base_model
from lorabatch.bank.resolve import resolve_tasks
from lorabatch.bank.sources import ADAPTER_FILES, DATASET_FILES, RepoSource, make_source


def _file_entries(repo_dir: Path) -> list[list]:
    """Identity of every file under a resolved repo directory (hidden folders such as .cache skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(repo_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.stat()
                resolved = str(path.resolve())
            except OSError:
                out.append([str(path.relative_to(repo_dir)), None])
                continue
            out.append(
                [str(path.relative_to(repo_dir)), resolved, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            )
    return out


def _repo_entry(source: RepoSource, repo_id: str, kind: str, files: list[str]) -> dict:
    path = source.repo_dir(repo_id, kind, files)
    return {"repo": repo_id, "dir": str(Path(path).resolve()), "files": _file_entries(Path(path))}


def bank_files_identity(bank_config) -> dict:
    """The identity of every file the bank's manifest is built from (see the module docstring).

    Raises what resolution raises (`BankResolutionError`, `BankValidationError`) when the bank
    cannot be resolved; the caller then rebuilds, which reports every problem.
    """

    source = make_source(bank_config)
    refs = resolve_tasks(bank_config, source)
    base_dir = resolve_base_model(bank_config, source)
    return {
        "source": source.name,
        "tasks": [r.task_id for r in refs],
        "base_model": {"dir": str(base_dir), "files": _file_entries(base_dir)},
        "adapters": [_repo_entry(source, r.adapter_repo, "model", ADAPTER_FILES) for r in refs],
        "datasets": [_repo_entry(source, r.dataset_repo, "dataset", DATASET_FILES) for r in refs],
    }
