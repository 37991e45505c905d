"""What several `lorabatch` commands share: options, config overrides from the command line, the
run directory's lock, and config sections built from a run config plus flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorabatch.errors import ConfigError
from lorabatch.layout import RunLayout

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
FLAGS = "command-line flags"


def command_lock(run_dir: Path, wait: bool, command: str, target: Path):
    """The run directory's lock (`lorabatch.runlock`), named after the command holding it."""
    from lorabatch.runlock import run_lock  # ~7 ms (socket, datetime) that `lorabatch --help` does not need

    return run_lock(run_dir, command=f"lorabatch {command} {target}", wait=wait)


def config_overrides(sets: Optional[list[str]] = None, **flags) -> dict:
    """Config overrides from the CLI: `--set dotted.path=value` (value read as YAML, so `3`, `true`,
    `[JS, KL]` keep their types) and the flags that map onto config fields."""
    import yaml  # ~13 ms that `lorabatch --help` does not need

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


def run_config(run_dir: Path):
    """The validated config recorded in a run directory (RUN/config.yaml), or None if it has none."""
    from lorabatch.config import load_config

    path = RunLayout(run_dir).config
    return load_config(path) if path.is_file() else None


def validated_section(model, section=None, flags: dict | None = None, source: str = FLAGS):
    """The config section `model` (a pydantic model class) from `section` (a run config's section,
    or None for the defaults) with the `flags` that were given (not None) on top; `ConfigError`
    naming every invalid field, attributed to `source`."""
    from pydantic import ValidationError

    from lorabatch.config import format_validation_error

    fields = section.model_dump() if section is not None else {}
    fields.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return model(**fields)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), source) from None
