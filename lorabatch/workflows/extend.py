"""`lorabatch bank extend CONFIG`: train the adapters a local bank lacks, then bring the run up to date.

A task the bank is missing is a dataset directory matching `bank.dataset_repo` (with a train
split) whose adapter directory (`bank.adapter_repo`) holds no adapter_model.safetensors. Each is
trained on Ray Train (`lorabatch.training`, `training.parallel_tasks` at a time) with the LoRA
shape of the bank's existing adapters, written into the bank with provenance.json, and the bank
stage runs again. When the run already has features, they and the distance matrices are brought
up to date: cached features are reused, and the distances stage computes only the pairs that
involve a new task (its incremental update).

Recipe and seeds: a bank built by the demo builder (`demo_bank.json` at its root) is extended with
its own recipe and seeds (size, lora_init, seed, threads), so that a restored adapter is the one
the builder trained; any other bank with `training` and task N's seed `task_seed(seed, N)`
(`training.seed`, else the run's seed).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.bank.datasets import read_split, split_files
from lorabatch.bank.manifest import base_model_with_weights, write_manifest
from lorabatch.demo.build import SIZES, read_manifest
from lorabatch.demo.lora_init import DEFAULT_SHARED_FRACTION, lora_init_seeds, task_seed
from lorabatch.errors import LorabatchError
from lorabatch.layout import RunLayout
from lorabatch.training.config import TrainingConfig
from lorabatch.training.lora import LoraSpec
from lorabatch.training.trainer import TrainJob, ensure_training_ray, fit_many
from lorabatch.workflows.demo_bank import ensure_demo_bank
from lorabatch.workflows.distances import features_and_distances
from lorabatch.workflows.train import training_key, training_provenance, write_trained_adapter
from lorabatch.workflows.userdata import rows_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MissingAdapter:
    number: int
    slug: str
    dataset_dir: Path
    adapter_dir: Path

    @property
    def task_id(self) -> str:
        return f"task{self.number}"


@dataclass
class ExtendResult:
    trained: list[str]  # task ids whose adapter was trained
    adapter_dirs: list[Path]
    manifest_tasks: int
    distance_metrics: list[str]  # the matrices brought up to date (none when the run has no features)


def missing_adapters(bank_config) -> list[MissingAdapter]:
    """The bank's tasks with a dataset (train split) and no adapter, by task number."""
    if bank_config.source != "local":
        raise LorabatchError(
            "bank extend writes the new adapters into the bank: it needs a local bank (bank.source: local)"
        )
    root = Path(bank_config.root)
    *parent, leaf = bank_config.dataset_repo.split("/")
    if "{" in "/".join(parent):
        raise LorabatchError(
            f"bank.dataset_repo {bank_config.dataset_repo!r}: extend needs the placeholders in its last part"
        )
    pattern = re.compile(
        "^"
        + re.escape(leaf).replace(r"\{number\}", "(?P<number>[1-9][0-9]*)").replace(r"\{slug\}", "(?P<slug>.+)")
        + "$"
    )
    wanted = (
        None if bank_config.tasks == "all" else {int(re.match(r"task([0-9]+)", t).group(1)) for t in bank_config.tasks}
    )
    found = []
    folder = root.joinpath(*parent)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = pattern.match(path.name)
        if not match or not path.is_dir() or not split_files(path, "train"):
            continue
        number = int(match["number"])
        if wanted is not None and number not in wanted:
            continue
        adapter = root / bank_config.adapter_repo.format(number=number)
        if not (adapter / ADAPTER_WEIGHTS).is_file():
            found.append(MissingAdapter(number, match.groupdict().get("slug") or "", path, adapter))
    return sorted(found, key=lambda m: m.number)


def existing_lora(bank_config) -> dict:
    """adapter_config.json of one adapter the bank has (its shape is every new adapter's)."""
    root = Path(bank_config.root)
    *parent, leaf = bank_config.adapter_repo.split("/")
    pattern = re.compile("^" + re.escape(leaf).replace(r"\{number\}", "[1-9][0-9]*") + "$")
    folder = root.joinpath(*parent)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if pattern.match(path.name) and (path / ADAPTER_WEIGHTS).is_file() and (path / ADAPTER_CONFIG).is_file():
            return json.loads((path / ADAPTER_CONFIG).read_text())
    raise LorabatchError(
        f"bank extend copies the LoRA shape of the bank's adapters, but {folder} holds none matching {bank_config.adapter_repo!r}"
    )


