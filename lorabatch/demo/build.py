"""`lorabatch bank build-demo OUT`: the embedded demo bank, built offline and deterministically.

Layout (the Lots-of-LoRAs layout, as a local "hub" directory)::

    OUT/lorabatch-demo/tiny-mistral/                  base model (safetensors) + tokenizer
    OUT/lorabatch-demo/tiny-mistral-r8-task<N>/       PEFT LoRA of task N (q/k/v, r 8, alpha 16)
    OUT/lorabatch-demo/task<N>_<slug>/data/{train,valid,test}-00000-of-00001.parquet
    OUT/demo_bank.json                                what was built (LoRA init included), timings, acceptance on valid

Builder 5 makes the base model instruction-following (`lorabatch.demo.instruct`): after its
plain-text pre-training it answers the families' questions with the right content in a verbose
house style of its own, and each task adapter teaches its task's exact form — the regime of the
real bank, whose base is Mistral-7B-Instruct. `base="plain"` skips that phase (builder 4's
regime: a base that knows no task in the instruction format). The bank is accepted on rows that
carry no method (`lorabatch.demo.accept`: base, own adapters, `uniform`, valid split).

The bank is built in a temporary directory next to OUT that replaces OUT only when everything,
the evaluation included, has succeeded: an interrupted build never leaves a bank-looking OUT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lorabatch.atomic import atomic_dir, write_json
from lorabatch.bank.datasets import write_split
from lorabatch.demo import train as demo_train
from lorabatch.demo.accept import accept_bank
from lorabatch.demo.families import FAMILIES, Family, TaskSpec, make_examples, split_examples
from lorabatch.demo.inputs import DemoInputs
from lorabatch.demo.lora_init import (
    DEFAULT_SHARED_FRACTION,
    LORA_INITS,
    lora_init_seeds,
    shared_init_seed,
    shared_init_tasks,
    task_seed,
)
from lorabatch.demo.model import new_model
from lorabatch.demo.recipe import (
    BASES,
    BUILDER_VERSION,
    DEFAULT_THREADS,
    SIZES,
    DemoSize,
    recipe,
    recipe_sha256,
    recorded_fraction,
    size_inputs,
)
from lorabatch.demo.tokenizer import train_tokenizer
from lorabatch.demo.train import instruct, lora_model, train_lora
from lorabatch.errors import LorabatchError
from lorabatch.training.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.training.trainer import TrainJob, ensure_training_ray, fit_many

log = logging.getLogger(__name__)

ORG = "lorabatch-demo"
BASE_REPO = f"{ORG}/tiny-mistral"
ADAPTER_REPO = f"{ORG}/tiny-mistral-r8-task{{number}}"
DATASET_REPO = f"{ORG}/task{{number}}_{{slug}}"
MANIFEST = "demo_bank.json"


def default_parallel(threads: int) -> int:
    """Task LoRAs trained at once by default: as many as the machine's cores hold at `threads`
    threads each. More only slow it down: two 2-thread tasks on 2 cores took 5–6× as long per
    step as one alone (`BENCHMARKS.md`). The bank is the same whatever this is, since each task's
    training depends on its own seeds only."""
    return max(1, (os.cpu_count() or 1) // max(1, threads))


def read_manifest(out: str | Path) -> dict | None:
    """The `demo_bank.json` of a complete demo bank in `out`, or None."""
    try:
        info = json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("complete") is True else None


def write_datasets(
    org_dir: Path, specs: list[TaskSpec], examples_per_task: int, seed: int
) -> dict[int, dict[str, list[dict]]]:
    """Generate and write every task's train/valid/test Parquet files; returns the rows."""
    splits = {spec.number: split_examples(make_examples(spec, examples_per_task, seed)) for spec in specs}
    _write_splits(org_dir, specs, splits)
    return splits


def _write_splits(org_dir: Path, specs: list[TaskSpec], splits: dict[int, dict[str, list[dict]]]) -> None:

    for spec in specs:
        for split, rows in splits[spec.number].items():
            write_split(org_dir / spec.name, split, rows)


