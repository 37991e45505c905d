"""What losing nodes and processes costs a sweep and a training run on a multi-node Ray cluster.

    python -m bench.node_faults          # runs `pytest -m multinode tests/sweep/test_multinode.py`

The multi-node tests start a head holding no CPU and two worker nodes on this machine (loopback
only), run the sweep once undisturbed and once with faults — during features, few-shot and
generation, a worker node's raylet killed (a replacement node joins) and a stage actor killed on
another node — then `lorabatch train --workers 2` undisturbed and with rank 0 killed mid-run.
This prints one row per fault with the rows lost and duplicated (both must be 0) and the extra
wall time it cost against the undisturbed run of the same invocation (the baseline), the training
resume, the whole module's wall time and how loaded the machine was (load average before, after).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]

TABLE_ROWS = ("stage", "features", "fewshot", "generation", "whole")


def main() -> int:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()
    started = time.monotonic()
    # A base temp of its own: other pytest sessions on the machine rotate the shared one.
    with tempfile.TemporaryDirectory(prefix="node-faults-") as basetemp:
        cmd = [sys.executable, "-m", "pytest", "-m", "multinode", "tests/sweep/test_multinode.py", "-s", "-q"]
        cmd += ["-p", "no:cacheprovider", "--basetemp", basetemp]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    out = proc.stdout + proc.stderr
    lines = out.splitlines()
    report, keep = [], False
    for line in lines:
        if "= FAILURES =" in line:  # what follows quotes the tests' source
            break
        if "[multinode]" in line:  # pytest's progress dots may precede it on the line
            line = line[line.index("[multinode]") :]
            keep = "fault costs" in line  # the table's rows follow its title
            report.append(line)
        elif keep and line.split()[:1] and line.split()[0] in TABLE_ROWS:
            report.append(line)
        else:
            keep = False
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print("\n".join(report) if report else "(the tests printed no fault report)")
    print(f"multinode module: {wall:.0f} s wall, pytest exit code {proc.returncode}")
    if proc.returncode != 0:
        print(out[-6000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
