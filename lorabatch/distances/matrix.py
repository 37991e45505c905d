"""Whole distance matrices in blocks (Ray Data tasks or in-process), query rows, incremental
updates, and the on-disk contract.

RUN/distances/<metric>.parquet — one row per ordered pair (diagonal included):
    target str (task i) · source str (task j) · d float64 = d(D_i target, D_j source)
Parquet schema metadata `lorabatch.distances` (JSON): metric, version (of the metric's
definition), definition, symmetric, params (config values the values depend on), tasks (order),
identities (per task: sha256 of the features the metric read), tokenizer_sha256.
The diagonal is stored as computed: 0 for every registered metric (identical inputs give exactly
0); the coefficient stage sets self-distances to +inf itself.

Blocks: the target × source index grid is cut into `block_size` squares; a symmetric metric
computes only blocks on or above the diagonal, and in a diagonal block only the pairs r <= c
(`Metric.block_upper`), and mirrors them (each unordered pair takes the value computed with the
lower index as target). In-process, blocks run on `num_workers` threads with BLAS held to one
thread (threadpoolctl). Ray Data stage: in `block` int64 (index into
the block list), out `i` int32 · `j` int32 · `d` float64 (one row per pair of the block).
Incremental: tasks whose (task id, feature identity) match the stored matrix keep their
pairs; only pairs involving new or changed tasks are computed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from lorabatch.atomic import atomic_path
from lorabatch.distances.config import DistancesConfig
from lorabatch.distances.metric import take
from lorabatch.distances.registry import DistancesError, get_metric, metric_class
from lorabatch.features import FeatureSet
from lorabatch.features.store import load_bank_features
from lorabatch.layout import RunLayout
from lorabatch.raysession import require_ray, task_fault_tolerance

log = logging.getLogger(__name__)

META_KEY = b"lorabatch.distances"


def distance_path(run_dir, metric: str) -> Path:
    return RunLayout(run_dir).distances(metric)


def block_grid(
    rows: np.ndarray, cols: np.ndarray, block_size: int, upper_only: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row indices, column indices) per block; `upper_only` keeps blocks that hold a pair i <= j."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    blocks = []
    for r0 in range(0, len(rows), block_size):
        r = rows[r0 : r0 + block_size]
        for c0 in range(0, len(cols), block_size):
            c = cols[c0 : c0 + block_size]
            if upper_only and r.min() > c.max():
                continue
            blocks.append((r, c))
    return blocks


def block_task(batch: dict, metric: str, config: dict, refs: list) -> dict:
    """Ray Data UDF: the pairs of the blocks named in `batch`, from a state in the object store
    (numpy arrays come back zero-copy, so a task costs no copy of the bank's features)."""
    import ray

    m = get_metric(metric, DistancesConfig.model_validate(config))
    state, blocks = ray.get(refs[0]), ray.get(refs[1])
    parts = [_run_block(m, state, *blocks[int(b)]) for b in batch["block"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("i", "j", "d")}


def _run_block(metric, state, rows, cols) -> dict:
    if metric.symmetric and np.array_equal(rows, cols):
        # a diagonal block: compute r <= c, mirror (the lower index is the target, as in the matrix)
        d = np.triu(metric.block_upper(take(state, rows)))
        d = d + np.triu(d, 1).T
    else:
        d = metric.block(take(state, rows), take(state, cols))
    i, j = np.meshgrid(rows, cols, indexing="ij")
    return {"i": i.ravel().astype(np.int32), "j": j.ravel().astype(np.int32), "d": np.asarray(d, np.float64).ravel()}


def use_ray(config: DistancesConfig, estimate_s: float) -> bool:
    """'ray' always; 'auto' when the work is worth distributing and this process is connected to
    Ray (the commands connect first; a library call without Ray computes on threads)."""
    if config.executor == "ray":
        return True
    if config.executor != "auto" or estimate_s < config.ray_min_work_s:
        return False
    import ray

    return ray.is_initialized()


def compute_blocks(
    metric,
    state: dict,
    blocks,
    config: DistancesConfig,
    out: np.ndarray,
    *,
    estimate_s: float = 0.0,
    progress: bool = False,
) -> None:
    """Fill out[i, j] for every pair of every block: Ray Data tasks, or threads of this process
    (numpy releases the GIL inside its array operations, so threads do run in parallel)."""
    t0 = time.perf_counter()
    label = f"distances {metric.name}"

    def report(done: int, where: str) -> None:
        if progress:
            log.debug(f"{label}: {done}/{len(blocks)} blocks {where} ({time.perf_counter() - t0:.1f}s)")

    if not blocks:
        return
    if not use_ray(config, estimate_s):
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        threads = min(config.num_workers or os.cpu_count() or 1, len(blocks))
        # The blocks are the parallelism: BLAS threads on top oversubscribe the cores, and OpenBLAS
        # threads spin-wait on each other (P[502, 32000] @ log Pᵀ: 2.0 s with 2 threads, 0.27 s with 1).
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=threads) as pool:
            for k, res in enumerate(pool.map(lambda b: _run_block(metric, state, *b), blocks), 1):
                out[res["i"], res["j"]] = res["d"]
                report(k, f"on {threads} thread(s)")
    else:
        import ray

        require_ray("distances.executor 'ray'")
        workers = config.num_workers or max(1, int(ray.available_resources().get("CPU", 1)))
        refs = [ray.put(state), ray.put(blocks)]
        ds = ray.data.from_items([{"block": k} for k in range(len(blocks))], override_num_blocks=len(blocks))
        ds = ds.map_batches(
            block_task,
            fn_kwargs={"metric": metric.name, "config": config.model_dump(mode="json"), "refs": refs},
            batch_size=1,
            num_cpus=1,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=min(workers, len(blocks))),
            **task_fault_tolerance(),
        )
        total, done = sum(len(r) * len(c) for r, c in blocks), 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            out[batch["i"], batch["j"]] = batch["d"]
            done += len(batch["d"])
            report(round(len(blocks) * done / total), f"as Ray Data tasks on {workers} CPU(s)")
        del refs
    if progress:
        log.info(f"{label}: {len(blocks)} blocks in {time.perf_counter() - t0:.1f}s")


