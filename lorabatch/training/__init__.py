"""LoRA training on Ray Train: the gradient-trained counterpart of a synthesized adapter.

config.py      TrainingConfig: hyper-parameters, and how a run executes (workers, checkpoints)
batches.py     examples → padded batches, the seeded batch order, the learning-rate schedule
lora.py        the LoRA's shape (from the bank), initialisation and parameter groups
checkpoint.py  checkpoints as PEFT safetensors + optimizer safetensors + JSON (never pickle)
worker.py      the loop each Ray Train worker runs (DDP when there are several)
trainer.py     the driver: TorchTrainer per adapter, several adapters at once

`lorabatch train` (one dataset → a PEFT adapter dir + provenance.json) is `lorabatch.workflows.train`.
"""

from lorabatch.training.config import TrainingConfig

__all__ = ["TrainingConfig"]
