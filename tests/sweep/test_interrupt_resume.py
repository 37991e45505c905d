"""A sweep killed mid-generation (kill -9 of the driver's process group, Ctrl-C or SIGTERM) resumes: the
re-run generates only the missing rows, every (task, setting, example) ends up exactly once, and
the scores equal those of a run that was never interrupted."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from lorabatch.generation.schema import KEY_COLUMNS
from lorabatch.generation.store import generation_files, read_generations
from lorabatch.layout import RunLayout
from lorabatch.sweep.stages import read_marker
from lorabatch.sweep.status import status_lines
from tests.helpers.processes import kill_session, run_in_session, session_tree, start_in_session

PLANNED = 4 * 4 * 30  # tasks × settings (base, oracle, JS-attentional, JS-normalized) × test examples


def _sweep_cmd(config) -> list[str]:
    return [sys.executable, "-m", "lorabatch.cli", "sweep", str(config)]


def _keys(table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS)))


def _raw_rows(run) -> int:
    """Rows in the part files as they lie on disk (before the store's de-duplication)."""
    return sum(pq.read_metadata(f).num_rows for f in generation_files(run))


def _wait_for_parts(proc, run, log, n: int = 3) -> None:
    """Until generation has written `n` part files (of 120: it is well under way, far from done)."""
    while len(generation_files(run)) < n:
        if proc.poll() is not None:
            pytest.fail(
                f"the sweep exited ({proc.returncode}) before generation wrote {n} part files:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.05)


def _wait_for_session_to_end(sid: int, limit_s: float = 60.0) -> set[int]:
    """Processes of session `sid` still alive once it emptied or `limit_s` passed."""
    deadline = time.monotonic() + limit_s
    while (left := session_tree(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _interrupt(proc, how: str) -> None:
    if how == "kill":
        # kill -9 of the driver's process group: the driver and the Ray daemons it started.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        # Ray workers sit in process groups of their own; they go when their raylet goes, and
        # whatever has not gone after a minute is killed here so that nothing outlives the test.
        lingering = _wait_for_session_to_end(proc.pid)
        print(f"[kill] processes of the sweep alive after kill -9 of its group (waited ≤ 60 s): {len(lingering)}")
        assert kill_session(proc.pid) == set()
    else:
        # Ctrl-C in a terminal: SIGINT to the foreground process group; `timeout` and a container
        # runtime send SIGTERM to it. Either stops the sweep with its documented status.
        sig, status = (signal.SIGINT, 130) if how == "sigint" else (signal.SIGTERM, 143)
        if how == "sigint":
            os.killpg(proc.pid, sig)
        else:
            # `timeout` signals its child only. (SIGTERM to the whole group also reaches the local
            # raylet; when it dies first, Ray's core worker can end the driver with status 1
            # before lorabatch's own exit — a race, seen once in this test.)
            os.kill(proc.pid, sig)
        assert proc.wait(timeout=180) == status  # interrupted, not finished
        lingering = _wait_for_session_to_end(proc.pid)
        assert kill_session(proc.pid) == set()
        # An interrupted sweep shuts its Ray instance down: no daemon or worker is left running.
        assert not lingering, f"processes of the sweep outlived Ctrl-C: {sorted(lingering)}"


def _summary(run) -> list[dict]:
    return pq.read_table(RunLayout(run).score_table("summary")).to_pylist()


def _assert_same_summary(a: list[dict], b: list[dict]) -> None:
    assert [r["setting"] for r in a] == [r["setting"] for r in b]
    assert set(a[0]) == set(b[0])
    for ra, rb in zip(a, b):
        for key in ra:
            va, vb = ra[key], rb[key]
            if isinstance(va, float) or isinstance(vb, float):
                np.testing.assert_allclose(va, vb, rtol=0, atol=1e-12, err_msg=f"{ra['setting']}.{key}")
            else:
                assert va == vb, (ra["setting"], key, va, vb)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "sigint", "sigterm"])
def test_interrupted_sweep_resumes_to_the_uninterrupted_result(
    how, interruptible_sweep_config, reference_sweep, ray_env, tmp_path
):
    run = tmp_path / "run"
    config = interruptible_sweep_config(tmp_path / "sweep.yaml", run)
    log = tmp_path / "sweep.log"

    proc = start_in_session(_sweep_cmd(config), ray_env, log)
    try:
        _wait_for_parts(proc, run, log)
        _interrupt(proc, how)
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_session(proc.pid)

    if how == "sigterm":  # one line from lorabatch, not Ray's stack dump
        text = log.read_text()
        assert "terminated (SIGTERM): stopping; what is finished is kept" in text
        assert "SIGTERM received at time" not in text

    # Interrupted mid-generation: some rows are on disk, not all, and the stage is not marked done.
    assert read_marker(run, "generation") is None
    before = read_generations(run)
    assert 0 < before.num_rows < PLANNED
    raw_before = _raw_rows(run)
    assert raw_before == before.num_rows  # one Ray Data run writes each key once
    status = status_lines(run)
    assert next(line for line in status if line.startswith("generation")).split()[1] == "pending"

    rc = run_in_session(_sweep_cmd(config), ray_env, log, timeout=900)
    text = log.read_text()
    assert rc == 0, text[-5000:]
    # The re-run skipped exactly the rows the interrupted one had written.
    done = re.findall(r"generation \(hf\): (\d+) rows planned, (\d+) already done, (\d+) generated", text)
    assert done and [int(x) for x in done[-1]] == [PLANNED, before.num_rows, PLANNED - before.num_rows]

    # What scoring reads: exactly one row per (task, setting, example), all of the plan.
    rows = read_generations(run)
    reference = read_generations(reference_sweep)
    assert rows.num_rows == len(set(_keys(rows))) == PLANNED
    assert set(_keys(rows)) == set(_keys(reference))
    assert rows.column("error").null_count == rows.num_rows
    # On disk: no key was generated twice (the resume wrote only what was missing).
    raw_after = _raw_rows(run)
    print(f"[{how}] rows on disk: {raw_before} before resume, {raw_after} after; {rows.num_rows} distinct keys")
    assert raw_after == PLANNED

    # Same generations and the same scores as the uninterrupted run.
    ours = dict(zip(_keys(rows), rows.column("generated_token_ids").to_pylist()))
    theirs = dict(zip(_keys(reference), reference.column("generated_token_ids").to_pylist()))
    assert ours == theirs
    _assert_same_summary(_summary(run), _summary(reference_sweep))
    assert pq.read_table(RunLayout(run).score_table("tasks")).equals(
        pq.read_table(RunLayout(reference_sweep).score_table("tasks"))
    )
    assert read_marker(run, "generation")["info"] == {"planned": PLANNED, "failed": 0}
