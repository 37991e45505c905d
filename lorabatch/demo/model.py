"""The demo base model: a tiny `MistralForCausalLM`.

Sizes are chosen for two constraints: it must learn the demo tasks within minutes on two CPU
cores, and vLLM's CPU backend must serve it (head_dim 64, grouped-query attention like
Mistral-7B's 32 query / 8 key-value heads, here 4 / 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelDims:
    """Architecture of the tiny Mistral (the vocabulary size comes from the tokenizer)."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 512

    def as_dict(self) -> dict:
        return asdict(self)


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    """Embedding rows: the tokenizer's size rounded up (aligned matrices are faster)."""
    return -(-n_tokens // multiple) * multiple


def new_model(tokenizer, dims: ModelDims, seed: int):
    """A freshly initialised MistralForCausalLM (float32) whose special ids match `tokenizer`."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=padded_vocab_size(len(tokenizer)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        sliding_window=None,
        rope_theta=10000.0,
        **dims.as_dict(),
    )
    model = MistralForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
