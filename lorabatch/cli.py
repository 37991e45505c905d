"""The `lorabatch` command. Thin: parse, validate the config, call a stage. Heavy imports are lazy
(inside the command bodies) so that `lorabatch --help` stays fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorabatch.errors import LorabatchError
from lorabatch.layout import RunLayout

app = typer.Typer(
    name="lorabatch",
    help="LoRA adapters for new datasets without gradient training, evaluated at scale on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bank_app = typer.Typer(help="Build, inspect and validate adapter banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")

# Options several commands share, defined once.
RunDirOption = Annotated[Optional[Path], typer.Option("--run-dir", help="Override the config's run_dir.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", help="Override a config field, e.g. --set synthesis.top_k=3 (value read as YAML; repeatable)."
    ),
]
AddressOption = Annotated[
    Optional[str], typer.Option("--address", help="Ray cluster address (default: in-process Ray).")
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="If another command is using the run directory, wait for it instead of refusing to start."
    ),
]


@bank_app.command("build-demo")
def bank_build_demo(
    out: Path = typer.Argument(..., help="Directory to write the demo bank into (a local 'hub')."),
    size: str = typer.Option("default", help="'small' (tests, < 3 min) or 'default' (< 10 min)."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
    force: bool = typer.Option(False, help="Rebuild even if OUT already holds a demo bank."),
    threads: Optional[int] = typer.Option(
        None,
        min=1,
        help="torch threads (default: a fixed 2, whatever the load); a bank is reproduced exactly only with its own thread count.",
    ),
    lora_init: str = typer.Option(
        "mixed",
        help="lora_A init: 'shared' (one seed for all tasks), 'independent' (one per task) or 'mixed' (a seeded SHARED_FRACTION of tasks share one).",
    ),
    shared_fraction: float = typer.Option(
        0.38,
        help="Under --lora-init mixed: fraction of tasks sharing one lora_A init (0.38 in the real Lots-of-LoRAs bank).",
    ),
    parallel: Optional[int] = typer.Option(
        None,
        min=1,
        help="Task LoRAs trained at once (default: the cores over --threads). Above 1 they train on Ray Train; "
        "1 trains them in this process, one after another. The bank is the same whatever this is.",
    ),
    base: str = typer.Option(
        "instruct",
        help="'instruct': the base model goes through an instruction phase and answers the tasks' content in "
        "its own words, as Mistral-7B-Instruct does (builder 5); 'plain': no instruction phase.",
    ),
    families: Optional[str] = typer.Option(
        None,
        help="Task families as 'module:attribute' (a tuple of lorabatch.demo.families.Family); default: the demo's.",
    ),
    compare_shipped: bool = typer.Option(
        False,
        "--compare-shipped",
        help="After building, compare OUT with the shipped default bank file by file and say where they differ "
        "(exit 1 if they do). Build the default recipe (the defaults of every option) into a new OUT to check "
        "that this machine reproduces the shipped bank bit for bit.",
    ),
):
    """Build the embedded demo bank: tokenizer, tiny Mistral, task datasets and one LoRA per task.

    The default bank also ships with lorabatch (lorabatch/demo/shipped/): a run config's `bank.demo`
    section uses it as it is; this command builds one on this machine."""
    from lorabatch.demo.build import build_demo_bank
    from lorabatch.demo.families import load_families
    from lorabatch.demo.shipped import compare_with_shipped

    build_demo_bank(
        out,
        size=size,
        seed=seed,
        force=force,
        threads=threads,
        lora_init=lora_init,
        shared_fraction=shared_fraction,
        parallel=parallel,
        base=base,
        families=load_families(families),
    )
    if compare_shipped:
        differences = compare_with_shipped(out)
        for line in differences:
            typer.echo(f"differs: {line}")
        typer.echo(
            f"{out} {'differs from' if differences else 'matches'} the shipped demo bank"
            + (f" ({len(differences)} differences)" if differences else " bit for bit")
        )
        raise typer.Exit(1 if differences else 0)


@bank_app.command("manifest")
def bank_manifest(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    wait: WaitOption = False,
):
    """Resolve the bank, validate it, and write RUN/bank/manifest.parquet."""
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import load_config

    cfg = load_config(config, _overrides(sets, run_dir=run_dir))
    with _run_lock(cfg.run_dir, wait, "bank manifest", config):
        table = build_manifest(cfg)
    typer.echo(f"{table.num_rows} tasks validated; manifest at {RunLayout(cfg.run_dir).manifest}")


@bank_app.command("extend")
def bank_extend(
    config: Path = typer.Argument(..., help="Run config (YAML) of a local bank; its `training` section applies."),
    run_dir: Optional[Path] = typer.Option(None, help="Override the config's run_dir."),
    sets: Optional[list[str]] = typer.Option(
        None,
        "--set",
        help="Override a config field, e.g. --set training.parallel_tasks=4 (value read as YAML; repeatable).",
    ),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: in-process Ray)."),
    wait: bool = typer.Option(
        False, "--wait", help="If another command is using the run directory, wait for it instead of refusing to start."
    ),
):
    """Train adapters (Ray Train) for the bank's tasks that have a dataset but no adapter; then the
    manifest, and when the run has them, features and distances (only pairs with a new task)."""
    from lorabatch.bank.extend import extend_bank
    from lorabatch.config import load_config

    cfg = load_config(config, _overrides(sets, run_dir=run_dir, address=address))
    with _run_lock(cfg.run_dir, wait, "bank extend", config):
        cfg.record()
        result = extend_bank(cfg)
    for task, path in zip(result.trained, result.adapter_dirs):
        typer.echo(f"trained {task}: {path}")
    typer.echo(
        f"{len(result.trained)} adapter(s) trained; the bank has {result.manifest_tasks} tasks"
        + (f"; distances {', '.join(result.distance_metrics)} updated" if result.distance_metrics else "")
    )


@app.command("sweep")
def sweep(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/demo.yaml."),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    wait: WaitOption = False,
):
    """The leave-one-out experiment over the whole bank, each stage cached in the run directory."""
    from lorabatch.config import load_config
    from lorabatch.generation.backends import require_backend
    from lorabatch.sweep.run import run_sweep

    cfg = load_config(config, _overrides(sets, run_dir=run_dir, address=address))
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # set by the Ray job server
        _check_job(cfg)
    require_backend(cfg.generation.backend, local=not (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    with _run_lock(cfg.run_dir, wait, "sweep", config):
        summary = run_sweep(cfg)
    from lorabatch.fewshot.stage import format_costs
    from lorabatch.scoring.aggregate import format_summary

    typer.echo(format_summary(summary))
    costs = format_costs(cfg.run_dir)
    if costs:
        typer.echo(costs)


def _check_job(cfg) -> None:
    """Inside a Ray job: say which Python and which copy of lorabatch run (the first thing to know
    when a cluster job misbehaves), and refuse a relative run directory."""
    import logging

    import lorabatch

    logging.getLogger("lorabatch.cli").info(  # not __name__: `python -m lorabatch.cli` runs as __main__
        f"job: python {sys.executable}, lorabatch from {Path(lorabatch.__file__).parent}, "
        f"Ray at {cfg.ray.address or os.environ.get('RAY_ADDRESS') or 'a new local instance'}"
    )
    if not cfg.run_dir.is_absolute():
        # The job's working directory is Ray's temporary copy of --working-dir: a relative run
        # directory would be written there and vanish with it.
        raise LorabatchError(
            f"run_dir {str(cfg.run_dir)!r} is relative; inside a Ray job the working directory is a "
            "temporary copy, so pass an absolute --run-dir on storage every node sees"
        )


@app.command("synthesize")
def synthesize(
    config: Path = typer.Argument(..., help="Run config (YAML); its `synthesis` section applies."),
    metric: Optional[list[str]] = typer.Option(
        None, help="Metric(s) to use (default: every RUN/distances/<metric>.parquet)."
    ),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    coefficients_only: bool = typer.Option(False, help="Write the coefficients (and neural model), no adapters."),
    wait: WaitOption = False,
):
    """Coefficients for every (metric, model), then all leave-one-out adapters (unless synthesis.jit):
    the sweep's coefficients and synthesis stages, on the metrics given."""
    from lorabatch.config import load_config
    from lorabatch.raysession import ensure_ray
    from lorabatch.sweep.run import stage_coefficients, stage_synthesis
    from lorabatch.synthesis.stage import SynthesisError

    cfg = load_config(config, _overrides(sets, run_dir=run_dir, address=address))
    layout = RunLayout(cfg.run_dir)
    metrics = metric or layout.distance_metrics()
    if not metrics:
        raise SynthesisError(f"no distances in {layout.distances_dir}: compute them first")
    cfg = cfg.model_copy(update={"distances": cfg.distances.model_copy(update={"metrics": list(metrics)})})
    syn = cfg.synthesis
    with _run_lock(cfg.run_dir, wait, "synthesize", config):
        if syn.executor == "ray" and not (syn.jit or coefficients_only):
            ensure_ray(cfg.ray.address, cfg.ray.num_cpus, fault_tolerance=cfg.ray.fault_tolerance.model_dump())
        stage_coefficients(cfg, progress=True)
        if not (syn.jit or coefficients_only):
            for setting, paths in stage_synthesis(cfg, progress=True).items():
                typer.echo(f"{setting}: {len(paths)} adapters in {paths[0].parent}")
    typer.echo(f"coefficients in {layout.coefficients_dir}")


