"""Adapter synthesis: coefficient models, mixing, the PEFT adapter writer, batch synthesis, predict.

Importing this package is free: names below resolve on first use (PEP 562), so importing a
submodule (e.g. `lorabatch.synthesis.neural` on a GPU box without pydantic) pulls in nothing else.
numpy is needed throughout; torch (neural model), ray (batch executor) and transformers /
datasets (predict) are imported by the functions that need them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "bank_gram": "batch",
    "synthesize_batch": "batch",
    "attentional_coefficients": "coefficients",
    "check_coefficients": "coefficients",
    "neural_coefficients": "coefficients",
    "normalized_coefficients": "coefficients",
    "row_zscore": "coefficients",
    "softmin": "coefficients",
    "sparsify_top_k": "coefficients",
    "VLLM_LORA_RANKS": "config",
    "NeuralConfig": "config",
    "SynthesisConfig": "config",
    "mix_exact": "mixing",
    "mix_linear": "mixing",
    "mix_paper": "mixing",
    "explicit_reconstruction_loss": "neural",
    "gram_reconstruction_loss": "neural",
    "load_neural_model": "neural",
    "save_neural_model": "neural",
    "train_neural_model": "neural",
    "predict_adapter": "predict",
    "read_user_dataset": "predict",
    "nearest_coefficients": "coefficients",
    "uniform_coefficients": "coefficients",
    "SynthesisError": "stage",
    "compute_coefficients": "stage",
    "jit_adapter": "stage",
    "compute_uniform_coefficients": "stage",
    "mixture_settings": "stage",
    "setting_coefficients_path": "stage",
    "read_coefficients": "stage",
    "synthesize_one": "stage",
    "synthesize_setting": "stage",
    "write_coefficients": "stage",
    "BankLayout": "tensors",
    "bank_layout": "tensors",
    "layout_from_manifest": "tensors",
    "output_adapter_config": "writer",
    "write_adapter": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lorabatch.synthesis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lorabatch.synthesis' has no attribute {name!r}")


def __dir__():
    return __all__
