"""The few-shot stage: `select` and `refine` for every bank task, on Ray actors that hold the base model.

Reads   RUN/bank/manifest.parquet; each task's `fewshot.split` examples (the train split by
        default — the test split is never opened); RUN/distances/<metric>.parquet; the
        coefficient files of every mixture setting (paper settings and controls)
Writes  RUN/adapters/{select,refine}/<task>/    PEFT dir + provenance.json (the few-shot record)
        RUN/fewshot/<method>.parquet            one row per task:
            task_id str · choice str (select: the winning candidate; refine: its starting point,
            "select:<candidate>" or a paper setting) · loss float64 (few-shot loss of the
            result) · start_loss float64 (select: the best paper setting's; refine: its starting
            point's) · rouge_l, start_rouge_l float64 (few-shot Rouge-L of the result and of
            refine's start; null under criterion 'loss') · evaluations int32 (adapters tried;
            refine from select: select's included) · forward_passes int32 · seconds float64 ·
            details str (JSON) · error str

Each task is one row of a Ray Data pipeline whose actors (`fewshot.concurrency`) load the base
model once; a task that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lorabatch.atomic import write_parquet
from lorabatch.bank.datasets import sample_examples
from lorabatch.bank.manifest import load_manifest, trusts_remote_code
from lorabatch.errors import DatasetError, LorabatchError
from lorabatch.fewshot.config import FewShotConfig
from lorabatch.fewshot.loss import FewShotLoss
from lorabatch.fewshot.methods import candidate_rows, grid_candidates, run_methods
from lorabatch.layout import RunLayout
from lorabatch.progress import ProgressLine, quiet_ray_data
from lorabatch.raysession import actor_fault_tolerance, actor_pool_size
from lorabatch.settings import REFINE, SELECT, Setting
from lorabatch.synthesis.config import SynthesisConfig
from lorabatch.synthesis.stage import (
    distance_matrix_of,
    mixture_settings,
    read_coefficients,
    setting_coefficients_path,
    synthesize_one,
)
from lorabatch.synthesis.tensors import layout_from_manifest


class FewShotError(LorabatchError):
    """The few-shot stage cannot run (missing inputs) or some tasks failed."""


def few_shot_examples(dataset_path: str, split: str, k: int, seed: int, task_id: str) -> list[dict]:
    """A seeded sample of k rows of `split` (with a non-empty output), in file order
    (`bank.datasets.sample_examples`: the same rows as the `icl` control's prompt)."""
    try:
        return sample_examples(dataset_path, split, k, seed, task_id)
    except DatasetError as e:
        raise FewShotError(str(e)) from e


def _result_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("method", pa.string()),
            ("task_id", pa.string()),
            ("choice", pa.string()),
            ("loss", pa.float64()),
            ("start_loss", pa.float64()),
            ("rouge_l", pa.float64()),
            ("start_rouge_l", pa.float64()),
            ("evaluations", pa.int32()),
            ("forward_passes", pa.int32()),
            ("seconds", pa.float64()),
            ("details", pa.string()),
            ("error", pa.string()),
        ]
    )


