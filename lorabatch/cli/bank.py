"""`lorabatch bank ...`: build the demo bank, validate a bank into a manifest, extend a local bank."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorabatch.cli.common import RunDirOption, SetOption, WaitOption, command_lock, config_overrides
from lorabatch.layout import RunLayout

commands = typer.Typer(help="Build, inspect and validate adapter banks.", no_args_is_help=True)


@commands.command("build-demo")
def bank_build_demo(
    out: Path = typer.Argument(..., help="Directory to write the demo bank into (a local 'hub')."),
    size: str = typer.Option("default", help="'small' (tests, < 3 min) or 'default' (< 10 min)."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
    force: bool = typer.Option(False, help="Rebuild even if OUT already holds a demo bank."),
    threads: Optional[int] = typer.Option(
        None,
        min=1,
        help="torch threads (default: a fixed 2, whatever the load); a bank is reproduced exactly only with its own thread count.",
    ),
    lora_init: str = typer.Option(
        "mixed",
        help="lora_A init: 'shared' (one seed for all tasks), 'independent' (one per task) or 'mixed' (a seeded SHARED_FRACTION of tasks share one).",
    ),
    shared_fraction: float = typer.Option(
        0.38,
        help="Under --lora-init mixed: fraction of tasks sharing one lora_A init (0.38 in the real Lots-of-LoRAs bank).",
    ),
    parallel: Optional[int] = typer.Option(
        None,
        min=1,
        help="Task LoRAs trained at once (default: the cores over --threads). Above 1 they train on Ray Train; "
        "1 trains them in this process, one after another. The bank is the same whatever this is.",
    ),
    base: str = typer.Option(
        "instruct",
        help="'instruct': the base model goes through an instruction phase and answers the tasks' content in "
        "its own words, as Mistral-7B-Instruct does (builder 5); 'plain': no instruction phase.",
    ),
    families: Optional[str] = typer.Option(
        None,
        help="Task families as 'module:attribute' (a tuple of lorabatch.demo.families.Family); default: the demo's.",
    ),
    compare_shipped: bool = typer.Option(
        False,
        "--compare-shipped",
        help="After building, compare OUT with the shipped default bank file by file and say where they differ "
        "(exit 1 if they do). Build the default recipe (the defaults of every option) into a new OUT to check "
        "that this machine reproduces the shipped bank bit for bit.",
    ),
):
    """Build the embedded demo bank: tokenizer, tiny Mistral, task datasets and one LoRA per task.

    The default bank also ships with lorabatch (lorabatch/demo/shipped/): a run config's `bank.demo`
    section uses it as it is; this command builds one on this machine."""
    from lorabatch.demo.build import build_demo_bank
    from lorabatch.demo.families import load_families
    from lorabatch.demo.shipped import compare_with_shipped

    build_demo_bank(
        out,
        size=size,
        seed=seed,
        force=force,
        threads=threads,
        lora_init=lora_init,
        shared_fraction=shared_fraction,
        parallel=parallel,
        base=base,
        families=load_families(families),
    )
    if compare_shipped:
        differences = compare_with_shipped(out)
        for line in differences:
            typer.echo(f"differs: {line}")
        typer.echo(
            f"{out} {'differs from' if differences else 'matches'} the shipped demo bank"
            + (f" ({len(differences)} differences)" if differences else " bit for bit")
        )
        raise typer.Exit(1 if differences else 0)


@commands.command("manifest")
def bank_manifest(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    wait: WaitOption = False,
):
    """Resolve the bank, validate it, and write RUN/bank/manifest.parquet."""
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import load_config
    from lorabatch.workflows.demo_bank import ensure_demo_bank

    cfg = load_config(config, config_overrides(sets, run_dir=run_dir))
    with command_lock(cfg.run_dir, wait, "bank manifest", config):
        ensure_demo_bank(cfg.bank)
        table = build_manifest(cfg)
    typer.echo(f"{table.num_rows} tasks validated; manifest at {RunLayout(cfg.run_dir).manifest}")


@commands.command("extend")
def bank_extend(
    config: Path = typer.Argument(..., help="Run config (YAML) of a local bank; its `training` section applies."),
    run_dir: Optional[Path] = typer.Option(None, help="Override the config's run_dir."),
    sets: Optional[list[str]] = typer.Option(
        None,
        "--set",
        help="Override a config field, e.g. --set training.parallel_tasks=4 (value read as YAML; repeatable).",
    ),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: in-process Ray)."),
    wait: bool = typer.Option(
        False, "--wait", help="If another command is using the run directory, wait for it instead of refusing to start."
    ),
):
    """Train adapters (Ray Train) for the bank's tasks that have a dataset but no adapter; then the
    manifest, and when the run has them, features and distances (only pairs with a new task)."""
    from lorabatch.config import load_config
    from lorabatch.workflows.extend import extend_bank

    cfg = load_config(config, config_overrides(sets, run_dir=run_dir, address=address))
    with command_lock(cfg.run_dir, wait, "bank extend", config):
        cfg.record()
        result = extend_bank(cfg)
    for task, path in zip(result.trained, result.adapter_dirs):
        typer.echo(f"trained {task}: {path}")
    typer.echo(
        f"{len(result.trained)} adapter(s) trained; the bank has {result.manifest_tasks} tasks"
        + (f"; distances {', '.join(result.distance_metrics)} updated" if result.distance_metrics else "")
    )