def _grid(metric, features, config: DistancesConfig, rows, cols, upper_only: bool):
    blocks = block_grid(rows, cols, config.block_size or metric.default_block, upper_only)
    pairs = sum(len(r) * len(c) for r, c in blocks)
    return blocks, metric.estimate_seconds(pairs, features)


def _finish(metric, d: np.ndarray, ident_rows: list, ident_cols: list) -> np.ndarray:
    """Exact zeros on pairs of identical inputs."""
    codes: dict = {}
    rows = np.array([codes.setdefault(a, len(codes)) if a is not None else -1 for a in ident_rows], dtype=np.int64)
    cols = np.array([codes.get(b, -2) if b is not None else -2 for b in ident_cols], dtype=np.int64)
    d[rows[:, None] == cols[None, :]] = 0.0
    return d


def pairwise_distances(
    features, metric: str, config: DistancesConfig | None = None, *, rows=None, cols=None, progress: bool = False
) -> np.ndarray:
    """D [len(rows), len(cols)] (default: all × all) between the datasets of a FeatureSet, in blocks."""
    config = config or DistancesConfig(executor="local")
    m = get_metric(metric, config)
    n = len(features)
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    cols = np.arange(n) if cols is None else np.asarray(cols, np.int64)
    state = m.prepare(features)
    full = np.full((n, n), np.nan)
    square = m.symmetric and np.array_equal(rows, cols)
    blocks, estimate = _grid(m, features, config, rows, cols, square)
    compute_blocks(m, state, blocks, config, full, estimate_s=estimate, progress=progress)
    if square:
        full = _mirror(full)
    ident = m.identities(features)
    d = full[np.ix_(rows, cols)]
    return _finish(m, d, [ident[i] for i in rows], [ident[j] for j in cols])