class FewShotWorker:
    """Ray Data callable class: a batch of task rows → one result row per (method, task)."""

    def __init__(
        self, run_dir: str, fewshot: dict, synthesis: dict, metrics: list[str], seed: int, max_new_tokens: int = 256
    ):

        self.run_dir = Path(run_dir)
        self.config = FewShotConfig.model_validate(fewshot)
        self.synthesis = SynthesisConfig.model_validate(synthesis)
        self.seed = int(self.config.seed if self.config.seed is not None else seed)
        self.max_new_tokens = self.config.max_new_tokens or max_new_tokens
        self.layout = layout_from_manifest(run_dir)
        manifest = load_manifest(run_dir)
        base = manifest.column("base_model_path")[0].as_py()
        self.evaluator = FewShotLoss(
            base,
            self.layout.adapter_config,
            self.config.device,
            self.config.dtype,
            self.config.batch_size,
            trust_remote_code=trusts_remote_code(manifest),
            candidates_per_pass=self.config.candidates_per_pass,
        )
        ids = self.layout.task_ids
        self.matrices: dict[str, np.ndarray] = {}
        for setting in mixture_settings(metrics, self.synthesis):
            targets, sources, c, _ = read_coefficients(setting_coefficients_path(run_dir, setting))
            if sources != ids or sorted(targets) != sorted(ids):
                raise FewShotError(f"coefficients of {setting} were computed for another bank: recompute them")
            self.matrices[setting.name] = c[[targets.index(t) for t in ids]]
        self.paper_names = [s.name for s in mixture_settings(metrics, self.synthesis) if s.kind == "paper"]
        self.distances = {m: distance_matrix_of(run_dir, m, ids) for m in metrics}
        if SELECT in self.config.methods or (REFINE in self.config.methods and self.config.refine.start == SELECT):
            self.matrices.update(
                grid_candidates(self.distances, self.config.select.temperatures, self.config.select.top_k)
            )

    def pool(self, i: int) -> list[int]:
        """The few-shot pool of task i (see `pool_of`)."""
        return pool_of([d[i] for d in self.distances.values()], self.config.pool, exclude=(i,))

    def __call__(self, batch):
        import pyarrow as pa

        out = []
        for row in batch.to_pylist():
            out += self.run_task(row["task_id"], row["dataset_path"])
        return pa.Table.from_pylist(out, schema=_result_schema())

    def run_task(self, task_id: str, dataset_path: str) -> list[dict]:

        i = self.layout.task_ids.index(task_id)
        methods = self.config.methods
        try:
            self.evaluator.set_examples(
                few_shot_examples(dataset_path, self.config.split, self.config.examples, self.seed, task_id)
            )
            pool = self.pool(i)
            candidates = candidate_rows(i, self.matrices, singles(pool, self.layout.task_ids))
            results = run_methods(
                self.evaluator,
                self.layout,
                methods,
                self.config,
                self.synthesis,
                candidates,
                pool,
                {n: c[i] for n, c in self.matrices.items()},
                self.paper_names,
                self.seed + i,
                self.max_new_tokens,
            )
        except Exception as err:  # recorded on the task's rows, the other tasks go on
            return [_failed(m, task_id, err) for m in methods]
        rows = []
        for method in methods:
            if isinstance(results[method], Exception):
                rows.append(_failed(method, task_id, results[method]))
                continue
            result, syn = results[method]
            try:
                record = result.record(method, len(self.evaluator.items))
                synthesize_one(
                    self.layout,
                    result.coefficients,
                    RunLayout(self.run_dir).adapter(method, task_id),
                    syn,
                    setting=method,
                    target=task_id,
                    extra={"fewshot": record},
                )
                rows.append({**record, "task_id": task_id, "details": json.dumps(result.details), "error": None})
            except Exception as err:  # recorded, the other tasks go on
                rows.append(_failed(method, task_id, err))
        return rows


def pool_of(distance_rows: list[np.ndarray], size: int, exclude=()) -> list[int]:
    """The few-shot pool: `size` distinct bank tasks taken round-robin from each metric's nearest
    list (every metric's nearest, then every metric's second, …), the indices in `exclude` left out."""
    left_out = {int(j) for j in exclude}
    orders = [[int(j) for j in np.argsort(d, kind="stable") if j not in left_out] for d in distance_rows]
    out: dict[int, None] = {}
    for rank in range(max((len(o) for o in orders), default=0)):
        for order in orders:
            if len(out) < size and rank < len(order):
                out.setdefault(order[rank], None)
    return list(out)


def singles(pool: list[int], task_ids: list[str]) -> dict[str, np.ndarray]:
    """{"bank:<task>": one-hot [N]} for the pool's tasks (each one's own adapter as a candidate)."""
    out = {}
    for j in pool:
        row = np.zeros(len(task_ids))
        row[j] = 1.0
        out[f"bank:{task_ids[j]}"] = row
    return out


