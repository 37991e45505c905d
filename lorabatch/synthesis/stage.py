"""The synthesis stage on a run directory: coefficients per (metric, model), then adapters.

Reads   RUN/bank/manifest.parquet              (task order, adapter paths, manifest hash)
        RUN/distances/<metric>.parquet         target, source, d  (the distances stage's contract)
Writes  RUN/coefficients/<metric>/<model>.parquet   target, source, c, rank (1 = largest weight);
            only non-zero weights; schema metadata `lorabatch.coefficients` (JSON): metric, model,
            tasks (row/column order), temperature, top_k, manifest hash, and for neural the
            training tasks
        RUN/coefficients/<metric>/nearest.parquet   control nearest-<metric> (same schema)
        RUN/coefficients/uniform.parquet            control uniform (same schema)
        RUN/coefficients/<metric>/neural/model.{safetensors,json}   the trained MLP
        RUN/coefficients/gram.npy (+ gram.json: manifest hash)       G = ΘΘᵀ of the bank
        RUN/adapters/<setting>/<task>/                              PEFT dir + provenance.json
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from lorabatch.atomic import write_json, write_npy, write_parquet
from lorabatch.distances.matrix import load_distance_matrix
from lorabatch.distances.registry import DistancesError
from lorabatch.errors import LorabatchError
from lorabatch.layout import RunLayout
from lorabatch.settings import NEAREST, UNIFORM, Setting
from lorabatch.synthesis.batch import bank_gram, output_dtype_name, synthesize_batch
from lorabatch.synthesis.coefficients import model_coefficients, nearest_coefficients, uniform_coefficients
from lorabatch.synthesis.config import SynthesisConfig
from lorabatch.synthesis.mixing import mix_exact, mix_linear
from lorabatch.synthesis.neural import mlp_scalar_fn, save_neural_model, train_neural_model
from lorabatch.synthesis.tensors import BankLayout, layout_from_manifest
from lorabatch.synthesis.writer import (
    is_current,
    output_adapter_config,
    provenance_record,
    synthesis_key,
    write_adapter,
)

COEFFICIENTS_META = b"lorabatch.coefficients"


class SynthesisError(LorabatchError):
    """A synthesis input is missing or inconsistent (distances, coefficients, trained model)."""


def coefficients_path(run_dir, metric: str, model: str) -> Path:
    return RunLayout(run_dir).coefficients_file(metric, model)


def setting_coefficients_path(run_dir, setting: Setting | str) -> Path:
    """The coefficient file of a paper setting or a control."""
    path = RunLayout(run_dir).coefficients(setting)
    if path is not None:
        return path
    setting = Setting.parse(setting) if isinstance(setting, str) else setting
    raise SynthesisError(f"setting {setting.name} has no coefficient file (it is not a mixture of bank adapters)")


def neural_model_dir(run_dir, metric: str) -> Path:
    return RunLayout(run_dir).neural_model(metric)


def adapter_dir(run_dir, setting: str, task_id: str) -> Path:
    return RunLayout(run_dir).adapter(setting, task_id)


def distance_matrix_of(run_dir, metric: str, task_ids: list[str]) -> np.ndarray:
    """D [N, N] alone, in `task_ids` order (`distances.matrix.load_distance_matrix`);
    `SynthesisError` if the distances are missing."""
    try:
        return load_distance_matrix(run_dir, metric, task_ids)[1]
    except DistancesError as err:
        raise SynthesisError(str(err)) from None


def write_coefficients(
    path, task_ids: list[str], coefficients: np.ndarray, meta: dict, targets: list[str] | None = None
) -> Path:
    """Long-format Parquet of the non-zero weights, with `meta` + task order in the schema metadata."""
    import pyarrow as pa

    c = np.asarray(coefficients, dtype=np.float64)
    targets = list(task_ids) if targets is None else list(targets)
    order = np.argsort(-c, axis=1, kind="stable")
    rows = {"target": [], "source": [], "c": [], "rank": []}
    for i, t in enumerate(targets):
        for k, j in enumerate(order[i]):
            if c[i, j] <= 0:
                break
            rows["target"].append(t)
            rows["source"].append(task_ids[j])
            rows["c"].append(float(c[i, j]))
            rows["rank"].append(k + 1)
    table = pa.table(
        {
            "target": pa.array(rows["target"], pa.string()),
            "source": pa.array(rows["source"], pa.string()),
            "c": pa.array(rows["c"], pa.float64()),
            "rank": pa.array(rows["rank"], pa.int32()),
        }
    )
    full_meta = dict(meta, tasks=list(task_ids), targets=targets)
    table = table.replace_schema_metadata({COEFFICIENTS_META: json.dumps(full_meta).encode()})
    write_parquet(path, table)
    return Path(path)


def read_coefficients(path) -> tuple[list[str], list[str], np.ndarray, dict]:
    """(targets, sources, C [len(targets), len(sources)], meta) from a coefficients Parquet."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise SynthesisError(f"{path} does not exist: compute the coefficients first (`lorabatch synthesize`)")
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[COEFFICIENTS_META])
    sources, targets = meta["tasks"], meta["targets"]
    si, ti = {t: j for j, t in enumerate(sources)}, {t: i for i, t in enumerate(targets)}
    c = np.zeros((len(targets), len(sources)))
    cols = table.to_pydict()
    for t, s, v in zip(cols["target"], cols["source"], cols["c"]):
        c[ti[t], si[s]] = v
    return targets, sources, c, meta


