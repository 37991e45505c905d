"""`lorabatch predict | train`: an adapter for a user's dataset from a prepared bank — mixed from
the bank's adapters without training, or trained with gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lorabatch.cli.common import FLAGS, AddressOption, run_config, validated_section
from lorabatch.errors import ConfigError

commands = typer.Typer()


@commands.command("predict")
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
    from lorabatch.fewshot.config import FewShotConfig
    from lorabatch.synthesis.config import SynthesisConfig
    from lorabatch.workflows.fewshot_predict import fewshot_predict
    from lorabatch.workflows.predict import predict_adapter

    syn = validated_section(
        SynthesisConfig, None, {"mixing": mixing, "temperature": temperature, "top_k": top_k, "exact_rank": exact_rank}
    )
    if refine_from not in ("select", "setting"):
        raise ConfigError([f"--refine-from: must be 'select' or 'setting' (got {refine_from!r})"], FLAGS)
    start = "select" if refine_from == "select" else f"{metric}-{model}"
    few = validated_section(
        FewShotConfig,
        None,
        {"examples": fewshot_examples, "refine": {"budget": refine_budget, "top_k": refine_top_k, "start": start}},
    )
    if fewshot is not None and fewshot not in ("select", "refine"):
        raise ConfigError([f"--fewshot: must be 'select' or 'refine' (got {fewshot!r})"], FLAGS)
    if fewshot is None:
        result = predict_adapter(bank, data, out, metric=metric, model=model, config=syn, seed=seed, top=top)
        what = f"{metric}-{model}"
    else:
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


@commands.command("train")
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
    from lorabatch.training.config import TrainingConfig
    from lorabatch.workflows.train import train_adapter

    recorded = run_config(bank)  # the bank run's own training section, then the flags
    flags = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "checkpoint_every": checkpoint_every,
        "max_failures": max_failures,
    }
    cfg = validated_section(TrainingConfig, recorded.training if recorded else None, flags)
    result = train_adapter(bank, data, out, config=cfg, seed=seed, address=address)
    if result.ignored_columns:
        typer.echo(f"ignored column(s) of {data}: {result.ignored_columns}")
    r = result.result
    resumed = f", resumed at step {r.starts[-1]}" if r.starts[-1] else ""
    typer.echo(
        f"trained {len(r.losses)} steps: loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}, {r.train_seconds:.1f} s of steps{resumed}"
    )
    typer.echo(f"adapter written to {result.adapter_dir}")
