"""The few-shot stage: `select` and `refine` for every bank task, on Ray actors that hold the base model.

Reads   RUN/bank/manifest.parquet; each task's `fewshot.split` examples (the train split by
        default — the test split is never opened); RUN/distances/<metric>.parquet; the
        coefficient files of every mixture setting (paper settings and controls)
Writes  RUN/adapters/{select,refine}/<task>/    PEFT dir + provenance.json (the few-shot record)
        RUN/fewshot/<method>.parquet            one row per task:
            task_id str · choice str (select: the winning candidate; refine: the starting
            setting) · loss float64 (few-shot loss of the result) · start_loss float64 (select:
            the best paper setting's; refine: its starting point's) · evaluations int32 (adapters
            tried) · forward_passes int32 · seconds float64 · details str (JSON)

Each task is one row of a Ray Data pipeline whose actors (`fewshot.concurrency`) load the base
model once; a task that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np

from lorabatch.errors import LorabatchError
from lorabatch.settings import REFINE, SELECT, Setting

RESULT_COLUMNS = ("task_id", "choice", "loss", "start_loss", "evaluations", "forward_passes", "seconds", "details", "error")


class FewShotError(LorabatchError):
    """The few-shot stage cannot run (missing inputs) or some tasks failed."""


def fewshot_dir(run_dir) -> Path:
    return Path(run_dir) / "fewshot"


def results_path(run_dir, method: str) -> Path:
    return fewshot_dir(run_dir) / f"{method}.parquet"


def few_shot_examples(dataset_path: str, split: str, k: int, seed: int, task_id: str) -> list[dict]:
    """A seeded sample of k rows of `split` (with a non-empty output), in file order."""
    from lorabatch.bank.datasets import read_split

    if split == "test":
        raise FewShotError("few-shot examples never come from the test split")
    rows = [r for r in read_split(dataset_path, split, columns=["input", "output", "id"]).to_pylist() if r["output"]]
    if not rows:
        raise FewShotError(f"{dataset_path}: the {split} split has no example with an output")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(task_id.encode())])
    picked = np.sort(rng.choice(len(rows), size=min(k, len(rows)), replace=False))
    return [rows[int(i)] for i in picked]


def _result_schema():
    import pyarrow as pa

    return pa.schema([
        ("method", pa.string()), ("task_id", pa.string()), ("choice", pa.string()), ("loss", pa.float64()),
        ("start_loss", pa.float64()), ("evaluations", pa.int32()), ("forward_passes", pa.int32()),
        ("seconds", pa.float64()), ("details", pa.string()), ("error", pa.string()),
    ])  # fmt: skip


class FewShotWorker:
    """Ray Data callable class: a batch of task rows → one result row per (method, task)."""

    def __init__(self, run_dir: str, fewshot: dict, synthesis: dict, metrics: list[str], seed: int, max_new_tokens: int = 256):
        from lorabatch.bank.manifest import load_manifest, trusts_remote_code
        from lorabatch.fewshot.config import FewShotConfig
        from lorabatch.fewshot.loss import FewShotLoss
        from lorabatch.fewshot.methods import grid_candidates
        from lorabatch.synthesis.config import SynthesisConfig
        from lorabatch.synthesis.stage import load_distance_matrix, mixture_settings, read_coefficients, setting_coefficients_path
        from lorabatch.synthesis.tensors import layout_from_manifest

        self.run_dir = Path(run_dir)
        self.config = FewShotConfig.model_validate(fewshot)
        self.synthesis = SynthesisConfig.model_validate(synthesis)
        self.seed = int(self.config.seed if self.config.seed is not None else seed)
        self.max_new_tokens = self.config.max_new_tokens or max_new_tokens
        self.layout = layout_from_manifest(run_dir)
        manifest = load_manifest(run_dir)
        base = manifest.column("base_model_path")[0].as_py()
        self.evaluator = FewShotLoss(base, self.layout.adapter_config, self.config.device, self.config.dtype, self.config.batch_size,
                                     trust_remote_code=trusts_remote_code(manifest))  # fmt: skip
        ids = self.layout.task_ids
        self.matrices: dict[str, np.ndarray] = {}
        for setting in mixture_settings(metrics, self.synthesis):
            targets, sources, c, _ = read_coefficients(setting_coefficients_path(run_dir, setting))
            if sources != ids or sorted(targets) != sorted(ids):
                raise FewShotError(f"coefficients of {setting} were computed for another bank: recompute them")
            self.matrices[setting.name] = c[[targets.index(t) for t in ids]]
        self.paper_names = [s.name for s in mixture_settings(metrics, self.synthesis) if s.kind == "paper"]
        self.distances = {m: load_distance_matrix(run_dir, m, ids) for m in metrics}
        if SELECT in self.config.methods:
            self.matrices.update(grid_candidates(self.distances, self.config.select.temperatures, self.config.select.top_k))

    def pool(self, i: int) -> list[int]:
        """The few-shot pool of task i: per metric its `pool` nearest other tasks, in metric then rank order."""
        out: dict[int, None] = {}
        for d in self.distances.values():
            others = [int(j) for j in np.argsort(d[i], kind="stable") if j != i]
            for j in others[: self.config.pool]:
                out[j] = None
        return list(out)

    def __call__(self, batch):
        import pyarrow as pa

        out = []
        for row in batch.to_pylist():
            out += self.run_task(row["task_id"], row["dataset_path"])
        return pa.Table.from_pylist(out, schema=_result_schema())

    def run_task(self, task_id: str, dataset_path: str) -> list[dict]:
        from lorabatch.fewshot.methods import candidate_rows, rank_pool, refine, select
        from lorabatch.synthesis.stage import adapter_dir, synthesize_one

        i = self.layout.task_ids.index(task_id)
        rows = []
        try:
            self.evaluator.set_examples(few_shot_examples(dataset_path, self.config.split, self.config.examples, self.seed, task_id))
        except Exception as err:  # noqa: BLE001 - recorded on the task's rows
            return [_failed(m, task_id, err) for m in self.config.methods]
        for method in self.config.methods:
            try:
                if method == SELECT:
                    result = select(self.evaluator, self.layout, candidate_rows(i, self.matrices, self.singles(i)),
                                    self.synthesis, self.paper_names, self.config.criterion,
                                    self.max_new_tokens)  # fmt: skip
                    syn = self.synthesis
                else:
                    start = self.config.refine.start
                    sources = None
                    if self.config.refine.sources == "loss" and self.config.pool:
                        started, passes = time.perf_counter(), self.evaluator.forward_passes
                        sources, pool_scores = rank_pool(self.evaluator, self.layout, self.pool(i), self.config.criterion,
                                                         self.max_new_tokens)  # fmt: skip
                        pool_cost = (time.perf_counter() - started, self.evaluator.forward_passes - passes, len(sources))
                    result = refine(self.evaluator, self.layout, self.matrices[start][i], self.config.refine,
                                    self.seed + i, start, sources, self.config.criterion, self.max_new_tokens)  # fmt: skip
                    if sources is not None:  # the pool's screening is part of refine's cost
                        result.seconds += pool_cost[0]
                        result.forward_passes += pool_cost[1]
                        result.evaluations += pool_cost[2]
                        result.details["pool"] = pool_scores
                    syn = self.synthesis.model_copy(update={"mixing": "exact"})
                record = {"method": method, "choice": result.choice, "loss": result.loss, "start_loss": result.start_loss,
                          "evaluations": result.evaluations, "forward_passes": result.forward_passes,
                          "seconds": round(result.seconds, 4), "examples": len(self.evaluator.items)}  # fmt: skip
                synthesize_one(self.layout, result.coefficients, adapter_dir(self.run_dir, method, task_id), syn,
                               setting=method, target=task_id, extra={"fewshot": record})  # fmt: skip
                rows.append({**record, "task_id": task_id, "details": json.dumps(result.details), "error": None})
            except Exception as err:  # noqa: BLE001 - recorded, the other tasks go on
                rows.append(_failed(method, task_id, err))
        return rows

    def singles(self, i: int) -> dict[str, np.ndarray]:
        """{"bank:<task>": one-hot [N]} for the pool's tasks of task i (each one's own adapter)."""
        out = {}
        for j in self.pool(i):
            row = np.zeros(len(self.layout.task_ids))
            row[j] = 1.0
            out[f"bank:{self.layout.task_ids[j]}"] = row
        return out


def _failed(method: str, task_id: str, err: Exception) -> dict:
    nan = float("nan")
    return {"method": method, "task_id": task_id, "choice": None, "loss": nan, "start_loss": nan, "evaluations": 0,
            "forward_passes": 0, "seconds": 0.0, "details": "{}", "error": f"{type(err).__name__}: {err}"}  # fmt: skip


def run_fewshot(
    run_dir, fewshot, synthesis, metrics: list[str], seed: int = 0, progress: bool = True, max_new_tokens: int = 256
) -> dict[str, list[dict]]:  # fmt: skip
    """select / refine for every task of the run (Ray must be initialised); returns {method: rows}.
    `max_new_tokens`: the sweep's generation budget (select's 'rouge' criterion decodes as much)."""
    import pyarrow as pa
    import ray
    from ray.data import DataContext

    from lorabatch.atomic import write_parquet
    from lorabatch.bank.manifest import load_manifest

    if not fewshot.methods:
        return {}
    if REFINE in fewshot.methods:
        start = Setting.parse(fewshot.refine.start)
        if start.kind != "paper" or start.metric not in metrics or start.model not in synthesis.models:
            raise FewShotError(f"fewshot.refine.start {fewshot.refine.start!r} is not a paper setting of this run")
    manifest = load_manifest(run_dir)
    tasks = manifest.select(["task_id", "dataset_path"]).to_pylist()
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    num_gpus = fewshot.num_gpus if fewshot.num_gpus is not None else (1 if has_gpu else 0)
    DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        FewShotWorker,
        fn_constructor_args=(str(Path(run_dir).resolve()), fewshot.model_dump(mode="json"), synthesis.model_dump(mode="json"),
                             list(metrics), seed, max_new_tokens),
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=fewshot.concurrency),
        num_cpus=fewshot.num_cpus,
        num_gpus=num_gpus,
    )  # fmt: skip
    parts = ray.get(ds.to_arrow_refs())
    table = pa.concat_tables(parts) if parts else _result_schema().empty_table()
    by_method: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_method.setdefault(row.pop("method"), []).append(row)
    order = {t["task_id"]: n for n, t in enumerate(tasks)}
    for method, rows in by_method.items():
        rows.sort(key=lambda r: order[r["task_id"]])
        write_parquet(results_path(run_dir, method), pa.Table.from_pylist(rows, schema=_result_schema().remove(0)))
    return by_method


def read_results(run_dir, method: str) -> list[dict]:
    """The rows of RUN/fewshot/<method>.parquet ([] when the stage has not run)."""
    import pyarrow.parquet as pq

    path = results_path(run_dir, method)
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