def _read_previous(path: Path, m, tokenizer_sha: str):
    """(tasks, identities, D) of a stored matrix usable for this metric definition, else None."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    if (meta.get("version"), meta.get("params"), meta.get("tokenizer_sha256")) != (
        m.version,
        m.params(),
        tokenizer_sha,
    ):
        return None
    tasks = meta["tasks"]
    return tasks, meta["identities"], _dense(table, tasks, path)


def _mirror(d: np.ndarray) -> np.ndarray:
    """A symmetric metric's square D [N, N] with NaN where not computed: each unordered pair takes
    the value computed with the lower index as target (d[i, j], i < j), or the other one if only
    that was computed."""
    mirrored = d.T
    lower = np.tril(np.ones(d.shape, dtype=bool), -1)
    d = np.where(lower & ~np.isnan(mirrored), mirrored, d)
    return np.where(np.isnan(d), mirrored, d)


def _dense(table, tasks: list[str], path) -> np.ndarray:
    index = {t: k for k, t in enumerate(tasks)}
    cols = table.select(["target", "source", "d"]).to_pydict()
    d = np.full((len(tasks), len(tasks)), np.nan)
    try:
        d[[index[t] for t in cols["target"]], [index[s] for s in cols["source"]]] = cols["d"]
    except KeyError as err:
        raise DistancesError(f"{path}: task {err} is not in the file's task list") from None
    if np.isnan(d).any():
        i, j = np.argwhere(np.isnan(d))[0]
        raise DistancesError(f"{path}: the pair target {tasks[i]} source {tasks[j]} is missing")
    return d


def compute_distance_matrix(
    run_dir,
    metric: str,
    config: DistancesConfig | None = None,
    *,
    features=None,
    progress: bool = True,
    timings: dict | None = None,
):
    """(task ids, D [N, N]) of the bank for `metric`, written to RUN/distances/<metric>.parquet.

    Reuses the stored matrix for every pair of unchanged tasks; a re-run with nothing new
    computes nothing (and does not rewrite the file). `timings`, when given, receives the
    seconds spent per step: identities, previous, prepare, blocks, assemble, write.
    """

    config = config or DistancesConfig()
    m = get_metric(metric, config)
    if features is None:
        features = load_bank_features(run_dir, embeddings=m.representation == "embeddings")
    clock = _Clock(timings)
    tasks, ident = list(features.names), m.identities(features)
    clock("identities")
    path = distance_path(run_dir, metric)
    prev = _read_previous(path, m, features.tokenizer_sha256)
    n = len(tasks)
    d = np.full((n, n), np.nan)
    keep = np.zeros(n, dtype=bool)
    if prev is not None:
        old = {(t, i): k for k, (t, i) in enumerate(zip(prev[0], prev[1]))}
        where = np.array([old.get((t, i), -1) for t, i in zip(tasks, ident)])
        keep = where >= 0
        kept = np.flatnonzero(keep)
        d[np.ix_(kept, kept)] = prev[2][np.ix_(where[kept], where[kept])]
        if keep.all() and prev[0] == tasks:
            if progress:
                log.info(f"distances {metric}: {path} is up to date ({n} tasks)")
            return tasks, d
    new = np.flatnonzero(~keep)
    clock("previous")
    state = m.prepare(features)
    clock("prepare")
    if not keep.any():
        blocks, estimate = _grid(m, features, config, np.arange(n), np.arange(n), m.symmetric)
    else:
        blocks, estimate = _grid(m, features, config, new, np.arange(n), False)
        if not m.symmetric:
            more, extra = _grid(m, features, config, np.flatnonzero(keep), new, False)
            blocks, estimate = blocks + more, estimate + extra
    computed = np.full((n, n), np.nan)
    compute_blocks(m, state, blocks, config, computed, estimate_s=estimate, progress=progress)
    clock("blocks")
    if m.symmetric:
        computed = _mirror(computed)
    d = np.where(np.isnan(d), computed, d)
    if np.isnan(d).any():
        i, j = np.argwhere(np.isnan(d))[0]
        raise DistancesError(f"metric {metric}: pair target {tasks[i]} source {tasks[j]} was not computed")
    d = _finish(m, d, ident, ident)
    clock("assemble")
    write_distance_table(path, distance_table(tasks, d, m, ident, features.tokenizer_sha256))
    clock("write")
    return tasks, d


class _Clock:
    """Adds the seconds since the previous call to timings[step] (nothing when timings is None)."""

    def __init__(self, timings: dict | None):
        self.timings, self.t = timings, time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[step] = self.timings.get(step, 0.0) + now - self.t
        self.t = now


def write_distance_table(path: Path, table) -> None:
    """Atomically, with dictionary encoding for the task names only (the distances have no
    repeats to find: trying costs 60 % of the write at N = 502)."""
    import pyarrow.parquet as pq

    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, use_dictionary=["target", "source"])


def distance_table(tasks: list[str], d: np.ndarray, metric, identities, tokenizer_sha: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(tasks)
    names = pa.array(tasks, pa.string())
    index = np.arange(n, dtype=np.int32)
    meta = {
        "metric": metric.name,
        "version": metric.version,
        "definition": metric.definition,
        "symmetric": metric.symmetric,
        "params": metric.params(),
        "tasks": list(tasks),
        "identities": list(identities),
        "tokenizer_sha256": tokenizer_sha,
        "layout": "d = d(target, source); row i of the matrix is the target",
    }
    table = pa.table(
        {
            "target": pc.take(names, np.repeat(index, n)),
            "source": pc.take(names, np.tile(index, n)),
            "d": pa.array(np.asarray(d, np.float64).ravel(), pa.float64()),
        }
    )
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def load_distance_matrix(run_dir, metric: str, task_ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(task ids, D [N, N]) from RUN/distances/<metric>.parquet, in the order it was computed, or in
    the order of `task_ids` (which the file must cover; its other tasks are left out)."""
    import pyarrow.parquet as pq

    path = distance_path(run_dir, metric)
    if not path.is_file():
        raise DistancesError(f"{path} does not exist: compute the {metric} distances first")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    tasks = list(meta.get("tasks") or dict.fromkeys(table.column("target").to_pylist()))
    d = _dense(table, tasks, path)
    if task_ids is None:
        return tasks, d
    index = {t: k for k, t in enumerate(tasks)}
    missing = [t for t in task_ids if t not in index]
    if missing:
        raise DistancesError(
            f"{path} lacks {len(missing)} task(s) of the bank, e.g. {missing[0]}: compute the {metric} distances again"
        )
    order = [index[t] for t in task_ids]
    return list(task_ids), d[np.ix_(order, order)]