@app.command("distances")
def distances(
    config: Path = typer.Argument(..., help="Run config (YAML); its `features` and `distances` sections apply."),
    metrics: Optional[list[str]] = typer.Option(
        None, "--metrics", help="Metric(s) to compute (default: distances.metrics)."
    ),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    local: bool = typer.Option(False, help="Compute features and blocks in this process, without Ray."),
    wait: WaitOption = False,
):
    """Features of every bank dataset (cached), then the bank's distance matrices (incremental)."""
    from pydantic import ValidationError

    from lorabatch.bank.manifest import load_manifest
    from lorabatch.config import format_validation_error, load_config
    from lorabatch.distances import DistancesConfig
    from lorabatch.distances.matrix import compute_distances
    from lorabatch.distances.registry import features_config_for
    from lorabatch.errors import ConfigError
    from lorabatch.features import compute_bank_features

    cfg = load_config(config, _overrides(sets, run_dir=run_dir, address=address))
    try:
        dist = DistancesConfig(**{**cfg.distances.model_dump(), **({"metrics": metrics} if metrics else {})})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), "--metrics") from None
    feats = cfg.features
    if local:
        dist, feats = dist.model_copy(update={"executor": "local"}), feats.model_copy(update={"executor": "local"})
    feats = features_config_for(dist.metrics, feats)
    with _run_lock(cfg.run_dir, wait, "distances", config):
        manifest = load_manifest(cfg.run_dir)
        if feats.executor == "ray" or dist.executor != "local":
            from lorabatch.raysession import ensure_ray

            ensure_ray(cfg.ray.address, cfg.ray.num_cpus, fault_tolerance=cfg.ray.fault_tolerance.model_dump())
        features = compute_bank_features(manifest, cfg.run_dir, feats)
        typer.echo(f"features of {len(features)} datasets in {RunLayout(cfg.run_dir).features}")
        compute_distances(cfg.run_dir, dist)
    typer.echo(f"distances {', '.join(dist.metrics)} in {RunLayout(cfg.run_dir).distances_dir}")


