"""The LoRA being trained: its shape (from the bank), its initialisation, its parameter groups."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LoraSpec:
    """What the trained adapter looks like: the bank's rank, alpha, targets and base-model name.

    `init_seed` draws PEFT's default initialisation (lora_A Kaiming-uniform, lora_B zero: the
    adapter starts as the identity); tasks sharing it start from one bit-identical lora_A.
    """

    rank: int
    alpha: float
    targets: tuple[str, ...]
    base_model_name: str
    init_seed: int

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def lora_model(model, spec: LoraSpec):
    """Wrap `model` in a PEFT LoRA (no bias, no dropout) whose config names the bank's base model."""
    from peft import LoraConfig, get_peft_model

    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=alpha,
        target_modules=sorted(spec.targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=spec.base_model_name,
    )
    # PEFT records the wrapped model's name_or_path in the adapter config: it must be the bank's name.
    model.name_or_path = spec.base_model_name
    return get_peft_model(model, config)


def reset_lora(peft_model, seed: int) -> None:
    """Fresh LoRA weights with PEFT's default init drawn from `seed` (same seed: same lora_A)."""
    import torch
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.reset_lora_parameters("default", True)


def lora_parameter_groups(peft_model, lr: float, a_factor: float) -> list[dict]:
    """AdamW groups: lora_A at `lr × a_factor`, every other LoRA tensor (lora_B) at `lr`. Each
    group keeps its peak rate in `peak_lr`, which the schedule scales."""
    lora = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad]
    return [
        {"params": [p for n, p in lora if "lora_A" in n], "lr": lr * a_factor, "peak_lr": lr * a_factor},
        {"params": [p for n, p in lora if "lora_A" not in n], "lr": lr, "peak_lr": lr},
    ]
