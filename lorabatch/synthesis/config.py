"""Config of the synthesis stage: coefficient models, mixing, the adapter writer, batch synthesis.

The defaults are paper mode: attentional / normalized / neural coefficients at temperature 1 with
no sparsification, the neural MLP 1→4000→4000→1 trained 40 full-batch epochs with Adam (lr 1e-3) on
a seeded 80 % task split, and `paper` (= `linear`) mixing (every lora_A / lora_B tensor averaged
separately).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lorabatch.adapter_format import VLLM_LORA_RANKS  # every adapter we write has one of them
from lorabatch.settings import COEFFICIENT_MODELS
from lorabatch.strict import RuntimeField, StrictModel, no_duplicates, torch_device


class NeuralConfig(StrictModel):
    """The neural coefficient model: a scalar MLP on row-standardised distances."""

    hidden: int = Field(4000, ge=1, description="Width of both hidden layers (the paper uses 4000).")
    epochs: int = Field(40, ge=1, description="Full-batch Adam epochs (the paper uses 40).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (the paper uses 1e-3).")
    train_fraction: float = Field(
        0.8, gt=0, le=1, description="Fraction of tasks in the seeded training split (the paper uses 0.8)."
    )
    seed: int | None = Field(
        None, description="Seed of the task split and of the MLP initialisation (None: the run's seed)."
    )
    gram: bool = Field(
        True,
        description="Compute the reconstruction loss through G = ΘΘᵀ: ‖(C−I)Θ‖² = tr((C−I)G(C−I)ᵀ), "
        "identical value, per-epoch cost independent of the adapter size. False: the explicit C·Θ.",
    )
    eval_chunk: int = Field(
        0,
        ge=0,
        description="Apply the MLP to this many scalars at a time with activation checkpointing "
        "(bounds memory at the paper's width); 0 applies it to all N² scalars at once.",
    )
    device: str = Field("cpu", description="torch device for training ('cpu', 'cuda').")

    @field_validator("device")
    @classmethod
    def _device_known(cls, value):
        return torch_device(value, auto=False)


class SynthesisConfig(StrictModel):
    models: list[Literal["attentional", "normalized", "neural"]] = Field(
        default_factory=lambda: list(COEFFICIENT_MODELS),
        description="Coefficient models to compute for every metric (settings are <metric>-<model>).",
    )
    controls: list[Literal["uniform", "nearest"]] = Field(
        default_factory=lambda: ["uniform", "nearest"],
        description="Control settings synthesized and evaluated beside the paper's: 'uniform' (every "
        "other task weighted equally) and 'nearest' (nearest-<metric>: the closest other task by each "
        "metric). Mixed like the paper settings.",
    )
    temperature: float = Field(1.0, gt=0, description="Softmin temperature T: c ∝ exp(−s/T). The paper uses 1.")
    top_k: int | None = Field(
        None,
        ge=1,
        description="Keep only the k largest coefficients of each row and renormalise (None: all).",
    )
    mixing: Literal["linear", "paper", "svd", "cat", "exact"] = Field(
        "paper",
        description="'linear' (alias 'paper', the paper's mixing): θ = Σ c_j θ_j over every tensor (A and B "
        "averaged separately). The others mix ΔW = Σ c_j B_j A_j per module: 'svd' re-factors it to rank "
        "`exact_rank` by truncated SVD; 'cat' concatenates the factors (exact, rank K × bank rank); "
        "'exact' concatenates when that rank fits `cat_max_rank`, else uses the SVD.",
    )
    exact_rank: int | None = Field(
        None, description="Rank of svd / exact mixing adapters (None: the bank's rank). One of vLLM's ranks."
    )
    cat_max_rank: int = Field(
        64,
        ge=0,
        description="Exact mixing concatenates the factors (zero error) when (non-zero coefficients × "
        "bank rank), rounded up to a vLLM rank, is at most this; 0 always uses the SVD.",
    )
    output_dtype: Literal["bank", "float32", "bfloat16", "float16"] = Field(
        "bank", description="dtype of the written tensors ('bank': that of the bank's adapters)."
    )
    neural: NeuralConfig = Field(default_factory=NeuralConfig, description="The neural model's training.")
    chunk_size: int = Field(
        1 << 16,
        ge=1024,
        description="Batch synthesis streams the bank in parameter chunks of this many elements; "
        "memory per chunk ≈ 2 × N × chunk_size × 4 bytes.",
    )
    executor: Literal["ray", "local"] = RuntimeField(
        "ray", description="Batch synthesis runs chunks as Ray CPU tasks ('ray') or in this process ('local')."
    )
    jit: bool = RuntimeField(
        False,
        description="Synthesize a (setting, task) adapter only when generation needs it, instead of "
        "all leave-one-out adapters up front.",
    )
    jit_delete: bool = RuntimeField(True, description="With `jit`: delete an adapter once its generations are written.")
    jit_wave: int = RuntimeField(
        512,
        ge=1,
        description="With `jit`: adapters synthesized per wave (settings × tasks) before that wave is "
        "generated; bounds the disk held by synthesized adapters at one wave.",
    )

    @field_validator("models")
    @classmethod
    def _models_unique(cls, models):
        if not models:
            raise ValueError("at least one coefficient model is needed, got []")
        return no_duplicates(models, "models")

    @field_validator("controls")
    @classmethod
    def _controls_unique(cls, controls):
        return no_duplicates(controls, "controls")

    @property
    def mixes_products(self) -> bool:
        """True for the modes that mix ΔW = Σ c_j B_j A_j (svd, cat, exact); False for linear/paper."""
        return self.mixing not in ("linear", "paper")

    @field_validator("exact_rank")
    @classmethod
    def _rank_allowed(cls, value):
        if value is not None and value not in VLLM_LORA_RANKS:
            raise ValueError(f"exact_rank must be one of vLLM's ranks {list(VLLM_LORA_RANKS)}, got {value}")
        return value

    @model_validator(mode="after")
    def _cat_rank_allowed(self):
        if self.cat_max_rank and self.cat_max_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"cat_max_rank must be 0 or one of vLLM's ranks {list(VLLM_LORA_RANKS)}, got {self.cat_max_rank}"
            )
        return self
