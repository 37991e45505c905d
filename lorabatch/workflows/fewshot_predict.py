"""`lorabatch predict --fewshot select|refine`: the few-shot settings for a new dataset.

The dataset's rows are its training examples (a user dataset has no test split here); k of them,
a seeded sample, give the loss. Candidates for `select` are the query coefficients of every
coefficient model the bank supports for the metric, the controls (uniform: 1/N each; nearest:
the closest bank task), the normalized grid and the pool's own adapters; `refine` starts from
select's choice (the default) or from the `--metric`/`--model` coefficients. The base model's weights are needed (forward passes), unlike plain `predict`.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from lorabatch.bank.manifest import load_manifest, trusts_remote_code
from lorabatch.fewshot.config import FewShotConfig
from lorabatch.fewshot.loss import FewShotLoss
from lorabatch.fewshot.methods import candidate_rows, grid_candidates, run_methods
from lorabatch.fewshot.stage import pool_of, singles
from lorabatch.settings import REFINE, SELECT
from lorabatch.synthesis.config import SynthesisConfig
from lorabatch.synthesis.stage import SynthesisError, neural_model_dir, synthesize_one
from lorabatch.synthesis.writer import contributors
from lorabatch.workflows.predict import PredictResult, prepare_query, query_coefficients


def sample_rows(dataset, k: int, seed: int, salt: str) -> list[dict]:
    """k rows of a user dataset (seeded, in file order)."""
    rows = dataset.to_pylist()
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(salt.encode())])
    picked = np.sort(rng.choice(len(rows), size=min(k, len(rows)), replace=False))
    return [rows[int(i)] for i in picked]


def query_candidates(
    q, bank_run: Path, metric: str, config: SynthesisConfig, fewshot: FewShotConfig, keep: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """{name: C [1, N]}: the select candidates of a query row, over the bank tasks `keep` (None:
    all; the others get weight 0, and the neural model, trained on the whole bank, is left out)."""
    n = q.layout.n_tasks
    keep = np.arange(n) if keep is None else np.asarray(keep, dtype=np.int64)
    d = q.distances[keep]

    def full(c: np.ndarray) -> np.ndarray:
        out = np.zeros((1, n))
        out[0, keep] = c
        return out

    out = {}
    for model in ("attentional", "normalized", "neural"):
        if model == "neural" and (
            len(keep) < n or not (neural_model_dir(bank_run, metric) / "model.safetensors").is_file()
        ):
            continue
        out[f"{metric}-{model}"] = full(query_coefficients(d, model, config, bank_run, metric))
    out["uniform"] = full(np.full(len(keep), 1.0 / len(keep)))
    nearest = np.zeros(len(keep))
    nearest[int(np.argmin(d))] = 1.0
    out[f"nearest-{metric}"] = full(nearest)
    grid = grid_candidates({metric: d[None, :]}, fewshot.select.temperatures, fewshot.select.top_k, exclude_self=False)
    out.update({name: full(c[0]) for name, c in grid.items()})
    return out


def query_pool(q, fewshot: FewShotConfig, keep: np.ndarray | None = None) -> list[int]:
    """The `pool` bank tasks nearest to the query (among `keep`; None: all)."""
    left_out = () if keep is None else sorted(set(range(q.layout.n_tasks)) - {int(j) for j in keep})
    return pool_of([q.distances], fewshot.pool, exclude=left_out)


def fewshot_predict(
    bank_run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    method: str,
    metric: str = "JS",
    model: str = "normalized",
    config: SynthesisConfig | None = None,
    fewshot: FewShotConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    top: int = 10,
    exclude: tuple[str, ...] | list[str] = (),
):
    """Write the `select` or `refine` adapter of the dataset at `data` into `out`; returns a
    `PredictResult` (its `coefficients` are the chosen ones) and the `FewShotResult`.

    `exclude`: bank task ids that take no part (no weight in any candidate, not in the pool) —
    a leave-one-out evaluation holds the dataset's own task out this way."""
    if method not in (SELECT, REFINE):
        raise SynthesisError(f"unknown few-shot method {method!r}; one of select, refine")
    config = config or SynthesisConfig()
    fewshot = fewshot or FewShotConfig()
    bank_run, data, out = Path(bank_run), Path(data), Path(out)
    q = prepare_query(
        bank_run, data, out, metric=metric, model=model, config=config, seed=seed, progress=progress, exclude=exclude
    )
    ids, keep = q.layout.task_ids, q.keep
    if fewshot.refine.start != SELECT:  # predict's paper setting is the one of --metric/--model
        fewshot = fewshot.model_copy(
            update={"refine": fewshot.refine.model_copy(update={"start": f"{metric}-{model}"})}
        )
    trust = trusts_remote_code(load_manifest(bank_run))
    evaluator = FewShotLoss(
        str(q.base_model_path),
        q.layout.adapter_config,
        fewshot.device,
        fewshot.dtype,
        fewshot.batch_size,
        trust_remote_code=trust,
        candidates_per_pass=fewshot.candidates_per_pass,
    )
    evaluator.set_examples(sample_rows(q.dataset, fewshot.examples, seed, q.data_hash))
    matrices = query_candidates(q, bank_run, metric, config, fewshot, keep)
    paper = [name for name in matrices if name.startswith(f"{metric}-") and "@" not in name]
    pool = query_pool(q, fewshot, keep)
    start = q.coefficients
    results = run_methods(
        evaluator,
        q.layout,
        [method],
        fewshot,
        config,
        candidate_rows(0, matrices, singles(pool, q.layout.task_ids)),
        pool,
        {f"{metric}-{model}": start},
        paper,
        seed,
        fewshot.max_new_tokens or 256,
    )
    if isinstance(results[method], Exception):
        raise results[method]
    result, syn = results[method]
    record = result.record(method, len(evaluator.items))
    synthesize_one(
        q.layout,
        result.coefficients,
        out,
        syn,
        setting=method,
        target=f"query:{q.data_hash[:16]}",
        extra={**q.provenance(data), "fewshot": record},
        progress=progress,
    )
    return PredictResult(
        out, ids, q.distances, result.coefficients, contributors(ids, result.coefficients, top), q.ignored_columns
    ), result
