"""Config of LoRA training: the hyper-parameters (they decide the adapter) and how it runs on Ray
Train (workers, threads, checkpoints, retries: they do not, up to floating-point rounding).

The defaults are the demo bank's LoRA recipe: AdamW (no weight decay), global batch 32, lr 5e-3
with lora_A at 1/16 of it (LoRA+'s ratio), linear warm-up over 10 % of the steps then cosine decay
to 10 % of the peak, gradients clipped to norm 1, loss on the answer tokens of `input` → `output[0]`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from lorabatch.strict import RuntimeField, StrictModel


class TrainingConfig(StrictModel):
    steps: int = Field(200, ge=1, description="Optimizer steps (each over one global batch).")
    batch_size: int = Field(
        32, ge=1, description="Global batch: examples per step over all workers together (each takes its share)."
    )
    lr: float = Field(5e-3, gt=0, description="Peak learning rate of lora_B (and of lora_A before `lora_a_lr_factor`).")
    lora_a_lr_factor: float = Field(
        1 / 16,
        gt=0,
        le=1,
        description="lora_A learns at lr × this (LoRA+'s 1/16: trained A's stay near their initialisation, "
        "as in the real Lots-of-LoRAs bank).",
    )
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="Linear warm-up over max(1, int(steps × this)) steps, then cosine decay."
    )
    min_lr_fraction: float = Field(0.1, ge=0, le=1, description="The cosine decay ends at lr × this.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this (None: no clipping)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int | None = Field(
        None,
        description="Seed of the LoRA initialisation and of the example order (None: the run's seed; "
        "for a bank task, its bank's init policy decides the initialisation).",
    )

    # How it runs: none of these changes the adapter beyond floating-point rounding.
    workers: int = RuntimeField(
        1, ge=1, description="Ray Train workers for one adapter (DDP over gloo on CPU, nccl on GPU)."
    )
    threads_per_worker: int = RuntimeField(
        2,
        ge=1,
        description="torch threads (and Ray CPUs) of each worker; fixed, not taken from the machine, since "
        "rounding differs between thread counts.",
    )
    use_gpu: bool | None = RuntimeField(None, description="One GPU per worker (None: when CUDA is present).")
    parallel_tasks: int = RuntimeField(
        2, ge=1, description="Adapters trained at once when several are asked for (demo bank, `bank extend`)."
    )
    checkpoint_every: int = RuntimeField(
        50, ge=1, description="Steps between checkpoints (PEFT safetensors + optimizer state)."
    )
    report_every: int = RuntimeField(10, ge=1, description="Steps between `ray.train.report` calls (loss, tokens/s).")
    max_failures: int = RuntimeField(
        2, ge=-1, description="Worker failures a run recovers from (from its last checkpoint); -1: no limit."
    )

    @model_validator(mode="after")
    def _batch_covers_workers(self):
        if self.batch_size < self.workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least workers ({self.workers}): each worker needs examples"
            )
        return self

    def hyperparameters(self) -> dict:
        """The fields that decide the adapter besides the seed (what keys and provenance hold)."""
        return {k: v for k, v in self.results().items() if k != "seed"}

    def warmup_steps(self) -> int:
        return max(1, int(self.steps * self.warmup_fraction + 1e-9))  # 0.1 × 60 is 6.000…01, 0.1 × 3 is 0.3000…04