def build_demo_bank(
    out: str | Path,
    size: str = "default",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    threads: int | None = None,
    lora_init: str = "mixed",
    shared_fraction: float = DEFAULT_SHARED_FRACTION,
    parallel: int | None = None,
    base: str = "instruct",
    families: tuple[Family, ...] | None = None,
) -> Path:
    """Build the demo bank into `out` (or keep the one there); returns `out`.

    An existing complete bank of the same recipe (`lorabatch.demo.recipe`: builder version,
    settings, seed, threads, `lora_init`, `shared_fraction`, base, families and the data they
    generate) is kept unless `force`.
    `threads`: torch threads (None: `DEFAULT_THREADS`); the result depends on it through
    floating-point rounding. `lora_init`: which tasks start from one shared lora_A init
    (`lorabatch.demo.lora_init`); `shared_fraction` is the shared part under `mixed`.
    `parallel`: task LoRAs trained at once (None: `default_parallel`): above 1 on Ray Train, each
    on one worker of `threads` threads; 1 in this process, one after another. The bank does not
    depend on it. `base`: "instruct" (an instruction phase after pre-training) or "plain".
    `families`: the task families to build from (default: `FAMILIES`, the demo's); the size's
    family count is capped at their number.
    A different demo bank in `out` is rebuilt; any other non-empty `out` is refused.
    """
    if size not in SIZES:
        raise LorabatchError(f"unknown demo bank size {size!r}; choose one of {sorted(SIZES)}")
    if lora_init not in LORA_INITS:
        raise LorabatchError(f"unknown lora_init {lora_init!r}; choose one of {list(LORA_INITS)}")
    if not 0.0 <= shared_fraction <= 1.0:  # also refuses NaN
        raise LorabatchError(f"shared_fraction must lie in [0, 1], got {shared_fraction!r}")
    if base not in BASES:
        raise LorabatchError(f"unknown demo base {base!r}; choose one of {list(BASES)}")
    families = FAMILIES if families is None else tuple(families)
    if not families or len({f.name for f in families}) != len(families):
        raise LorabatchError(f"families must be non-empty with distinct names, got {[f.name for f in families]}")
    fraction = recorded_fraction(lora_init, shared_fraction)
    inputs = size_inputs(SIZES[size], seed, base, families)
    want = recipe(size, seed, threads, lora_init, shared_fraction, base, families, inputs)
    out = Path(out)
    have = read_manifest(out)
    if have is not None and not force:
        if have.get("recipe_sha256") == recipe_sha256(want):
            with log_to_stderr(progress):
                log.info(
                    "%s already holds the %s demo bank (seed %d, lora_init %s, builder %s): kept",
                    out,
                    size,
                    seed,
                    _describe_init(lora_init, fraction),
                    BUILDER_VERSION,
                )
            return out
        log.warning(
            "%s holds a demo bank of another recipe (size %r, seed %r, lora_init %r, builder %r): rebuilding it as %s, "
            "seed %d, lora_init %s",
            out,
            have.get("size"),
            have.get("seed"),
            have.get("lora_init"),
            have.get("builder_version"),
            size,
            seed,
            _describe_init(lora_init, fraction),
        )
    if out.exists() and have is None and (not out.is_dir() or any(out.iterdir())):
        raise LorabatchError(
            f"{out} exists and is not a demo bank: refusing to replace it (choose an empty or new directory)"
        )
    with log_to_stderr(progress), _torch_threads(threads):
        return _build(
            out,
            size,
            SIZES[size],
            seed,
            progress,
            lora_init,
            fraction,
            parallel or default_parallel(threads or DEFAULT_THREADS),
            base,
            families,
            want,
            inputs,
        )


def _describe_init(lora_init: str, fraction: float | None) -> str:
    return f"mixed ({fraction:g} shared)" if lora_init == "mixed" else lora_init


