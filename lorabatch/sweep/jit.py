"""Just-in-time synthesis: leave-one-out adapters are made wave by wave, right before the
generation that needs them, and (with `synthesis.jit_delete`) removed once the wave's rows are
written.

Up front, a sweep holds N × |settings| synthesized adapters on disk at once (502 × 12 adapters of
Mistral-7B at rank 16 ≈ 6,000 × 27 MB ≈ 160 GB). In waves it holds at most `synthesis.jit_wave`.

A wave is a cross product S × T of settings and tasks, because a generation call evaluates every
(setting, task) pair of its config: every pair in it must have an adapter, or its rows would fail
as "missing adapter". Only pairs with pending rows are synthesized; the other pairs' rows are
already written and are skipped by the generation stage, so they need none. Whether a row is done
depends on its fingerprint, which holds the adapter's identity (`generation.fingerprint`): here it
is the synthesis key each adapter will have, computed before the adapter exists.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lorabatch.bank.manifest import load_manifest
from lorabatch.generation import backends
from lorabatch.generation.backends import resolve_backend_name
from lorabatch.generation.plan import pending_work, plan_work, select_tasks
from lorabatch.generation.stage import GenerationResult, auto_favours_vllm_on_cpu, run_generation, write_plan_file
from lorabatch.generation.store import done_keys
from lorabatch.settings import Setting
from lorabatch.synthesis.stage import adapter_dir, expected_identities, layout_from_manifest, synthesize_setting
from lorabatch.telemetry import adapters_synthesized

log = logging.getLogger(__name__)


def _mixture(setting: str) -> bool:
    return Setting.parse(setting).has_coefficients


@dataclass(frozen=True)
class Wave:
    settings: tuple[str, ...]
    tasks: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.settings) * len(self.tasks)


def plan_waves(pending_tasks: dict[str, list[str]], wave_size: int) -> list[Wave]:
    """Group the pending (setting → tasks) pairs of the synthesized settings into waves of at most
    `wave_size` adapters.

    When a setting has at least `wave_size` pending tasks, its tasks are cut into chunks of
    `wave_size`, one setting per wave. Otherwise settings with the same pending tasks are grouped,
    ⌊wave_size / |tasks|⌋ at a time, so that a small bank runs in few waves (each wave starts the
    generation workers anew, which costs an engine start).
    """
    waves: list[Wave] = []
    by_tasks: dict[tuple[str, ...], list[str]] = {}
    for setting, tasks in pending_tasks.items():
        if not tasks:
            continue
        if len(tasks) >= wave_size:
            for i in range(0, len(tasks), wave_size):
                waves.append(Wave((setting,), tuple(tasks[i : i + wave_size])))
        else:
            by_tasks.setdefault(tuple(tasks), []).append(setting)
    for tasks, settings in by_tasks.items():
        per_wave = max(1, wave_size // len(tasks))
        for i in range(0, len(settings), per_wave):
            waves.append(Wave(tuple(settings[i : i + per_wave]), tasks))
    return waves


def pending_tasks_by_setting(pending) -> dict[str, list[str]]:
    """{setting: tasks with pending rows, in plan order} for the synthesized settings of `pending`."""
    out: dict[str, dict[str, None]] = {}
    for setting, task in zip(pending.column("setting").to_pylist(), pending.column("task_id").to_pylist()):
        if _mixture(setting):
            out.setdefault(setting, {})[task] = None
    return {s: list(t) for s, t in out.items()}


def generate_just_in_time(config, gen, progress: bool = True, icl_shots: dict | None = None):
    """Generate the rows of `gen` (a GenerationConfig with its settings filled in), synthesizing the
    adapters of each wave just before it; returns the summed `GenerationResult`. `icl_shots`: the
    `icl` setting's examples (`generation.plan.plan_work`)."""

    run_dir = Path(config.run_dir)
    syn = config.synthesis
    manifest = load_manifest(run_dir)
    layout = layout_from_manifest(run_dir)
    tasks = select_tasks(manifest, gen.tasks)
    ids = {
        (setting, task): identity
        for setting in gen.settings
        if _mixture(setting)
        for task, identity in expected_identities(run_dir, setting, [t["task_id"] for t in tasks], syn, layout).items()
    }
    work = plan_work(run_dir, manifest, gen, ids, icl_shots)
    pending = pending_work(work, done_keys(run_dir, include_failed=not gen.retry_failed))
    has_gpu = backends.cluster_has_gpu()
    backend = resolve_backend_name(
        gen.backend, has_gpu=has_gpu, cpu_vllm=auto_favours_vllm_on_cpu(manifest, gen, has_gpu)
    )
    total = GenerationResult(backend, work.num_rows, work.num_rows - pending.num_rows, 0, 0, 0, 0.0, 0)

    pending_pairs = pending_tasks_by_setting(pending)
    if syn.jit_delete:
        # A sweep killed mid-wave leaves the adapters of the pairs that wave had finished; no
        # later wave schedules those pairs again, so remove them here.
        for setting, task in ids:
            if task not in pending_pairs.get(setting, ()):
                shutil.rmtree(adapter_dir(run_dir, setting, task), ignore_errors=True)
    direct = [s for s in gen.settings if not _mixture(s)]
    calls = [(None, gen.model_copy(update={"settings": direct}))] if direct else []
    waves = plan_waves(pending_pairs, syn.jit_wave)
    calls += [(w, gen.model_copy(update={"settings": list(w.settings), "tasks": list(w.tasks)})) for w in waves]
    if not calls:
        write_plan_file(run_dir, work)
    for i, (wave, wave_gen) in enumerate(calls):
        if wave is not None:
            log.info(
                f"just-in-time wave {i + 1}/{len(calls)}: {len(wave)} adapters "
                f"({', '.join(wave.settings)} × {len(wave.tasks)} tasks)"
            )
            for setting in wave.settings:
                synthesize_setting(run_dir, setting, syn, tasks=list(wave.tasks), layout=layout, progress=False)
                adapters_synthesized(setting, len(wave.tasks))
        # The first call records the whole plan, once its generation starts.
        result = run_generation(
            run_dir,
            wave_gen,
            seed=config.seed,
            progress=progress,
            write_plan=i == 0,
            adapter_ids=ids,
            plan=work,
            icl_shots=icl_shots if wave is None else None,
        )
        if wave is not None and syn.jit_delete:
            for setting in wave.settings:
                for task in wave.tasks:
                    shutil.rmtree(adapter_dir(run_dir, setting, task), ignore_errors=True)
        total.generated += result.generated
        total.failed += result.failed
        total.preflight_failed += result.preflight_failed
        total.generated_tokens += result.generated_tokens
        total.seconds += result.seconds
    return total
