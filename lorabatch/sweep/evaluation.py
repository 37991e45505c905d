"""The sweep's evaluation stages: few-shot settings (select, refine), generation (every planned row
not yet written) and scoring."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lorabatch import telemetry
from lorabatch.bank.datasets import file_sha256, sample_examples
from lorabatch.bank.manifest import load_manifest, manifest_hash
from lorabatch.distances.matrix import distance_path
from lorabatch.fewshot.stage import read_results, run_fewshot
from lorabatch.generation.plan import select_tasks
from lorabatch.generation.stage import run_generation
from lorabatch.generation.store import generation_files
from lorabatch.layout import RunLayout
from lorabatch.scoring.stage import run_scoring
from lorabatch.settings import ICL
from lorabatch.sweep.jit import generate_just_in_time
from lorabatch.sweep.stages import content_key, is_done, mark_done
from lorabatch.synthesis.stage import mixture_settings, setting_coefficients_path

log = logging.getLogger(__name__)


def fewshot_key(config) -> str:
    """What the few-shot results depend on: its config, the mixing, the seed and the content of the
    bank (manifest hash), distances and coefficient files."""

    run_dir = Path(config.run_dir)
    metrics = list(config.distances.metrics)
    files = [distance_path(run_dir, m) for m in metrics]
    files += [setting_coefficients_path(run_dir, s) for s in mixture_settings(metrics, config.synthesis)]
    syn = config.synthesis.model_dump(
        mode="json", include={"mixing", "exact_rank", "cat_max_rank", "output_dtype", "controls", "models"}
    )
    # `controls` (icl) only adds generation rows: select and refine do not depend on it.
    fewshot = {k: v for k, v in config.fewshot.results().items() if k != "controls"}
    return content_key(
        fewshot,
        syn,
        config.seed,
        config.generation.max_new_tokens,
        manifest_hash(load_manifest(run_dir)),
        {str(f.relative_to(run_dir)): file_sha256(f) for f in files},
    )


def stage_fewshot(config, progress: bool) -> None:
    """select / refine adapters for every task, unless done with the same inputs and still on disk."""

    run_dir = Path(config.run_dir)
    layout = RunLayout(run_dir)
    methods = config.fewshot.methods
    if not methods:
        mark_done(run_dir, "fewshot", content_key("off"), time.time(), {"methods": []})
        return
    key = fewshot_key(config)
    if is_done(run_dir, "fewshot", key) and all(layout.fewshot(m).is_file() for m in methods):
        intact = all(
            (layout.adapter(m, r["task_id"]) / "adapter_model.safetensors").is_file()
            for m in methods
            for r in read_results(run_dir, m)
            if not r["error"]
        )
        if intact:
            log.info("few-shot: select/refine cached")
            return
    started = time.time()
    results = run_fewshot(
        run_dir,
        config.fewshot,
        config.synthesis,
        list(config.distances.metrics),
        config.seed,
        progress,
        config.generation.max_new_tokens,
    )
    info = {}
    for method, rows in results.items():
        ok = [r for r in rows if not r["error"]]
        info[method] = {
            "tasks": len(rows),
            "failed": len(rows) - len(ok),
            "forward_passes_per_task": sum(r["forward_passes"] for r in ok) / max(1, len(ok)),
            "seconds_per_task": sum(r["seconds"] for r in ok) / max(1, len(ok)),
        }
        log.info(
            f"few-shot {method}: {len(ok)}/{len(rows)} tasks, "
            f"{info[method]['forward_passes_per_task']:.0f} forward passes and {info[method]['seconds_per_task']:.2f} s per task"
        )
        for r in rows:
            if r["error"]:
                log.warning(f"  {method} failed for {r['task_id']}: {r['error']}")
    mark_done(run_dir, "fewshot", key, started, info)
    telemetry.stage_done("fewshot")


def stage_generation(config, manifest, settings: list[str], progress: bool) -> None:
    """Generate the rows of `settings` (the config's `generation.settings` wins when given); with
    `synthesis.jit` the synthesized settings' adapters are made wave by wave just before (`sweep.jit`)."""

    run_dir = Path(config.run_dir)
    gen = config.generation
    if gen.settings is None:
        gen = gen.model_copy(update={"settings": settings})
    started = time.time()
    shots = icl_shots(config, manifest, gen.tasks) if ICL in gen.settings else None
    if config.synthesis.jit:
        result = generate_just_in_time(config, gen, progress=progress, icl_shots=shots)
    else:
        result = run_generation(run_dir, gen, seed=config.seed, progress=progress, icl_shots=shots)
    log.info(result.describe())
    mark_done(
        run_dir, "generation", content_key(gen.results()), started, {"planned": result.planned, "failed": result.failed}
    )
    telemetry.stage_done("generation")


def icl_shots(config, manifest, tasks="all") -> dict[str, list[dict]]:
    """The `icl` control's examples of every task: the few-shot examples `select` and `refine` are
    judged on (`fewshot.examples` rows of `fewshot.split`, drawn with the few-shot seed)."""

    fs = config.fewshot
    seed = fs.seed if fs.seed is not None else config.seed
    return {
        t["task_id"]: sample_examples(t["dataset_path"], fs.split, fs.examples, seed, t["task_id"])
        for t in select_tasks(manifest, tasks)
    }


def generations_key(run_dir) -> str:
    """Content key of RUN/generations/: the name and size of every part file (each is written
    once, atomically, under a unique name, so new rows always add a file)."""

    return content_key([(f.name, f.stat().st_size) for f in generation_files(run_dir)])


def scoring_key(config) -> str:
    """What the scores depend on: the scoring config and the generation files."""
    return content_key(config.scoring.results(), generations_key(config.run_dir))


def stage_scoring(config, progress: bool) -> list[dict]:

    run_dir = Path(config.run_dir)
    started = time.time()
    summary = run_scoring(run_dir, config.scoring, progress=progress)
    mark_done(run_dir, "scoring", scoring_key(config), started)
    telemetry.stage_done("scoring")
    return summary
