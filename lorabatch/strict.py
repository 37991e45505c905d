"""Base class of every config model, and the split of a config into results and runtime.

A config field is either part of what a run *computes* (its results: metrics, coefficient models,
decoding, ...) or part of how it *executes* (executor, Ray address, workers, just-in-time waves,
concurrency). The latter are declared with `RuntimeField`; `results()` is the config without
them, and every cache key is built from `results()`, so changing how a run executes never
invalidates what it already computed (PEFT keeps `LoraRuntimeConfig` apart from `LoraConfig` the
same way).
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_RUNTIME = {"runtime": True}


def RuntimeField(*args, **kwargs) -> Any:  # named like the pydantic.Field it wraps
    """A `pydantic.Field` declaring how a run executes: never part of a cache key."""
    return Field(*args, json_schema_extra=_RUNTIME, **kwargs)


class StrictModel(BaseModel):
    """Unknown fields are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def runtime_fields(cls) -> tuple[str, ...]:
        return tuple(name for name, f in cls.model_fields.items() if f.json_schema_extra == _RUNTIME)

    def results(self) -> dict:
        """The config as JSON-ready data without its runtime fields (at every depth): what the
        results depend on, and so what cache keys are built from."""
        out = {}
        runtime = self.runtime_fields()
        for name in type(self).model_fields:
            if name in runtime:
                continue
            value = getattr(self, name)
            out[name] = value.results() if isinstance(value, StrictModel) else self._json(name)
        return out

    def runtime(self) -> dict:
        """The runtime fields only (at every depth), as JSON-ready data."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in self.runtime_fields():
                out[name] = self._json(name)
            elif isinstance(value, StrictModel) and (inner := value.runtime()):
                out[name] = inner
        return out

    def _json(self, name: str):
        return self.model_dump(mode="json", include={name})[name]


def torch_device(value: str, auto: bool) -> str:
    """`value` unchanged if it names a torch device ('cpu', 'cuda[:i]', 'mps'; 'auto' too when
    `auto`), else `ValueError` quoting it."""
    if (auto and value == "auto") or value.split(":")[0] in ("cpu", "cuda", "mps"):
        return value
    kinds = "'auto', 'cpu', 'cuda[:i]' or 'mps'" if auto else "'cpu', 'cuda[:i]' or 'mps'"
    raise ValueError(f"device must be {kinds}, got {value!r}")


def no_duplicates(values: list, what: str) -> list:
    """`values` unchanged, or `ValueError` naming the entries `what` lists more than once."""
    dupes = sorted({v for v in values if values.count(v) > 1}, key=str)
    if dupes:
        raise ValueError(f"{what} listed more than once: {dupes}")
    return values
