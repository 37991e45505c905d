"""The `lorabatch` application: the command groups put together, and `main()`, the console
script's entry point (errors a user can act on are printed in one line, exit status 2)."""

from __future__ import annotations

import logging
import os
import sys

import typer

from lorabatch import interrupt
from lorabatch.cli import adapters, bank, runs, stages
from lorabatch.errors import LorabatchError

app = typer.Typer(
    name="lorabatch",
    help="LoRA adapters for new datasets without gradient training, evaluated at scale on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bank.commands, name="bank")
app.add_typer(runs.commands)
app.add_typer(stages.commands)
app.add_typer(adapters.commands)


def configure_logging(level: int | None = None) -> None:
    """Progress messages of lorabatch's modules (their `logging` loggers) on stderr, at INFO by
    default (LORABATCH_LOG_LEVEL=DEBUG|WARNING|... to change it); results go to stdout."""
    logger = logging.getLogger("lorabatch")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[lorabatch] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level or os.environ.get("LORABATCH_LOG_LEVEL", "INFO").upper())


def main() -> None:
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
