"""`lorabatch distances | synthesize | generate | score`: one stage of a run, on its run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from lorabatch.cli.common import (
    AddressOption,
    RunDirOption,
    SetOption,
    WaitOption,
    command_lock,
    config_overrides,
    run_config,
    validated_section,
)
from lorabatch.layout import RunLayout

commands = typer.Typer()


@commands.command("synthesize")
def synthesize(
    config: Path = typer.Argument(..., help="Run config (YAML); its `synthesis` section applies."),
    metric: Optional[list[str]] = typer.Option(
        None, help="Metric(s) to use (default: every RUN/distances/<metric>.parquet)."
    ),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    coefficients_only: bool = typer.Option(False, help="Write the coefficients (and neural model), no adapters."),
    wait: WaitOption = False,
):
    """Coefficients for every (metric, model), then all leave-one-out adapters (unless synthesis.jit):
    the sweep's coefficients and synthesis stages, on the metrics given."""
    from lorabatch.config import load_config
    from lorabatch.sweep.run import stage_coefficients, stage_synthesis
    from lorabatch.synthesis.stage import SynthesisError

    cfg = load_config(config, config_overrides(sets, run_dir=run_dir, address=address))
    layout = RunLayout(cfg.run_dir)
    metrics = metric or layout.distance_metrics()
    if not metrics:
        raise SynthesisError(f"no distances in {layout.distances_dir}: compute them first")
    cfg = cfg.model_copy(update={"distances": cfg.distances.model_copy(update={"metrics": list(metrics)})})
    syn = cfg.synthesis
    with command_lock(cfg.run_dir, wait, "synthesize", config):
        if syn.executor == "ray" and not (syn.jit or coefficients_only):
            cfg.ray.connect()
        stage_coefficients(cfg, progress=True)
        if not (syn.jit or coefficients_only):
            for setting, paths in stage_synthesis(cfg, progress=True).items():
                typer.echo(f"{setting}: {len(paths)} adapters in {paths[0].parent}")
    typer.echo(f"coefficients in {layout.coefficients_dir}")


@commands.command("distances")
def distances(
    config: Path = typer.Argument(..., help="Run config (YAML); its `features` and `distances` sections apply."),
    metrics: Optional[list[str]] = typer.Option(
        None, "--metrics", help="Metric(s) to compute (default: distances.metrics)."
    ),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    local: bool = typer.Option(False, help="Compute features and blocks in this process, without Ray."),
    wait: WaitOption = False,
):
    """Features of every bank dataset (cached), then the bank's distance matrices (incremental)."""
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.config import load_config
    from lorabatch.distances import DistancesConfig
    from lorabatch.workflows.distances import features_and_distances

    cfg = load_config(config, config_overrides(sets, run_dir=run_dir, address=address))
    dist = validated_section(DistancesConfig, cfg.distances, {"metrics": metrics or None}, source="--metrics")
    feats = cfg.features
    if local:
        dist, feats = dist.model_copy(update={"executor": "local"}), feats.model_copy(update={"executor": "local"})

    def features_done(features, _) -> None:
        typer.echo(f"features of {len(features)} datasets in {RunLayout(cfg.run_dir).features}")

    with command_lock(cfg.run_dir, wait, "distances", config):
        manifest = load_manifest(cfg.run_dir)
        features_and_distances(cfg, manifest, distances=dist, features=feats, on_features=features_done)
    typer.echo(f"distances {', '.join(dist.metrics)} in {RunLayout(cfg.run_dir).distances_dir}")


@commands.command("generate")
def generate(
    config: Path = typer.Argument(..., help="Run config (YAML); its `generation` section applies."),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    backend: Optional[str] = typer.Option(None, help="'auto', 'vllm' or 'hf' (overrides generation.backend)."),
    examples_per_task: Optional[int] = typer.Option(
        None, help="First k test examples per task (overrides the config)."
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, help="Generated tokens per example at most (overrides the config)."
    ),
    wait: WaitOption = False,
):
    """Generate every (task, setting, example) row not yet in RUN/generations/ (base, oracle, synthesized)."""
    from lorabatch.config import load_config
    from lorabatch.generation.backends import require_backend
    from lorabatch.generation.stage import run_generation

    overrides = config_overrides(sets, run_dir=run_dir, address=address)
    flags = {
        "generation.backend": backend,
        "generation.examples_per_task": examples_per_task,
        "generation.max_new_tokens": max_new_tokens,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(config, overrides)
    require_backend(cfg.generation.backend, local=not (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    with command_lock(cfg.run_dir, wait, "generate", config):
        cfg.ray.connect()
        result = run_generation(cfg.run_dir, cfg.generation, seed=cfg.seed)
    typer.echo(result.describe())
    typer.echo(f"generations in {RunLayout(cfg.run_dir).generations}")


@commands.command("score")
def score(
    run: Path = typer.Argument(..., help="A run directory with RUN/generations/."),
    reference: Optional[str] = typer.Option(None, help="'first' (output[0], the paper's) or 'max' over references."),
    local: bool = typer.Option(False, help="Score in this process instead of with Ray Data."),
    wait: WaitOption = False,
):
    """Rouge-L and exact match per example, task and setting; prints the results table."""
    from lorabatch.config import RayConfig
    from lorabatch.scoring.aggregate import format_summary
    from lorabatch.scoring.config import ScoringConfig
    from lorabatch.scoring.stage import run_scoring

    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory")
    recorded = run_config(run)  # the run's own scoring and ray sections, then the flags
    cfg = validated_section(
        ScoringConfig,
        recorded.scoring if recorded else None,
        {"reference": reference, "executor": "local" if local else None},
    )
    with command_lock(run, wait, "score", run):
        if cfg.executor == "ray":
            (recorded.ray if recorded else RayConfig()).connect()
        summary = run_scoring(run, cfg)
    typer.echo(format_summary(summary))
    typer.echo(f"scores in {RunLayout(run).scores}")
