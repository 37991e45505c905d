"""A training checkpoint: the adapter as PEFT saves it, the optimizer state, and where training
stands — safetensors and JSON only (nothing is unpickled when a run resumes).

    adapter_model.safetensors, adapter_config.json   `PeftModel.save_pretrained` of the adapter
    optimizer.safetensors                            AdamW state: state.<i>.{step,exp_avg,exp_avg_sq}
                                                     (i: the parameter's position in the groups)
    trainer_state.json                               step, steps, losses (one per step so far),
                                                     starts (the step each attempt began at), seconds
                                                     and cpu_seconds of the steps (rank 0's), tokens
"""

from __future__ import annotations

import json
from pathlib import Path

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "OPTIMIZER", "STATE", "load_checkpoint", "save_checkpoint"]

OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"


def save_checkpoint(directory: Path, peft_model, optimizer, state: dict) -> None:
    """Write the four files of a checkpoint into `directory` (which exists)."""
    from safetensors.torch import save_file

    peft_model.save_pretrained(directory, save_embedding_layers=False)
    tensors = {}
    for i, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"state.{i}.{key}"] = value.detach().clone().contiguous()
    save_file(tensors, str(directory / OPTIMIZER))
    (directory / STATE).write_text(json.dumps(state, indent=1))


def load_checkpoint(directory: Path, peft_model, optimizer) -> dict:
    """Restore the adapter and optimizer state from `directory`; returns the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(directory / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"checkpoint {directory} holds tensors the model lacks: {missing[:3]}")
    flat = load_file(str(directory / OPTIMIZER))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for name, value in flat.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    if state and max(state) >= len(params):
        raise ValueError(
            f"checkpoint {directory}: optimizer state for {max(state) + 1} parameters, the model has {len(params)}"
        )
    saved = optimizer.state_dict()
    saved["state"] = {
        i: {k: v.to(params[i].device) if k != "step" else v for k, v in s.items()} for i, s in state.items()
    }
    optimizer.load_state_dict(saved)
    return json.loads((directory / STATE).read_text())