@app.command("predict")
def predict(
    bank: Path = typer.Option(..., help="A prepared bank: run directory with manifest, features (and distances)."),
    data: Path = typer.Option(
        ..., help="Your dataset: .jsonl, .csv, .parquet or a dataset directory (columns input, output)."
    ),
    out: Path = typer.Option(..., help="Directory to write the adapter into (PEFT format)."),
    metric: str = typer.Option("JS", help="Distance: KL, JS, WD or MMD (or any metric the bank has)."),
    model: str = typer.Option("normalized", help="Coefficient model: attentional, normalized or neural."),
    mixing: str = typer.Option(
        "paper",
        help="'linear' (alias 'paper': A and B averaged separately), 'svd' (Σ c·B·A "
        "re-factored by SVD), 'cat' (Σ c·B·A exactly, concatenated factors) or 'exact' (cat when small, else svd).",
    ),
    temperature: float = typer.Option(1.0, help="Softmin temperature."),
    top_k: Optional[int] = typer.Option(None, help="Keep only the k largest coefficients."),
    exact_rank: Optional[int] = typer.Option(None, help="Rank of an svd / exact mixing adapter (default: the bank's)."),
    seed: int = typer.Option(0, help="Seed of random choices in the features (MMD samples)."),
    top: int = typer.Option(10, help="How many top contributing bank tasks to print."),
    fewshot: Optional[str] = typer.Option(
        None,
        help="'select' (the candidate whose greedy answers to your examples score best) or 'refine' "
        "(CMA-ES on K bank tasks' weights from select's choice, exact mixing). Forward passes of the base model, "
        "no gradients.",
    ),
    refine_from: str = typer.Option(
        "select", help="With --fewshot refine: start from 'select' or from the 'setting' --metric/--model."
    ),
    fewshot_examples: int = typer.Option(
        16, min=1, help="With --fewshot: examples of your dataset the loss is computed on."
    ),
    refine_budget: int = typer.Option(40, min=2, help="With --fewshot refine: evaluations at most."),
    refine_top_k: int = typer.Option(5, min=1, help="With --fewshot refine: bank tasks whose weights are optimised."),
):
    """Build an adapter for a new dataset from a bank, without training; prints the top contributors."""
    from pydantic import ValidationError

    from lorabatch.config import format_validation_error
    from lorabatch.errors import ConfigError
    from lorabatch.fewshot.config import FewShotConfig
    from lorabatch.synthesis.config import SynthesisConfig
    from lorabatch.synthesis.predict import predict_adapter

    try:
        syn = SynthesisConfig(mixing=mixing, temperature=temperature, top_k=top_k, exact_rank=exact_rank)
        if refine_from not in ("select", "setting"):
            raise ConfigError(
                [f"--refine-from: must be 'select' or 'setting' (got {refine_from!r})"], "command-line flags"
            )
        start = "select" if refine_from == "select" else f"{metric}-{model}"
        few = FewShotConfig(
            examples=fewshot_examples, refine={"budget": refine_budget, "top_k": refine_top_k, "start": start}
        )
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), "command-line flags") from None
    if fewshot is not None and fewshot not in ("select", "refine"):
        raise ConfigError([f"--fewshot: must be 'select' or 'refine' (got {fewshot!r})"], "command-line flags")
    if fewshot is None:
        result = predict_adapter(bank, data, out, metric=metric, model=model, config=syn, seed=seed, top=top)
        what = f"{metric}-{model}"
    else:
        from lorabatch.fewshot.query import fewshot_predict

        result, chosen = fewshot_predict(
            bank, data, out, method=fewshot, metric=metric, model=model, config=syn, fewshot=few, seed=seed, top=top
        )
        what = f"{fewshot}: {chosen.choice}" if fewshot == "select" else f"refine from {chosen.choice}"
        typer.echo(
            f"few-shot loss {chosen.loss:.4f} (start {chosen.start_loss:.4f}) after {chosen.evaluations} "
            f"adapters, {chosen.forward_passes} forward passes, {chosen.seconds:.1f} s"
        )
    if result.ignored_columns:
        typer.echo(f"ignored column(s) of {data}: {result.ignored_columns}")
    typer.echo(f"top contributing bank tasks ({what}):")
    for task, weight in result.top:
        typer.echo(f"  {task:<40} {weight:.4f}")
    typer.echo(f"adapter written to {result.adapter_dir}")


