"""Ray job entrypoint of the sweep.

    ray job submit --working-dir . -- python jobs/sweep.py --config configs/paper.yaml \
        --run-dir /mnt/shared/runs/paper

Inside a Ray job, RAY_ADDRESS is set by the job server, so the sweep attaches to the cluster
instead of starting Ray in-process. The run directory must be on storage that every node sees
(adapters are read by the GPU workers through their absolute paths).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--run-dir", help="override the config's run_dir (shared storage on a cluster)")
    parser.add_argument("--wait", action="store_true", help="wait for another command using the run directory instead of refusing to start")
    args = parser.parse_args(argv)

    import lorabatch
    from lorabatch.config import load_config
    from lorabatch.errors import LorabatchError
    from lorabatch.runlock import run_lock
    from lorabatch.sweep.run import run_sweep

    overrides = {}
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    if os.environ.get("RAY_ADDRESS"):
        overrides["ray.address"] = "auto"
    # Which interpreter and which copy of the package run (the working dir a job uploaded, or an
    # installed one) is the first thing to know when a cluster job misbehaves.
    print(
        f"[lorabatch] job: python {sys.executable}, lorabatch from {Path(lorabatch.__file__).parent}, "
        f"Ray at {os.environ.get('RAY_ADDRESS') or 'a new local instance'}",
        flush=True,
    )
    try:
        config = load_config(args.config, overrides)
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not config.run_dir.is_absolute():  # set by the job server
            # The job's working directory is Ray's temporary copy of --working-dir: a relative
            # run directory would be written there and vanish with it.
            raise LorabatchError(
                f"run_dir {str(config.run_dir)!r} is relative; inside a Ray job the working directory is a "
                "temporary copy, so pass an absolute --run-dir on storage every node sees"
            )
        with run_lock(config.run_dir, command=f"jobs/sweep.py --config {args.config}", wait=args.wait):
            run_sweep(config)
    except LorabatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
