"""Generation: every (task, setting, example) of a sweep through vLLM multi-LoRA or transformers + PEFT.

    run_generation(run_dir, GenerationConfig(...))   -> RUN/generations/part-*.parquet
    read_generations(run_dir)                         -> one row per (task_id, setting, example_id)

Importing this package imports neither torch, transformers, vllm nor ray.
"""

from lorabatch.generation.backends import backend_names, register_backend, resolve_backend_name
from lorabatch.generation.config import GenerationConfig, HFSettings, VLLMSettings, WorkerResources
from lorabatch.generation.stage import GenerationResult, run_generation
from lorabatch.generation.store import read_generations

__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "HFSettings",
    "VLLMSettings",
    "WorkerResources",
    "backend_names",
    "read_generations",
    "register_backend",
    "resolve_backend_name",
    "run_generation",
]
