"""The generation stage: plan -> skip what is done -> preflight -> backend -> RUN/generations/.

Inputs: RUN/bank/manifest.parquet, the tasks' dataset splits, RUN/adapters/<setting>/<task>/.
Output: RUN/generations/part-*.parquet (schema in lorabatch.generation.schema), and
RUN/generations/plan.json ({"rows_per_setting": {...}}) with plan.parquet (each planned row's key
and fingerprint), read by `lorabatch status`; the plan is written only once generation starts (or
when nothing is left to do), so a run that fails before it (backend not installed, bad config)
leaves the previous plan as it was.
Rows failing the preflight are written with their error at once; the rest stream through the
backend and are written block by block by Ray Data, so an interrupted run keeps what it finished
and a re-run generates only the missing (task, setting, example) rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lorabatch import telemetry
from lorabatch.atomic import write_json, write_parquet
from lorabatch.bank.manifest import load_manifest, trusts_remote_code
from lorabatch.generation import backends
from lorabatch.generation.backends import cpu_favours_vllm, ray_is_local, require_backend
from lorabatch.generation.plan import pending_work, plan_work, rows_per_setting
from lorabatch.generation.preflight import RunContext, base_model_modules, input_limit, max_positions_of, preflight
from lorabatch.generation.schema import KEY_COLUMNS, conform, generation_schema
from lorabatch.generation.store import (
    done_keys,
    generation_files,
    generations_datasink,
    generations_dir,
    read_generations,
)
from lorabatch.layout import RunLayout
from lorabatch.progress import ProgressLine, quiet_ray_data
from lorabatch.raysession import task_fault_tolerance


@dataclass
class GenerationResult:
    backend: str
    planned: int
    skipped: int
    preflight_failed: int
    generated: int
    failed: int
    seconds: float
    generated_tokens: int

    def describe(self) -> str:
        return (
            f"generation ({self.backend}): {self.planned} rows planned, {self.skipped} already done, "
            f"{self.generated} generated ({self.failed} failed, {self.preflight_failed} of them before generation), "
            f"{self.generated_tokens} tokens in {self.seconds:.1f} s"
        )


def _slices(table, rows_per_block: int) -> list:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]


def auto_favours_vllm_on_cpu(manifest, config, has_gpu: bool) -> bool:
    """For `generation.backend: auto` on a cluster without GPU: whether the base model of the bank
    `manifest` (the run's manifest table) and
    `vllm.dtype` are a case where vLLM measured faster on this machine's CPU
    (`backends.cpu_favours_vllm`; a cluster's CPU nodes are taken to be like the driver's). False
    for any other backend, or where there is a GPU."""

    if config.backend != "auto" or has_gpu:
        return False
    return cpu_favours_vllm(manifest.column("base_model_path")[0].as_py(), config.vllm.dtype)


def build_context(run_dir, config, backend: str, seed: int, has_gpu: bool | None = None, manifest=None):
    """(manifest, RunContext) of a generation run; `has_gpu` as the caller found it (default: asks
    Ray), `manifest` as the caller read it (default: read here)."""

    if manifest is None:
        manifest = load_manifest(run_dir)
    base = manifest.column("base_model_path")[0].as_py()
    max_pos = max_positions_of(base)
    if has_gpu is None:
        has_gpu = backends.cluster_has_gpu()
    ctx = RunContext(
        run_dir=str(Path(run_dir).resolve()),
        base_model_path=base,
        max_new_tokens=config.max_new_tokens,
        input_limit=input_limit(max_pos, config.max_new_tokens, config.max_input_tokens),
        max_positions=max_pos,
        backend=backend,
        max_lora_rank=config.vllm.max_lora_rank if backend == "vllm" else None,
        has_gpu=has_gpu,
        seed=config.seed if config.seed is not None else seed,
        modules=base_model_modules(base),
        trust_remote_code=trusts_remote_code(manifest),
    )
    return manifest, ctx


def run_generation(
    run_dir,
    config,
    seed: int = 0,
    progress: bool = True,
    write_plan: bool = True,
    adapter_ids: dict | None = None,
    plan=None,
    icl_shots: dict[str, list[dict]] | None = None,
) -> GenerationResult:
    """Generate every pending row of `config` (a GenerationConfig) into RUN/generations/.

    Ray must be initialised (in-process or connected) by the caller; see `ensure_ray`.
    `write_plan=False` leaves RUN/generations/plan.json alone; `plan` (a work table) is what it
    records instead of this call's own work (a caller generating a plan in waves passes the whole
    plan to its first call); `adapter_ids` and `icl_shots` (the `icl` setting's examples) are passed
    on to `plan_work`.
    """
    import pyarrow.compute as pc
    import ray

    started = time.time()
    run_dir = Path(run_dir)
    has_gpu = backends.cluster_has_gpu()
    manifest = load_manifest(run_dir)
    backend = require_backend(
        config.backend,
        local=ray.is_initialized() and ray_is_local(),
        has_gpu=has_gpu,
        cpu_vllm=auto_favours_vllm_on_cpu(manifest, config, has_gpu),
    )
    _, ctx = build_context(run_dir, config, backend, seed, has_gpu=has_gpu, manifest=manifest)
    work = plan_work(run_dir, manifest, config, adapter_ids, icl_shots)

    def record_plan() -> None:
        if write_plan:
            write_plan_file(run_dir, work if plan is None else plan)

    pending = pending_work(work, done_keys(run_dir, include_failed=not config.retry_failed))
    result = GenerationResult(backend, work.num_rows, work.num_rows - pending.num_rows, 0, 0, 0, 0.0, 0)
    if pending.num_rows == 0:
        record_plan()
        result.seconds = time.time() - started
        return result

    prepared, max_rank = preflight(pending, ctx, chat_template=config.chat_template)
    if ctx.max_lora_rank is None:
        ctx.max_lora_rank = max_rank
    bad = pc.is_valid(prepared.column("error"))
    failed = prepared.filter(bad)
    runnable = prepared.filter(pc.invert(bad)).drop_columns(["error"])
    result.preflight_failed = failed.num_rows
    engine = backends.backend_class(backend)(config, ctx) if runnable.num_rows else None
    record_plan()
    if failed.num_rows:
        rows = failed.drop_columns(["prompt_token_ids"]).append_column(
            "backend", _constant_strings(backend, failed.num_rows)
        )
        write_parquet(
            generations_dir(run_dir) / f"part-{_stamp()}-preflight.parquet", conform(rows, generation_schema())
        )
        for setting, n in rows_per_setting(failed).items():
            telemetry.rows_generated(setting, n, n)

    if runnable.num_rows:
        quiet_ray_data()
        ds = ray.data.from_arrow(_slices(runnable, config.batch_size))
        out = engine.generate(ds)
        with _RowsWritten(run_dir, runnable.num_rows, f"generation ({backend})", progress):
            out.write_datasink(
                generations_datasink(run_dir), ray_remote_args={"num_cpus": 0.1, **task_fault_tolerance()}
            )

    latest = read_generations(run_dir, columns=["task_id", "setting", "example_id", "error", "num_generated_tokens"])
    keys = set(zip(*(pending.column(c).to_pylist() for c in ("task_id", "setting", "example_id"))))
    mine = [
        (e, n)
        for k, e, n in zip(
            zip(*(latest.column(c).to_pylist() for c in ("task_id", "setting", "example_id"))),
            latest.column("error").to_pylist(),
            latest.column("num_generated_tokens").to_pylist(),
        )
        if k in keys
    ]
    result.generated = len(mine)
    result.failed = sum(1 for e, _ in mine if e)
    result.generated_tokens = sum(n or 0 for _, n in mine)
    result.seconds = time.time() - started
    return result


class _RowsWritten:
    """A progress line of generation rows written to RUN/generations/ (the part files that appear
    while the block is running, polled every second by a thread), with their tokens/s."""

    def __init__(self, run_dir, total: int, desc: str, enabled: bool):

        self.run_dir, self.enabled = run_dir, enabled
        self.seen = set(generation_files(run_dir))
        self.line = ProgressLine(desc, total, "rows", enabled)
        self.tokens = 0
        self.started = time.perf_counter()

    def poll(self) -> None:
        import pyarrow.parquet as pq

        rows = 0
        for path in generation_files(self.run_dir):
            if path in self.seen:
                continue
            try:
                table = pq.read_table(path, columns=["num_generated_tokens"])
            except OSError:
                continue
            self.seen.add(path)
            rows += table.num_rows
            self.tokens += sum(n or 0 for n in table.column(0).to_pylist())
        if rows:
            rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
            self.line.update(rows, note=f"{rate / 1000:.1f} k tokens/s")

    def __enter__(self):
        import threading

        self.stop = threading.Event()

        def watch() -> None:
            while not self.stop.wait(1.0):
                self.poll()

        self.thread = threading.Thread(target=watch, daemon=True)
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.enabled:
            self.thread.join()
            self.poll()
        self.line.close()


def write_plan_file(run_dir, work) -> None:
    """RUN/generations/plan.json: planned rows per setting, and plan.parquet: each planned row's
    key and fingerprint, so that `lorabatch status` counts only rows of the current plan."""

    layout = RunLayout(run_dir)
    write_parquet(layout.generation_plan_rows, work.select([*KEY_COLUMNS, "fingerprint"]))
    write_json(layout.generation_plan, {"rows_per_setting": rows_per_setting(work)})


def _constant_strings(value: str, n: int):
    import pyarrow as pa

    return pa.array([value] * n, pa.string())


def _stamp() -> str:
    import uuid

    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
