"""The README's main command, timed end to end in a fresh clone, with where the time went.

    python -m bench.main_command                 # clone this checkout's HEAD into a temp dir and run it
    python -m bench.main_command --keep          # keep the clone (its runs/demo and demo-bank)

The command is read from the README (the block between the main-command markers), exactly as a
user copies it, and run with bash in a `git clone` of HEAD: a fresh virtual environment, the
installation, the demo bank build and the sweep. Nothing of this checkout is reused (no venv, no
bank, no run directory); pip's own download cache is whatever the machine has.

Phases: installation (until pip's "Successfully installed" line), the demo bank (nothing when the
shipped one is used; else its `demo_bank.json` timings), every sweep stage
(`RUN/stages/<stage>.json`), and the rest (interpreter and Ray start-up, logging, copying the shipped
demo bank). Goal: the whole command ≤ 5 minutes on 2 cores, the sweep alone ≤ 2 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine_line

REPO = Path(__file__).resolve().parents[1]

GOAL_S = 300.0
SWEEP_GOAL_S = 120.0


def readme_block(marker: str) -> str:
    """The shell command between `<!-- marker -->` and `<!-- /marker -->` in README.md."""
    lines = (REPO / "README.md").read_text().splitlines()
    start, end = lines.index(f"<!-- {marker} -->"), lines.index(f"<!-- /{marker} -->")
    return "\n".join(line for line in lines[start + 1 : end] if not line.startswith("```"))


def run_timed(command: str, cwd: Path, log_path: Path) -> tuple[int, float, float | None]:
    """Run `command` with bash in `cwd`, its output to `log_path`; (exit code, wall seconds,
    seconds until pip reported the installation done, or None)."""
    started = time.perf_counter()
    installed = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.write(line)
            if installed is None and line.startswith("Successfully installed"):
                installed = time.perf_counter() - started
        code = proc.wait()
    return code, time.perf_counter() - started, installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    args = parser.parse_args()
    command = readme_block("main-command")
    work = Path(tempfile.mkdtemp(prefix="lorabatch-main-command-"))
    clone = work / "clone"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        print(f"machine: {machine_line()}", flush=True)
        print(f"commit {head.stdout.strip()}; command: {command}", flush=True)
        code, total, installed = run_timed(command, clone, work / "main-command.log")
        if code != 0:
            tail = (work / "main-command.log").read_text().splitlines()[-30:]
            print("\n".join(tail))
            sys.exit(f"the main command failed (exit {code}); log: {work / 'main-command.log'}")
        rows: list[tuple[str, float]] = []  # phases that add up; "of which" rows are parts of the one above
        if installed is not None:
            rows.append(("installation (pip)", installed))
        manifest = clone / "demo-bank" / "demo_bank.json"
        record = json.loads((clone / "lorabatch" / "demo" / "shipped" / "record.json").read_text())
        shipped = hashlib.sha256(manifest.read_bytes()).hexdigest() == record["files"]["demo_bank.json"]
        if shipped:
            print("demo bank: the shipped one, checked and copied (no build; its time is in 'the rest')")
        else:
            bank = json.loads(manifest.read_text())
            timings = bank["timings_s"]
            rows.append(("demo bank built, in all", timings["total"]))
            parts = {
                "pretrain": "pre-training",
                "instruct": "instruction phase",
                "lora": "task LoRAs",
                "accept": "acceptance",
            }
            rows += [(f"  of which {label}", timings[key]) for key, label in parts.items() if key in timings]
        stages = sorted(
            (json.loads(p.read_text()) for p in (clone / "runs" / "demo" / "stages").glob("*.json")),
            key=lambda s: s["finished_at"],
        )
        rows += [(f"sweep stage: {s['stage']}", s["seconds"]) for s in stages]
        counted = sum(seconds for name, seconds in rows if not name.startswith("  of which"))
        rows.append(("the rest (Python and Ray start-up, bank validation, logging)", total - counted))
        print("\n| phase | seconds |\n|---|---:|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.1f} |")
        print(f"| **the whole command** | **{total:.1f}** ({int(total // 60)} min {total % 60:.0f} s) |")
        sweep = sum(s["seconds"] for s in stages)
        print(f"\ngoal ≤ {GOAL_S / 60:.0f} min on 2 cores: {'met' if total <= GOAL_S else 'NOT met'}")
        print(
            f"sweep stages {sweep:.0f} s; goal ≤ {SWEEP_GOAL_S:.0f} s: {'met' if sweep <= SWEEP_GOAL_S else 'NOT met'}"
        )
    finally:
        if args.keep:
            print(f"kept: {clone}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