def _failed(method: str, task_id: str, err: Exception) -> dict:
    nan = float("nan")
    return {
        "method": method,
        "task_id": task_id,
        "choice": None,
        "loss": nan,
        "start_loss": nan,
        "evaluations": 0,
        "forward_passes": 0,
        "seconds": 0.0,
        "details": "{}",
        "error": f"{type(err).__name__}: {err}",
    }


def run_fewshot(
    run_dir, fewshot, synthesis, metrics: list[str], seed: int = 0, progress: bool = True, max_new_tokens: int = 256
) -> dict[str, list[dict]]:
    """select / refine for every task of the run (Ray must be initialised); returns {method: rows}.
    `max_new_tokens`: the sweep's generation budget (select's 'rouge' criterion decodes as much)."""
    import pyarrow as pa
    import ray

    if not fewshot.methods:
        return {}
    if REFINE in fewshot.methods and fewshot.refine.start != SELECT:
        start = Setting.parse(fewshot.refine.start)
        if start.kind != "paper" or start.metric not in metrics or start.model not in synthesis.models:
            raise FewShotError(f"fewshot.refine.start {fewshot.refine.start!r} is not a paper setting of this run")
    manifest = load_manifest(run_dir)
    tasks = manifest.select(["task_id", "dataset_path"]).to_pylist()
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    num_gpus = fewshot.num_gpus if fewshot.num_gpus is not None else (1 if has_gpu else 0)
    quiet_ray_data()
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        FewShotWorker,
        fn_constructor_args=(
            str(Path(run_dir).resolve()),
            fewshot.model_dump(mode="json"),
            synthesis.model_dump(mode="json"),
            list(metrics),
            seed,
            max_new_tokens,
        ),
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            size=actor_pool_size(fewshot.concurrency, fewshot.num_cpus, num_gpus, len(tasks))
        ),
        num_cpus=fewshot.num_cpus,
        num_gpus=num_gpus,
        **actor_fault_tolerance(),
    )
    line = ProgressLine(f"few-shot ({', '.join(fewshot.methods)})", len(tasks), "tasks", progress)
    parts = []
    for part in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.append(part)
        failed = sum(1 for p in parts for e in p.column("error").to_pylist() if e)
        line.update(len(set(part.column("task_id").to_pylist())), note=f"{failed} failed" if failed else None)
    line.close()
    table = pa.concat_tables(parts) if parts else _result_schema().empty_table()
    by_method: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_method.setdefault(row.pop("method"), []).append(row)
    order = {t["task_id"]: n for n, t in enumerate(tasks)}
    for method, rows in by_method.items():
        rows.sort(key=lambda r: order[r["task_id"]])
        write_parquet(RunLayout(run_dir).fewshot(method), pa.Table.from_pylist(rows, schema=_result_schema().remove(0)))
    return by_method


def read_results(run_dir, method: str) -> list[dict]:
    """The rows of RUN/fewshot/<method>.parquet ([] when the stage has not run)."""
    import pyarrow.parquet as pq

    path = RunLayout(run_dir).fewshot(method)
    return pq.read_table(path).to_pylist() if path.is_file() else []


def format_costs(run_dir) -> str:
    """What select / refine cost per task, as text ('' when neither ran)."""
    lines = []
    for method in (SELECT, REFINE):
        rows = [r for r in read_results(run_dir, method) if not r["error"]]
        if not rows:
            continue
        n = len(rows)
        lines.append(
            f"{method:<8} {n:>5} tasks  {sum(r['evaluations'] for r in rows) / n:>6.1f} adapters tried  "
            f"{sum(r['forward_passes'] for r in rows) / n:>6.1f} forward passes  {sum(r['seconds'] for r in rows) / n:>7.2f} s per task"
        )
    return "few-shot cost (per task, on the loss workers):\n" + "\n".join(lines) if lines else ""
