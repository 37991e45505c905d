"""The sweep as a Ray job, from the copy of the repository the job uploads.

The recipe is the command itself (lorabatch installed on the cluster's nodes):

    ray job submit --working-dir . -- lorabatch sweep configs/paper.yaml --run-dir /mnt/shared/runs/paper

This script is the same command, `lorabatch sweep CONFIG [--run-dir DIR] [--wait]`, for a cluster
where lorabatch is not installed: it runs the uploaded copy (`--working-dir`), not an installed one.

    ray job submit --working-dir . -- python jobs/sweep.py --config configs/paper.yaml --run-dir /mnt/shared/runs/paper
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--run-dir", help="override the config's run_dir (shared storage on a cluster)")
    parser.add_argument("--wait", action="store_true", help="wait for another command using the run directory")
    args = parser.parse_args(argv)

    from lorabatch.cli import main as lorabatch

    sys.argv = [
        "lorabatch",
        "sweep",
        args.config,
        *(["--run-dir", args.run_dir] if args.run_dir else []),
        *(["--wait"] if args.wait else []),
    ]
    lorabatch()


if __name__ == "__main__":
    main()