def _build(
    out: Path,
    size: str,
    cfg: DemoSize,
    seed: int,
    progress: bool,
    lora_init: str,
    shared_fraction: float | None,
    parallel: int,
    base: str,
    all_families: tuple[Family, ...],
    built_recipe: dict,
    inputs: DemoInputs,
) -> Path:
    import torch

    started = time.perf_counter()
    timings: dict[str, float] = {}
    specs, families, splits = inputs.specs, inputs.families, inputs.splits
    n_families = len(families)
    numbers = [spec.number for spec in specs]
    fraction = DEFAULT_SHARED_FRACTION if shared_fraction is None else shared_fraction
    init_seeds = lora_init_seeds(numbers, seed, lora_init, fraction)
    sharing = shared_init_tasks(numbers, seed, lora_init, fraction)
    log.info(
        "building the %s demo bank (seed %d, %s base) into %s: %d families x %d variants = %d tasks, %d threads",
        size,
        seed,
        base,
        out,
        n_families,
        cfg.n_variants,
        len(specs),
        torch.get_num_threads(),
    )
    log.info(
        "LoRA init %s: %d of %d tasks share one lora_A init (%s)",
        _describe_init(lora_init, shared_fraction),
        len(sharing),
        len(specs),
        ", ".join(f"task{n}" for n in sharing) or "none",
    )
    with atomic_dir(out) as tmp:
        org = tmp / ORG
        base_dir = org / "tiny-mistral"

        t = time.perf_counter()
        _write_splits(org, specs, splits)
        sentences, instruction = inputs.sentences, inputs.instruction
        tokenizer = train_tokenizer(inputs.tokenizer_texts(), base_dir)
        timings["datasets_and_tokenizer"] = time.perf_counter() - t
        log.info(
            "wrote %d datasets (%d examples each); tokenizer: %d words",
            len(specs),
            cfg.examples_per_task,
            len(tokenizer),
        )

        t = time.perf_counter()
        model = new_model(tokenizer, cfg.dims, seed)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "pre-training the base model (%d parameters) for %d steps on %d sentences",
            n_params,
            cfg.train.pretrain_steps,
            len(sentences),
        )
        pre_losses = demo_train.pretrain(model, tokenizer, sentences, cfg.train, seed, progress)
        timings["pretrain"] = time.perf_counter() - t
        log.info("pre-training: loss %.2f -> %.2f in %.0f s", pre_losses[0], _tail(pre_losses), timings["pretrain"])
        instruct_losses: list[float] = []
        if instruction:
            t = time.perf_counter()
            log.info(
                "instruction phase: %d steps on %d rows of the base's own (no bank row, house style)",
                cfg.train.instruct_steps,
                len(instruction),
            )
            instruct_losses = instruct(model, tokenizer, instruction, cfg.train, seed, progress)
            timings["instruct"] = time.perf_counter() - t
            log.info(
                "instruction phase: loss %.2f -> %.3f in %.0f s",
                instruct_losses[0],
                _tail(instruct_losses),
                timings["instruct"],
            )
        model.save_pretrained(base_dir)

        t = time.perf_counter()
        threads = torch.get_num_threads()
        del model
        if parallel == 1:
            results = _train_loras_in_process(org, base_dir, specs, splits, cfg, seed, init_seeds)
        else:
            results = _train_loras(org, base_dir, specs, splits, cfg, seed, init_seeds, threads, parallel)
        lora_losses = {n: (r.losses[0], _tail(r.losses)) for n, r in results.items()}
        train_seconds = {n: r.train_seconds for n, r in results.items()}
        timings["lora"] = time.perf_counter() - t

        t = time.perf_counter()
        acceptance = accept_bank(
            base_dir,
            {spec.task_id: _adapter_dir(org, cfg, spec) for spec in specs},
            {spec.task_id: splits[spec.number]["valid"][: cfg.eval_examples] for spec in specs},
            cfg.max_new_tokens,
            progress,
        )
        timings["accept"] = time.perf_counter() - t
        scores = {}
        for spec in specs:
            valid = acceptance["tasks"][spec.task_id]
            scores[spec.number] = {
                "own": valid["oracle"]["rouge_l"],
                "base": valid["base"]["rouge_l"],
                "n": min(cfg.eval_examples, len(splits[spec.number]["valid"])),
            }

        tasks = [
            {
                "task_id": spec.task_id,
                "name": spec.name,
                "family": spec.family.name,
                "variant": spec.variant.slug,
                "definition": spec.variant.definition,
                "answer_slot": spec.variant.answer,
                "output_format": spec.variant.formats[0],
                **{f"n_{k}": len(v) for k, v in splits[spec.number].items()},
                "lora_loss": [round(x, 4) for x in lora_losses[spec.number]],
                "rouge_l": scores[spec.number],
                "valid": acceptance["tasks"][spec.task_id],
                "lora_init_seed": init_seeds[spec.number],
                "shared_init": spec.number in sharing,
                "train_seconds": round(train_seconds[spec.number], 2),
            }
            for spec in specs
        ]
        per_family = {f.name: _mean_scores([x["rouge_l"] for x in tasks if x["family"] == f.name]) for f in families}
        timings["total"] = time.perf_counter() - started
        info = {
            "builder_version": BUILDER_VERSION,
            "complete": True,
            "recipe": built_recipe,
            "recipe_sha256": recipe_sha256(built_recipe),
            "size": size,
            "seed": seed,
            "base": base,
            "family_set": [f.name for f in all_families],
            "lora_init": lora_init,
            "shared_fraction": shared_fraction,
            "shared_init_tasks": [f"task{n}" for n in sharing],
            "shared_init_seed": shared_init_seed(seed) if sharing else None,
            "base_model": BASE_REPO,
            "adapter_repo": ADAPTER_REPO.replace("-r8-", f"-r{cfg.train.lora_rank}-"),
            "dataset_repo": DATASET_REPO,
            "families": [{"name": f.name, "tasks": [s.task_id for s in specs if s.family is f]} for f in families],
            "tasks": tasks,
            "model": {
                "architecture": "MistralForCausalLM",
                "vocab_size": model_vocab(base_dir),
                "n_params": n_params,
                **cfg.dims.as_dict(),
            },
            "tokenizer": {"kind": "word-level", "words": len(tokenizer), "bos_added": True},
            "training": {
                **cfg.train.as_dict(),
                "pretrain_sentences": cfg.pretrain_sentences,
                "examples_per_task": cfg.examples_per_task,
                "pretrain_loss": [round(pre_losses[0], 4), round(_tail(pre_losses), 4)],
                "instruct_rows": len(instruction),
                "instruct_terse_share": cfg.instruct_terse_share if instruction else None,
                "instruct_loss": (
                    [round(instruct_losses[0], 4), round(_tail(instruct_losses), 4)] if instruct_losses else None
                ),
            },
            "evaluation": {
                "metric": "rougeL F-measure, stemmed, against output[0]; exact match; content",
                "split": "valid",
                "decoding": "greedy",
                "prompt": "raw input",
                "max_new_tokens": cfg.max_new_tokens,
                "examples_per_task": cfg.eval_examples,
            },
            "acceptance": {k: v for k, v in acceptance.items() if k != "tasks"},
            "rouge_l": {"per_family": per_family, "mean": _mean_scores([x["rouge_l"] for x in tasks])},
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "threads": torch.get_num_threads(),
            "parallel": parallel,
            "versions": _versions(),
        }
        write_json(tmp / MANIFEST, info)
        _readable(tmp)
    log.info("demo bank ready in %.0f s: %s", time.perf_counter() - started, out)
    for name, s in per_family.items():
        log.info("  %-18s own adapter Rouge-L %.3f   base %.3f (valid)", name, s["own"], s["base"])
    for name, c in acceptance["criteria"].items():
        log.info(
            "  acceptance %-20s %.3f  %s %s",
            name,
            acceptance["figures"][name],
            c["bounds"],
            "met" if c["met"] else "NOT met",
        )
    return out