@app.command("train")
def train(
    bank: Path = typer.Option(
        ..., help="A prepared bank: run directory with its manifest (the base model and LoRA shape come from it)."
    ),
    data: Path = typer.Option(
        ..., help="Your dataset: .jsonl, .csv, .parquet or a dataset directory (columns input, output)."
    ),
    out: Path = typer.Option(..., help="Directory to write the adapter into (PEFT format + provenance.json)."),
    steps: Optional[int] = typer.Option(
        None, help="Optimizer steps (default: the bank run's training.steps, else 200)."
    ),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size over all workers (training.batch_size)."),
    lr: Optional[float] = typer.Option(
        None, help="Peak learning rate of lora_B; lora_A gets lr x training.lora_a_lr_factor."
    ),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (DDP) for this adapter (training.workers)."),
    threads_per_worker: Optional[int] = typer.Option(
        None, help="torch threads and Ray CPUs per worker (training.threads_per_worker)."
    ),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (training.checkpoint_every)."),
    max_failures: Optional[int] = typer.Option(
        None, help="Worker failures to recover from (training.max_failures; -1: no limit)."
    ),
    seed: int = typer.Option(
        0, help="Seed of the LoRA initialisation and of the example order (unless training.seed is set)."
    ),
    address: AddressOption = None,
):
    """Train an adapter for your dataset with gradients (Ray Train): the counterpart of `predict`.
    Running the same command again after an interruption resumes from the last checkpoint."""
    from pydantic import ValidationError

    from lorabatch.config import format_validation_error
    from lorabatch.errors import ConfigError
    from lorabatch.training.adapter import train_adapter
    from lorabatch.training.config import TrainingConfig

    base = {}
    if RunLayout(bank).config.is_file():  # the bank run's own training section, then the flags
        from lorabatch.config import load_config

        base = load_config(RunLayout(bank).config).training.model_dump()
    flags = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "checkpoint_every": checkpoint_every,
        "max_failures": max_failures,
    }
    try:
        cfg = TrainingConfig(**{**base, **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), "command-line flags") from None
    result = train_adapter(bank, data, out, config=cfg, seed=seed, address=address)
    if result.ignored_columns:
        typer.echo(f"ignored column(s) of {data}: {result.ignored_columns}")
    r = result.result
    resumed = f", resumed at step {r.starts[-1]}" if r.starts[-1] else ""
    typer.echo(
        f"trained {len(r.losses)} steps: loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}, {r.train_seconds:.1f} s of steps{resumed}"
    )
    typer.echo(f"adapter written to {result.adapter_dir}")