def query_distances(bank, query, metric: str, *, config: DistancesConfig | None = None, progress: bool = False):
    """(bank task ids, d [N]) with d[j] = d(query target, bank task j source) — query mode.

    `bank` is a run directory (its cached features; the metric's parameters recorded with the
    bank's matrix, when there is one, win over `config`) or a FeatureSet; `query` a FeatureSet
    of one dataset. KL is KL(query ‖ bank task), as in the bank's matrix rows.
    """

    m = get_metric(metric, config or DistancesConfig())
    if isinstance(bank, FeatureSet):
        bank_features = bank
    else:
        bank_features = load_bank_features(bank, embeddings=m.representation == "embeddings")
        if config is None and distance_path(bank, metric).is_file():
            import pyarrow.parquet as pq

            meta = json.loads(pq.read_schema(distance_path(bank, metric)).metadata.get(META_KEY, b"{}"))
            m = get_metric(metric, DistancesConfig(**meta.get("params", {})))
    if len(query) != 1:
        raise DistancesError(f"query mode takes the features of one dataset, got {len(query)}")
    if query.tokenizer_sha256 != bank_features.tokenizer_sha256:
        raise DistancesError("the query's features come from another tokenizer than the bank's")
    both = FeatureSet.concat([query, bank_features])
    cfg = m.config.model_copy(update={"executor": "local"})
    d = pairwise_distances(both, metric, cfg, rows=[0], cols=np.arange(1, len(both)), progress=progress)
    return list(bank_features.names), d[0]


def compute_distances(
    run_dir, config: DistancesConfig | None = None, metrics: list[str] | None = None, *, progress: bool = True
) -> dict:
    """Every metric of `metrics` (default config.metrics) over the bank: {metric: D}."""

    config = config or DistancesConfig()
    metrics = list(metrics or config.metrics)
    classes = {name: metric_class(name) for name in metrics}  # unknown names fail before any work
    cache = {}
    out = {}
    for name in metrics:
        emb = classes[name].representation == "embeddings"
        if emb not in cache:
            cache[emb] = load_bank_features(run_dir, embeddings=emb)
        t0 = time.perf_counter()
        tasks, d = compute_distance_matrix(run_dir, name, config, features=cache[emb], progress=progress)
        out[name] = d
        if progress:
            log.info(
                f"{name}: {len(tasks)}×{len(tasks)} in {time.perf_counter() - t0:.1f}s -> {distance_path(run_dir, name)}"
            )
    return out