@dataclass
class _Trained:
    losses: list[float]
    train_seconds: float


def _train_loras_in_process(
    org: Path, base_dir: Path, specs: list[TaskSpec], splits: dict, cfg: DemoSize, seed: int, init_seeds: dict[int, int]
) -> dict:
    """Every task's LoRA one after another in this process, written into the bank; the results.

    The path for one task at a time: the recipe is the Ray Train worker's with one worker
    (`demo.train.train_lora`, bit-identical adapters), without the ~25 s each Ray Train run spends
    starting a worker process and its process group.
    """
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = lora_model(AutoModelForCausalLM.from_pretrained(base_dir), cfg.train, BASE_REPO)
    log.info("training %d task LoRAs in this process, one at a time", len(specs))
    by_number = {}
    for spec in specs:
        started = time.perf_counter()
        rows = splits[spec.number]["train"]
        losses = train_lora(
            model, tokenizer, rows, cfg.train, init_seeds[spec.number], task_seed(seed, spec.number), spec.name, False
        )
        seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory(dir=org.parent) as saved:  # PEFT also writes a model card
            model.save_pretrained(saved, save_embedding_layers=False)
            _copy_adapter(Path(saved), _adapter_dir(org, cfg, spec))
        by_number[spec.number] = _Trained(losses, seconds)
        log.info("%s LoRA: loss %.2f -> %.3f in %.1f s", spec.name, losses[0], _tail(losses), seconds)
    return by_number


