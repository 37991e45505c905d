"""Atomic directory writes: all or nothing, and no hidden leftovers from writers killed outright."""

import os
import socket
import subprocess
import sys

import pytest

from lorabatch.atomic import atomic_dir


def test_failed_write_leaves_target_untouched(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "a.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_orphans_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "bank"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = socket.gethostname()
    orphan = tmp_path / f".bank.{host}-{dead}.abc123.tmp"
    live = tmp_path / f".bank.{host}-{os.getpid()}.def456.tmp"  # another write of this process, in flight
    other_host = tmp_path / f".bank.elsewhere-{dead}.ghi789.tmp"  # cannot tell from here: kept
    for d in (orphan, live, other_host):
        (d / "lorabatch-demo").mkdir(parents=True)
    with atomic_dir(target) as d:
        (d / "ok").write_text("1")
    assert not orphan.exists()
    assert live.exists() and other_host.exists()
    assert (target / "ok").read_text() == "1"


def test_sigkilled_writer_leaves_nothing_after_next_write(tmp_path):
    target = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "from lorabatch.atomic import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as d:\n"
        "    (d / 'half').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)])
    assert proc.returncode == -9
    assert not target.exists() and len(list(tmp_path.glob(".out.*.tmp"))) == 1
    with atomic_dir(target) as d:
        (d / "whole").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_results_get_the_permissions_of_ordinary_new_files_under_the_umask(tmp_path, umask):
    import pyarrow as pa

    from lorabatch.atomic import current_umask, write_json, write_parquet

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_json(tmp_path / "provenance.json", {"a": 1})
        write_parquet(tmp_path / "rows.parquet", pa.table({"x": [1, 2]}))
        with atomic_dir(tmp_path / "adapter") as d:
            (d / "adapter_config.json").write_text("{}")
    finally:
        os.umask(old)
    # mkstemp / mkdtemp make 0600 / 0700: a colleague or another node's uid could not read these.
    assert (tmp_path / "provenance.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "rows.parquet").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o777 & ~umask
