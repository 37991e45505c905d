"""The run config: one YAML file, one pydantic model per stage, every error reported at once.

Relative paths in a config are taken relative to the current working directory (like the
commands' own path arguments). `load_config` validates the whole file before any work starts
and raises `ConfigError` listing each invalid field as `path.to.field: problem (got value)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from lorabatch.atomic import write_text
from lorabatch.bank.config import BankConfig
from lorabatch.distances.config import DistancesConfig
from lorabatch.errors import ConfigError
from lorabatch.features.config import FeaturesConfig
from lorabatch.fewshot.config import FewShotConfig
from lorabatch.generation.config import GenerationConfig
from lorabatch.layout import RunLayout
from lorabatch.raysession import FAULT_TOLERANCE, ensure_ray
from lorabatch.scoring.config import ScoringConfig
from lorabatch.strict import RuntimeField, StrictModel
from lorabatch.synthesis.config import SynthesisConfig
from lorabatch.training.config import TrainingConfig


class FaultToleranceConfig(StrictModel):
    """What survives a lost node or process; the reasons for the defaults are in `lorabatch.raysession`."""

    actor_restarts: int = Field(
        FAULT_TOLERANCE["actor_restarts"],
        ge=-1,
        description="Restarts of a stage's actor (generation, few-shot, features workers) whose process or node died; -1: no limit.",
    )
    actor_task_retries: int = Field(
        FAULT_TOLERANCE["actor_task_retries"],
        ge=-1,
        description="Retries of the batches a dead actor held, on its restarted self or another; -1: no limit.",
    )
    task_retries: int = Field(
        FAULT_TOLERANCE["task_retries"],
        ge=-1,
        description="Reruns of a Ray task (distance blocks, synthesis chunks, generation writes) whose process or node died; -1: no limit.",
    )


class RayConfig(StrictModel):
    address: str | None = Field(
        None,
        description="Ray cluster address ('auto', 'ray://host:10001'); None starts Ray in-process "
        "unless RAY_ADDRESS is set.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs for an in-process Ray instance (None: all of this machine's)."
    )
    fault_tolerance: FaultToleranceConfig = Field(
        default_factory=FaultToleranceConfig,
        description="Restarts and retries when a node or a worker process is lost.",
    )

    def connect(self) -> None:
        """Join the cluster at `address` (or RAY_ADDRESS), else start Ray in this process
        (`raysession.ensure_ray`), with this section's fault tolerance."""
        ensure_ray(self.address, self.num_cpus, fault_tolerance=self.fault_tolerance.model_dump())


class LorabatchConfig(StrictModel):
    run_dir: Path = Field(..., description="The run directory: every output of every stage lives here.")
    seed: int = Field(0, description="Seed for every random choice (MMD samples, neural split, ...).")
    bank: BankConfig
    ray: RayConfig = RuntimeField(default_factory=RayConfig, description="Where Ray runs (how the run executes).")
    features: FeaturesConfig = Field(
        default_factory=FeaturesConfig, description="Token histograms, MMD samples and embeddings per dataset."
    )
    distances: DistancesConfig = Field(
        default_factory=DistancesConfig, description="Metrics between the bank's datasets and how to compute them."
    )
    synthesis: SynthesisConfig = Field(
        default_factory=SynthesisConfig, description="Coefficient models, mixing and adapter synthesis."
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Which rows to generate, decoding, and the backend."
    )
    fewshot: FewShotConfig = Field(
        default_factory=FewShotConfig,
        description="`select` and `refine`: settings chosen or optimised on each task's own training examples.",
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Rouge-L scoring and aggregation.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="LoRA training on Ray Train (`lorabatch train`, `lorabatch bank extend`): hyper-parameters and workers.",
    )

    def record(self) -> None:
        """Write the fully resolved config to RUN/config.yaml (what the run was asked to do)."""

        write_text(RunLayout(self.run_dir).config, dump_config(self))

    @field_validator("run_dir")
    @classmethod
    def _run_dir_not_a_file(cls, value: Path):
        if value.exists() and not value.is_dir():
            raise ValueError(f"{str(value)!r} exists and is not a directory")
        for parent in value.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise ValueError(f"{str(value)!r} cannot be created: {str(parent)!r} is not a directory")
                break
        return value

    @model_validator(mode="after")
    def _refine_start_is_a_setting(self):
        if "refine" in self.fewshot.methods and self.fewshot.refine.start != "select":
            start = self.fewshot.refine.start
            metric, _, model = start.rpartition("-")
            if metric not in self.distances.metrics or model not in self.synthesis.models:
                settings = ["select"] + [f"{m}-{k}" for m in self.distances.metrics for k in self.synthesis.models]
                raise ValueError(
                    f"fewshot.refine.start must be 'select' or one of the sweep's paper settings {settings}, got {start!r}"
                )
        return self


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per problem: dotted field path, message and the offending value."""
    problems = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item.get("loc", ())) or "<root>"
        msg = item.get("msg", "invalid")
        if item.get("type") == "extra_forbidden":
            msg = "unknown field"
        value = item.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        # Validators that already name the value in their message need no second copy of it.
        named = item.get("type") == "value_error" and (repr(value) in msg or str(value) in msg)
        problems.append(f"{loc}: {msg}" if named else f"{loc}: {msg} (got {shown})")
    return problems


def parse_config(data: Any, source: str | None = None, overridden: tuple[str, ...] = ()) -> LorabatchConfig:
    """Validate an already-parsed mapping; raise `ConfigError` listing every problem.

    `overridden`: the dotted fields set from the command line; their problems are attributed to
    it, not to `source` (the file)."""
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of fields, got {type(data).__name__}"], source)
    try:
        return LorabatchConfig.model_validate(data)
    except ValidationError as err:
        problems = format_validation_error(err)
        flagged = [_overlaps(item.get("loc", ()), overridden) for item in err.errors()]
        if all(flagged) or (any(flagged) and source is None):
            source = "command-line flags"
        elif any(flagged):
            problems = [f"{p} (from the command line)" if f else p for p, f in zip(problems, flagged)]
            source = f"{source} and command-line flags"
        raise ConfigError(problems, source) from None


def _overlaps(loc: tuple, overridden: tuple[str, ...]) -> bool:
    """True if the field at `loc` is, holds or lies inside a field set on the command line."""
    path = [str(p) for p in loc]
    for dotted in overridden:
        keys = dotted.split(".")
        n = min(len(keys), len(path))
        if n and keys[:n] == path[:n]:
            return True
    return False


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LorabatchConfig:
    """Read a YAML config, apply dotted-key overrides (`{"bank.tasks": [...]}`) and validate it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"], str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from None
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, str(path), overridden=tuple(overrides or ()))


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError([f"{dotted}: {where} is not a section (got {node!r})"], "the overrides")
    node[leaf] = value


def dump_config(config: LorabatchConfig) -> str:
    """The fully resolved config as YAML (what `RUN/config.yaml` holds)."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
