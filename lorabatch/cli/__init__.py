"""The `lorabatch` command: one module per command group, each command thin (parse, validate the
config, call a workflow or a stage).

    common.py    options several commands share, config overrides, the run lock, flags → config sections
    bank.py      `lorabatch bank build-demo | manifest | extend`
    runs.py      `lorabatch sweep | status`: the whole experiment on a run directory
    stages.py    `lorabatch distances | synthesize | generate | score`: one stage of a run each
    adapters.py  `lorabatch predict | train`: an adapter for a user's dataset
    main.py      the application and `main()`, the console script's entry point

A command imports the config, workflows and stages it calls in its body: importing them all takes
~0.5 s (numpy, pydantic), five times what `lorabatch --help` takes without them (~0.1 s).
"""

from lorabatch.cli.common import config_overrides
from lorabatch.cli.main import app, main

__all__ = ["app", "config_overrides", "main"]
