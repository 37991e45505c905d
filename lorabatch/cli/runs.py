"""`lorabatch sweep | status`: the whole leave-one-out experiment on a run directory, and its state."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

import lorabatch
from lorabatch.cli.common import AddressOption, RunDirOption, SetOption, WaitOption, command_lock, config_overrides
from lorabatch.errors import LorabatchError

commands = typer.Typer()


@commands.command("sweep")
def sweep(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/demo.yaml."),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    wait: WaitOption = False,
):
    """The leave-one-out experiment over the whole bank, each stage cached in the run directory."""
    from lorabatch.config import load_config
    from lorabatch.fewshot.stage import format_costs
    from lorabatch.generation.backends import require_backend
    from lorabatch.scoring.aggregate import format_summary
    from lorabatch.sweep.run import run_sweep

    cfg = load_config(config, config_overrides(sets, run_dir=run_dir, address=address))
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # set by the Ray job server
        _check_job(cfg)
    require_backend(cfg.generation.backend, local=not (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    with command_lock(cfg.run_dir, wait, "sweep", config):
        summary = run_sweep(cfg)
    typer.echo(format_summary(summary))
    costs = format_costs(cfg.run_dir)
    if costs:
        typer.echo(costs)


def _check_job(cfg) -> None:
    """Inside a Ray job: say which Python and which copy of lorabatch run (the first thing to know
    when a cluster job misbehaves), and refuse a relative run directory."""
    logging.getLogger(__name__).info(
        f"job: python {sys.executable}, lorabatch from {Path(lorabatch.__file__).parent}, "
        f"Ray at {cfg.ray.address or os.environ.get('RAY_ADDRESS') or 'a new local instance'}"
    )
    if not cfg.run_dir.is_absolute():
        # The job's working directory is Ray's temporary copy of --working-dir: a relative run
        # directory would be written there and vanish with it.
        raise LorabatchError(
            f"run_dir {str(cfg.run_dir)!r} is relative; inside a Ray job the working directory is a "
            "temporary copy, so pass an absolute --run-dir on storage every node sees"
        )


@commands.command("status")
def status(run_dir: Path = typer.Argument(..., help="A run directory.")):
    """Per stage and per setting: what is done, pending or failed."""
    from lorabatch.sweep.status import status_lines

    if not run_dir.is_dir():
        raise typer.BadParameter(f"{run_dir} is not a directory")
    typer.echo("\n".join(status_lines(run_dir)))
