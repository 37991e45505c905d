"""What a sweep evaluates: a `Setting` value, parsed once from its name.

    base                  the base model, no adapter
    oracle                the task's own bank adapter
    <metric>-<model>      the paper's settings: coefficients of `model` (attentional, normalized,
                          neural) on the `metric` distances, leave-one-out, mixed
    uniform               control: every other bank task weighted equally (no task information)
    nearest-<metric>      control: the single closest other task by `metric`
    icl                   control: the base model with k of the task's training examples in its
                          prompt (in-context learning, no adapter)
    select                per task, the candidate adapter with the lowest few-shot loss on the
                          task's own training examples (lorabatch.fewshot)
    refine                per task, coefficients of the top-K tasks optimised on that loss by an
                          evolution strategy (lorabatch.fewshot)

Metric names never hold '-' (the registry uses '_'), so a name splits unambiguously.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorabatch.errors import LorabatchError

BASE = "base"
ORACLE = "oracle"
UNIFORM = "uniform"
NEAREST = "nearest"
SELECT = "select"
REFINE = "refine"
ICL = "icl"
COEFFICIENT_MODELS = ("attentional", "normalized", "neural")
CONTROLS = (UNIFORM, NEAREST)
FEWSHOT_METHODS = (SELECT, REFINE)

# kind → where a setting's adapters come from
KINDS = ("base", "oracle", "paper", "uniform", "nearest", "icl", "select", "refine")


class UnknownSettingError(LorabatchError, ValueError):
    """A setting name that is none of the kinds above."""


@dataclass(frozen=True, order=True)
class Setting:
    """One row of the results table. `metric` is set for paper and nearest settings, `model` for paper."""

    kind: str
    metric: str | None = None
    model: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "paper":
            return f"{self.metric}-{self.model}"
        if self.kind == NEAREST:
            return f"{NEAREST}-{self.metric}"
        return self.kind

    def __str__(self) -> str:
        return self.name

    @property
    def has_coefficients(self) -> bool:
        """Its adapters are mixtures of bank adapters by a coefficient file of the run (paper
        settings and controls); base, oracle, select and refine are not."""
        return self.kind in ("paper", UNIFORM, NEAREST)

    @property
    def is_control(self) -> bool:
        return self.kind in CONTROLS or self.kind == ICL

    @classmethod
    def parse(cls, name: str) -> "Setting":
        if name in (BASE, ORACLE, UNIFORM, ICL, SELECT, REFINE):
            return cls(name)
        head, sep, tail = name.partition("-")
        if sep and head == NEAREST and tail:
            return cls(NEAREST, metric=tail)
        metric, sep, model = name.rpartition("-")
        if sep and metric and model in COEFFICIENT_MODELS:
            return cls("paper", metric=metric, model=model)
        raise UnknownSettingError(
            f"unknown setting {name!r}: expected base, oracle, uniform, icl, select, refine, nearest-<metric> "
            f"or <metric>-<model> with model one of {list(COEFFICIENT_MODELS)}"
        )

    @classmethod
    def paper(cls, metric: str, model: str) -> "Setting":
        return cls("paper", metric=metric, model=model)

    @classmethod
    def nearest(cls, metric: str) -> "Setting":
        return cls(NEAREST, metric=metric)


def display_order(name: str) -> tuple:
    """Table order: base, paper settings, controls (uniform, nearest, icl), select, refine, oracle."""
    try:
        kind = Setting.parse(name).kind
    except UnknownSettingError:
        kind = "paper"
    rank = {"base": 0, "paper": 1, UNIFORM: 2, NEAREST: 3, ICL: 4, SELECT: 5, REFINE: 6, "oracle": 7}[kind]
    return (rank, name)
