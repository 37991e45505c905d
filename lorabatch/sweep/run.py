"""The sweep: bank → features → distances → coefficients → (just-in-time) synthesis → generation
→ scoring → report, each stage skipped when its inputs have not changed.

Stages that cache at a finer grain themselves (features per dataset content hash, distances per
pair, adapters per synthesis key, generations per (task, setting, example)) are always called and
do only what is missing; the others are skipped through their stage marker (`sweep.stages`).
The report is refreshed after every stage, so it shows progress while the sweep runs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from lorabatch import telemetry
from lorabatch.atomic import write_json
from lorabatch.bank.datasets import file_sha256
from lorabatch.bank.identity import bank_files_identity
from lorabatch.bank.manifest import load_manifest, manifest_hash, manifest_path, write_manifest
from lorabatch.config import LorabatchConfig
from lorabatch.distances.matrix import distance_path
from lorabatch.errors import LorabatchError
from lorabatch.generation.backends import require_backend
from lorabatch.layout import RunLayout
from lorabatch.raysession import NodeWatch
from lorabatch.settings import BASE, ORACLE
from lorabatch.sweep.evaluation import stage_fewshot, stage_generation, stage_scoring
from lorabatch.sweep.report import write_report
from lorabatch.sweep.stages import all_markers, content_key, is_done, mark_done
from lorabatch.sweep.storage import check_shared_storage
from lorabatch.synthesis.stage import (
    compute_coefficients,
    compute_uniform_coefficients,
    mixture_settings,
    synthesize_setting,
)
from lorabatch.telemetry import adapters_synthesized
from lorabatch.workflows.demo_bank import ensure_demo_bank
from lorabatch.workflows.distances import features_and_distances

log = logging.getLogger(__name__)


def _refresh_report(run_dir: Path) -> None:

    write_report(run_dir, all_markers(run_dir))


def stage_bank(config: LorabatchConfig, progress: bool):

    run_dir = Path(config.run_dir)
    key = bank_key(config.bank)
    if key is not None and is_done(run_dir, "bank", key) and manifest_path(run_dir).is_file():
        manifest = load_manifest(run_dir)
        config.record()
        log.info(f"bank: {manifest.num_rows} tasks (cached manifest)")
        return manifest
    started = time.time()
    manifest = write_manifest(config.bank, run_dir, progress=progress)
    # Only now: a config whose bank fails validation must not replace the one the results came from.
    config.record()
    if key is not None:
        mark_done(run_dir, "bank", key, started, {"tasks": manifest.num_rows})
    log.info(f"bank: {manifest.num_rows} tasks validated")
    return manifest


def bank_key(bank_config) -> str | None:
    """Key of the bank stage: the bank config and the identity of every resolved file (path, size,
    mtime, inode; the snapshot revision and blob for hub repos), so that a bank changed on disk is
    validated again. None when the bank cannot be resolved (the stage then reports why)."""
    ensure_demo_bank(bank_config)
    return resolved_bank_key(bank_config)


def resolved_bank_key(bank_config) -> str | None:
    """`bank_key` of the bank as it is on disk now, building nothing (None if it cannot be resolved)."""

    try:
        identity = bank_files_identity(bank_config)
    except LorabatchError:
        return None
    return content_key(bank_config.model_dump(mode="json"), identity)


def stage_features_and_distances(config: LorabatchConfig, manifest, progress: bool) -> None:
    run_dir = Path(config.run_dir)
    started = time.time()

    def features_done(features, feats) -> None:
        nonlocal started
        mark_done(
            run_dir,
            "features",
            content_key(feats.results(), _manifest_hash(manifest)),
            started,
            {"datasets": len(features)},
        )
        telemetry.stage_done("features")
        started = time.time()

    features_and_distances(config, manifest, progress=progress, on_features=features_done)
    mark_done(
        run_dir,
        "distances",
        _distances_key(run_dir, config.distances.metrics),
        started,
        {"metrics": list(config.distances.metrics)},
    )
    telemetry.stage_done("distances")
    log.info(f"distances: {', '.join(config.distances.metrics)}")


def _manifest_hash(manifest) -> str:

    return manifest_hash(manifest)


def _distance_hashes(run_dir: Path, metrics) -> dict[str, str]:

    return {m: file_sha256(distance_path(run_dir, m)) for m in metrics}


def _distances_key(run_dir: Path, metrics) -> str:
    return content_key(_distance_hashes(run_dir, metrics))


def stage_coefficients(config: LorabatchConfig, progress: bool) -> None:

    run_dir = Path(config.run_dir)
    layout = RunLayout(run_dir)
    syn = config.synthesis.results()
    hashes = _distance_hashes(run_dir, config.distances.metrics)
    for metric in config.distances.metrics:
        stage = f"coefficients-{metric}"
        key = content_key(content_key({metric: hashes[metric]}), syn, config.seed)
        present = all(layout.coefficients_file(metric, model).is_file() for model in config.synthesis.models)
        if present and is_done(run_dir, stage, key):
            continue
        started = time.time()
        compute_coefficients(run_dir, metric, config.synthesis, seed=config.seed, progress=progress)
        mark_done(run_dir, stage, key, started, {"models": list(config.synthesis.models)})
    if "uniform" in config.synthesis.controls:
        compute_uniform_coefficients(run_dir)
    mark_done(run_dir, "coefficients", content_key(content_key(hashes), syn, config.seed), time.time())
    telemetry.stage_done("coefficients")
    log.info(f"coefficients: {len(config.distances.metrics)} metrics × {len(config.synthesis.models)} models")


def settings_of(config: LorabatchConfig) -> list[str]:
    """The sweep's settings: base, oracle, <metric>-<model> for every metric and model, the
    controls (uniform, nearest-<metric>, then icl), then the few-shot methods (select, refine)."""

    mixtures = [s.name for s in mixture_settings(config.distances.metrics, config.synthesis)]
    return [BASE, ORACLE, *mixtures, *config.fewshot.controls, *config.fewshot.methods]


def stage_synthesis(config: LorabatchConfig, progress: bool) -> dict[str, list[Path]]:
    """All leave-one-out adapters up front (in just-in-time mode the generation stage makes them,
    wave by wave, so this stage only records that); returns {setting: adapter directories}."""
    run_dir = Path(config.run_dir)
    if config.synthesis.jit:
        mark_done(
            run_dir,
            "synthesis",
            content_key(settings_of(config), "jit"),
            time.time(),
            {"mode": "just-in-time, with generation"},
        )
        return {}

    started = time.time()
    written = {}
    for setting in mixture_settings(config.distances.metrics, config.synthesis):
        written[setting.name] = synthesize_setting(run_dir, setting, config.synthesis, progress=progress)
        adapters_synthesized(setting.name, len(written[setting.name]))
    mark_done(run_dir, "synthesis", content_key(settings_of(config)), started)
    log.info("synthesis: every leave-one-out adapter written")
    return written


def report_key(run_dir: Path) -> str:
    """The report shows what the other stages made: its key is theirs (their markers' keys)."""
    markers = all_markers(run_dir)
    return content_key({stage: m.get("key") for stage, m in markers.items() if stage != "report"})


def run_sweep(config: LorabatchConfig, progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep; returns the scores' summary rows (`scoring.aggregate`), which the
    CLI prints. Progress goes to the `lorabatch.sweep` loggers. A node of the cluster lost on the
    way is reported in one line and recorded in RUN/faults.json; Ray retries its work."""

    require_backend(config.generation.backend, local=not (config.ray.address or os.environ.get("RAY_ADDRESS")))
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.ray.connect()

    checked = check_shared_storage(run_dir)
    if checked:
        log.info(f"run directory {run_dir.resolve()}: visible from all {checked} node(s) that hold work")
    watch = NodeWatch()
    try:
        with watch:
            return _run_stages(config, progress, watch)
    finally:
        if watch.events or watch.retries:
            record_faults(run_dir, watch.events, watch.retries)
            log.warning(faults_line(watch.events, watch.retries, RunLayout(run_dir).faults))


def faults_line(events: list[dict], retries: int, path: Path) -> str:
    """The sweep's closing line on what it survived: nodes lost (and in which stages), tasks retried."""
    stages = sorted({e.get("stage") or "the run" for e in events})
    during = f" (during {', '.join(stages)})" if stages else ""
    return f"this sweep: {len(events)} node(s) lost{during}, {retries} task(s) retried by Ray; recorded in {path}"


def record_faults(run_dir: Path, events: list[dict], retries: int = 0) -> None:
    """Add `events` (nodes lost: node_id, address, stage, at) and `retries` (tasks Ray retried
    after their process or node was lost) to RUN/faults.json."""
    import json

    path = RunLayout(run_dir).faults
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    write_json(
        path,
        {
            "nodes_lost": earlier.get("nodes_lost", []) + events,
            "tasks_retried": earlier.get("tasks_retried", 0) + retries,
        },
    )


def _run_stages(config: LorabatchConfig, progress: bool, watch) -> list[dict]:
    run_dir = Path(config.run_dir)
    watch.stage = "bank"
    manifest = stage_bank(config, progress)
    telemetry.stage_done("bank")
    _refresh_report(run_dir)
    watch.stage = "features and distances"
    stage_features_and_distances(config, manifest, progress)
    _refresh_report(run_dir)
    watch.stage = "coefficients"
    stage_coefficients(config, progress)
    _refresh_report(run_dir)
    watch.stage = "synthesis"
    stage_synthesis(config, progress)

    watch.stage = "fewshot"
    stage_fewshot(config, progress)
    _refresh_report(run_dir)

    watch.stage = "generation"
    stage_generation(config, manifest, settings_of(config), progress)
    _refresh_report(run_dir)
    watch.stage = "scoring"
    summary = stage_scoring(config, progress)
    mark_done(run_dir, "report", report_key(run_dir), time.time())
    _refresh_report(run_dir)
    log.info(f"report: {RunLayout(run_dir).report_index}")
    return summary