@app.command("generate")
def generate(
    config: Path = typer.Argument(..., help="Run config (YAML); its `generation` section applies."),
    run_dir: RunDirOption = None,
    sets: SetOption = None,
    address: AddressOption = None,
    backend: Optional[str] = typer.Option(None, help="'auto', 'vllm' or 'hf' (overrides generation.backend)."),
    examples_per_task: Optional[int] = typer.Option(
        None, help="First k test examples per task (overrides the config)."
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, help="Generated tokens per example at most (overrides the config)."
    ),
    wait: WaitOption = False,
):
    """Generate every (task, setting, example) row not yet in RUN/generations/ (base, oracle, synthesized)."""
    from lorabatch.config import load_config
    from lorabatch.generation.backends import require_backend
    from lorabatch.generation.stage import run_generation
    from lorabatch.raysession import ensure_ray

    overrides = _overrides(sets, run_dir=run_dir, address=address)
    flags = {
        "generation.backend": backend,
        "generation.examples_per_task": examples_per_task,
        "generation.max_new_tokens": max_new_tokens,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(config, overrides)
    require_backend(cfg.generation.backend, local=not (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    with _run_lock(cfg.run_dir, wait, "generate", config):
        ensure_ray(cfg.ray.address, cfg.ray.num_cpus, fault_tolerance=cfg.ray.fault_tolerance.model_dump())
        result = run_generation(cfg.run_dir, cfg.generation, seed=cfg.seed)
    typer.echo(result.describe())
    typer.echo(f"generations in {RunLayout(cfg.run_dir).generations}")


@app.command("score")
def score(
    run: Path = typer.Argument(..., help="A run directory with RUN/generations/."),
    reference: Optional[str] = typer.Option(None, help="'first' (output[0], the paper's) or 'max' over references."),
    local: bool = typer.Option(False, help="Score in this process instead of with Ray Data."),
    wait: WaitOption = False,
):
    """Rouge-L and exact match per example, task and setting; prints the results table."""
    from pydantic import ValidationError

    from lorabatch.config import format_validation_error
    from lorabatch.errors import ConfigError
    from lorabatch.scoring.aggregate import format_summary
    from lorabatch.scoring.config import ScoringConfig
    from lorabatch.scoring.stage import run_scoring

    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory")
    base = {}
    if RunLayout(run).config.is_file():  # the run's own scoring section, then the flags
        from lorabatch.config import load_config

        base = load_config(RunLayout(run).config).scoring.model_dump()
    fields = {"reference": reference, "executor": "local" if local else None}
    try:
        cfg = ScoringConfig(**{**base, **{k: v for k, v in fields.items() if v is not None}})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), "command-line flags") from None
    with _run_lock(run, wait, "score", run):
        if cfg.executor == "ray":
            from lorabatch.raysession import ensure_ray

            ensure_ray()
        summary = run_scoring(run, cfg)
    typer.echo(format_summary(summary))
    typer.echo(f"scores in {RunLayout(run).scores}")


@app.command("status")
def status(run_dir: Path = typer.Argument(..., help="A run directory.")):
    """Per stage and per setting: what is done, pending or failed."""
    from lorabatch.sweep.status import status_lines

    if not run_dir.is_dir():
        raise typer.BadParameter(f"{run_dir} is not a directory")
    typer.echo("\n".join(status_lines(run_dir)))


def _run_lock(run_dir: Path, wait: bool, command: str, target: Path):
    """The run directory's lock (`lorabatch.runlock`), named after the command holding it."""
    from lorabatch.runlock import run_lock

    return run_lock(run_dir, command=f"lorabatch {command} {target}", wait=wait)


def _overrides(sets: Optional[list[str]] = None, **flags) -> dict:
    """Config overrides from the CLI: `--set dotted.path=value` (value read as YAML, so `3`, `true`,
    `[JS, KL]` keep their types) and the flags that map onto config fields."""
    import yaml

    from lorabatch.errors import ConfigError

    out: dict = {}
    problems = []
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected dotted.path=value, e.g. synthesis.top_k=3")
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problems.append(f"--set {item!r}: the value is not valid YAML ({err.__class__.__name__})")
    if problems:
        raise ConfigError(problems, "the command line")
    paths = {"run_dir": "run_dir", "address": "ray.address"}
    out.update({paths[k]: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None})
    return out


def configure_logging(level: int | None = None) -> None:
    """Progress messages of lorabatch's modules (their `logging` loggers) on stderr, at INFO by
    default (LORABATCH_LOG_LEVEL=DEBUG|WARNING|... to change it); results go to stdout."""
    import logging

    logger = logging.getLogger("lorabatch")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[lorabatch] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level or os.environ.get("LORABATCH_LOG_LEVEL", "INFO").upper())


def main() -> None:
    from lorabatch import interrupt

    configure_logging()
    interrupt.install()
    try:
        app()
    except LorabatchError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except SystemExit:
        # typer reports any KeyboardInterrupt as status 130; after SIGTERM the status is 143.
        if interrupt.received() is not None:
            sys.exit(interrupt.received())
        raise


if __name__ == "__main__":
    main()