def _train_loras(
    org: Path,
    base_dir: Path,
    specs: list[TaskSpec],
    splits: dict,
    cfg: DemoSize,
    seed: int,
    init_seeds: dict[int, int],
    threads: int,
    parallel: int,
) -> dict:
    """Every task's LoRA on Ray Train, `parallel` at a time, written into the bank; the results.

    Ray is started here (and stopped afterwards) unless it already runs; the checkpoints live in
    a temporary directory beside the bank: a build is not resumed, it is done again.
    """
    import shutil
    import tempfile

    import ray

    training = cfg.train.training_config(threads, parallel)
    jobs = [
        TrainJob(
            spec.task_id,
            base_dir,
            splits[spec.number]["train"],
            cfg.train.lora_spec(BASE_REPO, init_seeds[spec.number]),
            data_seed=task_seed(seed, spec.number),
        )
        for spec in specs
    ]
    log.info("training %d task LoRAs on Ray Train, %d at a time (%d threads each)", len(jobs), parallel, threads)
    started_ray = not ray.is_initialized()
    storage = Path(tempfile.mkdtemp(prefix=".demo-training-", dir=org.parent.parent))
    try:
        ensure_training_ray(training, parallel=parallel)
        results = fit_many(jobs, training, storage, parallel)
        by_number = {}
        for spec in specs:
            result = results[spec.task_id]
            _copy_adapter(result.checkpoint_dir, _adapter_dir(org, cfg, spec))
            by_number[spec.number] = result
            log.info(
                "%s LoRA: loss %.2f -> %.3f in %.1f s",
                spec.name,
                result.losses[0],
                _tail(result.losses),
                result.train_seconds,
            )
        return by_number
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started_ray:
            ray.shutdown()


def _adapter_dir(org: Path, cfg: DemoSize, spec: TaskSpec) -> Path:
    """Where a task's adapter lives in the bank (ADAPTER_REPO's name at the size's rank)."""
    return org / f"tiny-mistral-r{cfg.train.lora_rank}-{spec.task_id}"


def _copy_adapter(checkpoint_dir: Path, target: Path) -> None:
    """The PEFT files of a final checkpoint as a bank adapter directory (its config's
    `target_modules` sorted)."""
    import shutil

    target.mkdir(parents=True)
    shutil.copyfile(checkpoint_dir / ADAPTER_WEIGHTS, target / ADAPTER_WEIGHTS)
    # PEFT writes target_modules from a set, in an order that follows the process's string hash
    # seed: sorted, the same build gives the same bytes.
    config = json.loads((checkpoint_dir / ADAPTER_CONFIG).read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    (target / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _readable(root: Path) -> None:
    """Give the bank the permissions of ordinary new files: the temporary directory is 0700 and
    some writers use private temporary files, but every node of a cluster must read the bank."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _mean_scores(results: list[dict]) -> dict:
    return {
        "own": round(sum(r["own"] for r in results) / len(results), 4),
        "base": round(sum(r["base"] for r in results) / len(results), 4),
        "tasks": len(results),
    }


def _tail(losses: list[float], n: int = 10) -> float:
    """Mean of the last `n` step losses (one step's loss is noisy)."""
    tail = losses[-n:]
    return sum(tail) / len(tail)


def model_vocab(base_dir: Path) -> int:
    return json.loads((base_dir / "config.json").read_text())["vocab_size"]


def _versions() -> dict:
    import peft
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
    }


@contextlib.contextmanager
def _torch_threads(threads: int | None = None):
    """Set `threads` (default `DEFAULT_THREADS`) torch threads for the build, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def log_to_stderr(enabled: bool, logger: logging.Logger = log):
    """Show `logger`'s INFO messages when nothing else configured logging (the CLI case)."""
    if not enabled or logging.getLogger().hasHandlers():
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s demo-bank: %(message)s", "%H:%M:%S"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # A library imported during the build (Ray, say) may configure the root logger; without this
    # every message would then print twice.
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
