"""The `lorabatch` command. Thin: parse, validate the config, call a stage. Heavy imports are lazy
(inside the command bodies) so that `lorabatch --help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from lorabatch.errors import LorabatchError

app = typer.Typer(
    name="lorabatch",
    help="LoRA adapters for new datasets without gradient training, evaluated at scale on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bank_app = typer.Typer(help="Build, inspect and validate adapter banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")


@bank_app.command("build-demo")
def bank_build_demo(
    out: Path = typer.Argument(..., help="Directory to write the demo bank into (a local 'hub')."),
    size: str = typer.Option("default", help="'small' (tests, < 3 min) or 'default' (< 10 min)."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
    force: bool = typer.Option(False, help="Rebuild even if OUT already holds a demo bank."),
):
    """Build the embedded demo bank: tokenizer, tiny Mistral, task datasets and one LoRA per task."""
    from lorabatch.bank.demo.build import build_demo_bank

    build_demo_bank(out, size=size, seed=seed, force=force)


@bank_app.command("manifest")
def bank_manifest(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    run_dir: Optional[Path] = typer.Option(None, help="Override the config's run_dir."),
):
    """Resolve the bank, validate it, and write RUN/bank/manifest.parquet."""
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.config import load_config

    cfg = load_config(config, _overrides(run_dir=run_dir))
    table = build_manifest(cfg)
    typer.echo(f"{table.num_rows} tasks validated; manifest at {cfg.run_dir / 'bank' / 'manifest.parquet'}")


@app.command("sweep")
def sweep(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/demo.yaml."),
    run_dir: Optional[Path] = typer.Option(None, help="Override the config's run_dir."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: in-process Ray)."),
):
    """The leave-one-out experiment over the whole bank, each stage cached in the run directory."""
    from lorabatch.config import load_config
    from lorabatch.sweep.run import run_sweep

    run_sweep(load_config(config, _overrides(run_dir=run_dir, address=address)))


def _overrides(**flags) -> dict:
    """CLI flags that map onto config fields (flag name -> dotted config path)."""
    paths = {"run_dir": "run_dir", "address": "ray.address"}
    return {paths[k]: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}


def main() -> None:
    try:
        app()
    except LorabatchError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
