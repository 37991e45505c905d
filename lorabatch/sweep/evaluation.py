"""The sweep's evaluation stages: generation (every planned row not yet written) and scoring."""

from __future__ import annotations

import time
from pathlib import Path

from lorabatch.sweep import metrics as sweep_metrics
from lorabatch.sweep.stages import content_key, mark_done


def stage_generation(config, manifest, settings: list[str], progress: bool) -> None:
    """Generate the rows of `settings` (the config's `generation.settings` wins when given); with
    `synthesis.jit` the synthesized settings' adapters are made wave by wave just before (`sweep.jit`)."""
    from lorabatch.generation.stage import run_generation
    from lorabatch.sweep.jit import generate_just_in_time

    run_dir = Path(config.run_dir)
    gen = config.generation
    if gen.settings is None:
        gen = gen.model_copy(update={"settings": settings})
    started = time.time()
    if config.synthesis.jit:
        result = generate_just_in_time(config, gen, progress=progress)
    else:
        result = run_generation(run_dir, gen, seed=config.seed, progress=progress)
    print(f"[lorabatch] {result.describe()}", flush=True)
    mark_done(run_dir, "generation", content_key(gen.model_dump(mode="json")), started, {"planned": result.planned, "failed": result.failed})
    sweep_metrics.stage_done("generation")


def stage_scoring(config, progress: bool) -> list[dict]:
    from lorabatch.scoring.aggregate import format_summary
    from lorabatch.scoring.stage import run_scoring

    run_dir = Path(config.run_dir)
    started = time.time()
    summary = run_scoring(run_dir, config.scoring, progress=progress)
    mark_done(run_dir, "scoring", content_key(config.scoring.model_dump(mode="json"), time.time()), started)
    sweep_metrics.stage_done("scoring")
    print(format_summary(summary), flush=True)
    return summary