def bank_gram_cached(run_dir, layout: BankLayout, chunk_size: int, progress: bool = True) -> np.ndarray:
    """G = ΘΘᵀ of the bank, cached in RUN/coefficients/gram.npy keyed by the manifest hash."""

    path = RunLayout(run_dir).gram
    sidecar = path.with_suffix(".json")
    key = {"manifest_hash": layout.manifest_hash, "tasks": layout.task_ids, "n_params": layout.n_params}
    if path.is_file() and sidecar.is_file() and layout.manifest_hash and json.loads(sidecar.read_text()) == key:
        return np.load(path, allow_pickle=False)
    gram = bank_gram(layout, chunk_size, progress)
    write_npy(path, gram)
    write_json(sidecar, key)
    return gram


def compute_coefficients(
    run_dir,
    metric: str,
    config: SynthesisConfig,
    seed: int = 0,
    layout: BankLayout | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Every configured model's leave-one-out C [N, N] for one metric (returned), written to Parquet
    with the nearest-<metric> control's when `config.controls` asks for it."""
    layout = layout or layout_from_manifest(run_dir)
    d = distance_matrix_of(run_dir, metric, layout.task_ids)
    common = dict(temperature=config.temperature, top_k=config.top_k)
    meta = {"metric": metric, "manifest_hash": layout.manifest_hash, **common}
    out = {}
    for model in config.models:
        extra, scalar_fn = {}, None
        if model == "neural":
            mlp, info = train_neural_for_run(run_dir, metric, d, layout, config, seed, progress)
            scalar_fn = mlp_scalar_fn(mlp)
            extra = {"train_tasks": [layout.task_ids[i] for i in info["train_indices"]]}
        c = model_coefficients(model, d, scalar_fn=scalar_fn, **common)
        write_coefficients(
            coefficients_path(run_dir, metric, model), layout.task_ids, c, {**meta, "model": model, **extra}
        )
        out[model] = c
    if NEAREST in config.controls:
        c = nearest_coefficients(d)
        write_coefficients(
            setting_coefficients_path(run_dir, Setting.nearest(metric)),
            layout.task_ids,
            c,
            {"metric": metric, "manifest_hash": layout.manifest_hash, "model": NEAREST},
        )
    return out


def mixture_settings(metrics, config: SynthesisConfig) -> list[Setting]:
    """The settings whose adapters are bank mixtures: <metric>-<model> for every metric and model,
    then the controls (uniform once, nearest-<metric> per metric)."""
    out = [Setting.paper(m, model) for m in metrics for model in config.models]
    if UNIFORM in config.controls:
        out.append(Setting(UNIFORM))
    if NEAREST in config.controls:
        out += [Setting.nearest(m) for m in metrics]
    return out


def compute_uniform_coefficients(run_dir, layout: BankLayout | None = None) -> np.ndarray:
    """The `uniform` control's C [N, N] (1 / (N − 1) off the diagonal), written to Parquet."""

    layout = layout or layout_from_manifest(run_dir)
    c = uniform_coefficients(layout.n_tasks)
    write_coefficients(
        setting_coefficients_path(run_dir, UNIFORM),
        layout.task_ids,
        c,
        {"metric": None, "manifest_hash": layout.manifest_hash, "model": UNIFORM},
    )
    return c


def train_neural_for_run(run_dir, metric, d, layout, config: SynthesisConfig, seed, progress=True):
    """Train the neural model on this bank (Gram or explicit loss) and save it with the run."""

    nc = config.neural
    seed = nc.seed if nc.seed is not None else seed
    kwargs = dict(
        hidden=nc.hidden,
        epochs=nc.epochs,
        lr=nc.lr,
        train_fraction=nc.train_fraction,
        seed=seed,
        temperature=config.temperature,
        eval_chunk=nc.eval_chunk,
        device=nc.device,
        progress=progress,
        desc=f"coefficients {metric}: neural model",
    )
    if nc.gram:
        gram = bank_gram_cached(run_dir, layout, config.chunk_size, progress)
        mlp, info = train_neural_model(d, gram=gram, n_params=layout.n_params, **kwargs)
    else:
        theta = np.stack([layout.read_flat(i) for i in range(layout.n_tasks)])
        mlp, info = train_neural_model(d, theta=theta, **kwargs)
    save_neural_model(
        neural_model_dir(run_dir, metric),
        mlp,
        {
            "metric": metric,
            "manifest_hash": layout.manifest_hash,
            "seed": seed,
            "epochs": nc.epochs,
            "lr": nc.lr,
            "train_fraction": nc.train_fraction,
            "temperature": config.temperature,
            "loss": "gram" if nc.gram else "explicit",
            "losses": info["losses"],
            "train_tasks": [layout.task_ids[i] for i in info["train_indices"]],
        },
    )
    return mlp, info


def _mixing_spec(config: SynthesisConfig, layout: BankLayout) -> dict:
    spec = {"mode": config.mixing, "output_dtype": config.output_dtype}
    if config.mixes_products:
        spec.update(rank=config.exact_rank or int(layout.adapter_config["r"]))
    if config.mixing == "exact":
        spec.update(cat_max_rank=config.cat_max_rank)
    return spec


def mix_row(layout: BankLayout, coefficients: np.ndarray, config: SynthesisConfig, progress: bool = False):
    """(tensors, rank, exact-mixing report or None) of one coefficient row [N], mixed as `config` says."""

    if not config.mixes_products:
        return mix_linear(layout, coefficients, progress=progress), int(layout.adapter_config["r"]), None
    spec = _mixing_spec(config, layout)
    tensors, report = mix_exact(layout, coefficients, spec["rank"], config.cat_max_rank, mode=config.mixing)
    return tensors, report["rank"], report


def synthesize_one(
    layout: BankLayout,
    coefficients: np.ndarray,
    target_dir,
    config: SynthesisConfig,
    *,
    setting: str | None,
    target: str,
    extra: dict | None = None,
    progress: bool = False,
) -> Path:
    """One adapter from one coefficient row [N] (any mixing mode), written atomically."""

    spec = _mixing_spec(config, layout)
    tensors, rank, report = mix_row(layout, coefficients, config, progress=progress)
    extra = dict(extra or {}, **({"exact": report} if report else {}))
    prov = provenance_record(
        setting=setting,
        target=target,
        task_ids=layout.task_ids,
        coefficients=coefficients,
        manifest_hash=layout.manifest_hash,
        mixing=spec,
        extra=extra,
    )
    cfg = output_adapter_config(layout.adapter_config, rank)
    return write_adapter(target_dir, tensors, cfg, prov, output_dtype_name(layout, config.output_dtype))


def synthesize_setting(
    run_dir,
    setting: Setting | str,
    config: SynthesisConfig,
    *,
    tasks: list[str] | None = None,
    layout: BankLayout | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """All leave-one-out adapters of a paper setting or a control (or those of `tasks`).

    Adapters whose provenance already carries the same synthesis key are kept (cache hit).
    Linear (paper) mixing streams the bank once for all targets; the product-mixing modes (svd,
    cat, exact) go target by target.
    """

    layout = layout or layout_from_manifest(run_dir)
    setting = str(setting)
    targets, sources, c, _ = read_coefficients(setting_coefficients_path(run_dir, setting))
    if sources != layout.task_ids:
        raise SynthesisError(f"coefficients of {setting} were computed for another bank: recompute them")
    wanted = targets if tasks is None else list(tasks)
    unknown = sorted(set(wanted) - set(targets))
    if unknown:
        raise SynthesisError(f"no coefficients for task(s) {unknown[:5]} in setting {setting}")
    rows = [targets.index(t) for t in wanted]
    spec = _mixing_spec(config, layout)
    todo = [
        i
        for i in rows
        if force
        or not is_current(
            adapter_dir(run_dir, setting, targets[i]), synthesis_key(layout.manifest_hash, layout.task_ids, c[i], spec)
        )
    ]
    if not config.mixes_products and todo:
        provs = [
            provenance_record(
                setting=setting,
                target=targets[i],
                task_ids=layout.task_ids,
                coefficients=c[i],
                manifest_hash=layout.manifest_hash,
                mixing=spec,
            )
            for i in todo
        ]
        synthesize_batch(
            layout,
            c[todo],
            [adapter_dir(run_dir, setting, targets[i]) for i in todo],
            provs,
            chunk_size=config.chunk_size,
            output_dtype=config.output_dtype,
            executor=config.executor,
            progress=progress,
        )
    else:
        for i in todo:
            synthesize_one(
                layout, c[i], adapter_dir(run_dir, setting, targets[i]), config, setting=setting, target=targets[i]
            )
    return [adapter_dir(run_dir, setting, targets[i]) for i in rows]


def expected_identities(
    run_dir, setting: str, tasks: list[str], config: SynthesisConfig, layout: BankLayout
) -> dict[str, str]:
    """{task: "synth:<synthesis key>"}: the identity (`generation.fingerprint`) each leave-one-out
    adapter of `setting` has once synthesized with `config`, known before it exists."""

    targets, sources, c, _ = read_coefficients(setting_coefficients_path(run_dir, setting))
    if sources != layout.task_ids:
        raise SynthesisError(f"coefficients of {setting} were computed for another bank: recompute them")
    spec = _mixing_spec(config, layout)
    row = {t: i for i, t in enumerate(targets)}
    return {
        t: f"synth:{synthesis_key(layout.manifest_hash, layout.task_ids, c[row[t]], spec)}" for t in tasks if t in row
    }


@contextlib.contextmanager
def jit_adapter(
    run_dir, setting: str, task_id: str, config: SynthesisConfig, layout: BankLayout | None = None
) -> Iterator[Path]:
    """Just-in-time: yield the (setting, task) adapter, synthesizing it if needed; delete it after
    the block when `config.jit_delete` (also on error, so no half-used adapter stays behind)."""
    path = synthesize_setting(run_dir, setting, config, tasks=[task_id], layout=layout, progress=False)[0]
    try:
        yield path
    finally:
        if config.jit_delete:
            shutil.rmtree(path, ignore_errors=True)