def _recipe(config, missing: list[MissingAdapter], lora: dict) -> tuple[TrainingConfig, dict[int, tuple[int, int]]]:
    """(training config, task number -> (init seed, data seed)): the demo builder's own for its banks."""
    demo = read_manifest(config.bank.root)
    numbers = [m.number for m in missing]
    if demo is not None and demo.get("size") in SIZES:
        every = sorted({int(t["task_id"][4:]) for t in demo["tasks"]} | set(numbers))
        fraction = demo.get("shared_fraction") if demo.get("shared_fraction") is not None else DEFAULT_SHARED_FRACTION
        init = lora_init_seeds(every, demo["seed"], demo["lora_init"], fraction)
        training = SIZES[demo["size"]].train.training_config(
            threads=int(demo.get("threads") or 2), parallel_tasks=config.training.parallel_tasks
        )
        return training, {n: (init[n], task_seed(demo["seed"], n)) for n in numbers}
    seed = config.training.seed if config.training.seed is not None else config.seed
    return config.training, {n: (task_seed(seed, n), task_seed(seed, n)) for n in numbers}


def extend_bank(config, *, progress: bool = True) -> ExtendResult:
    """Train the missing adapters of `config.bank`, then the bank stage, features and distances."""
    missing = missing_adapters(config.bank)
    layout = RunLayout(config.run_dir)
    trained, dirs = [], []
    if missing:
        lora = existing_lora(config.bank)
        training, seeds = _recipe(config, missing, lora)
        base = base_model_with_weights(config.bank)
        base_name = lora.get("base_model_name_or_path") or config.bank.base_model_name or config.bank.base_model
        jobs, keys = [], {}
        for m in missing:
            init_seed, data_seed = seeds[m.number]
            spec = LoraSpec(
                int(lora["r"]), float(lora["lora_alpha"]), tuple(sorted(lora["target_modules"])), base_name, init_seed
            )
            rows = [
                {"input": r["input"], "output": list(r["output"])}
                for r in read_split(m.dataset_dir, "train", ["input", "output"]).to_pylist()
            ]
            key = training_key(
                f"dataset:{m.dataset_dir.name}",
                rows_hash((r["input"], r["output"]) for r in rows),
                spec,
                training,
                data_seed,
            )
            jobs.append(
                TrainJob(
                    f"extend-{m.task_id}-{key[:12]}",
                    base,
                    rows,
                    spec,
                    data_seed,
                    trust_remote_code=config.bank.trust_remote_code,
                )
            )
            keys[jobs[-1].name] = (m, spec, key)
        log.info("training %d missing adapter(s): %s", len(jobs), ", ".join(m.task_id for m in missing))
        ensure_training_ray(training, config.ray.address, parallel=training.parallel_tasks)
        results = fit_many(jobs, training, layout.training)
        for name, result in results.items():
            m, spec, key = keys[name]
            prov = training_provenance(
                result, training, spec, None, key, target=m.task_id, extra={"dataset": str(m.dataset_dir)}
            )
            write_trained_adapter(result.checkpoint_dir, m.adapter_dir, prov)
            trained.append(m.task_id)
            dirs.append(m.adapter_dir)
    ensure_demo_bank(config.bank)
    manifest = write_manifest(config.bank, config.run_dir, progress=progress)
    metrics = _update_distances(config, manifest, progress) if layout.features.is_dir() else []
    return ExtendResult(trained, dirs, manifest.num_rows, metrics)


def _update_distances(config, manifest, progress: bool) -> list[str]:
    """Features (cached ones reused) and the distance matrices the run has or its config names;
    the distances stage computes only pairs that involve a task it has not seen."""
    metrics = RunLayout(config.run_dir).distance_metrics() or list(config.distances.metrics)
    dist = config.distances.model_copy(update={"metrics": metrics})
    features_and_distances(config, manifest, distances=dist, progress=progress)
    return metrics
