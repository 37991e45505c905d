"""Mean-pooled example embeddings (beyond paper mode).

For example text x (`input + output[0]`) with tokens t_1..t_T and hidden states h_1..h_T of the
chosen layer, e(x) = (1/T) Σ_t h_t  (padding excluded), optionally scaled to unit norm.
A dataset is represented by the matrix E [n, d] of the embeddings of (a seeded subsample of)
its train examples: the empirical distribution the OT and RBF-MMD distances compare.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lorabatch.features.config import EmbeddingConfig
from lorabatch.features.featureset import FeaturesError


def embedding_subsample(n: int, config: EmbeddingConfig) -> np.ndarray:
    """Indices (sorted) of the examples to embed: all, or a seeded subsample of max_examples."""
    if n <= config.max_examples:
        return np.arange(n)
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(n, size=config.max_examples, replace=False))


def embedding_key(config: EmbeddingConfig, model_dir: str | Path) -> str:
    """Cache key of embeddings: the settings that change them and the model's config file."""
    model_dir = Path(model_dir)
    cfg = model_dir / "config.json"
    model_sha = hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else str(model_dir.resolve())
    settings = config.model_dump(exclude={"enabled", "model", "batch_size"})
    blob = json.dumps([settings, model_sha], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Embedder:
    """Holds a model and tokenizer; `embed(texts)` -> float32 [n, d]."""

    def __init__(self, model_dir: str | Path, config: EmbeddingConfig, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
            self.model = AutoModel.from_pretrained(
                str(model_dir), dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise FeaturesError(
                f"cannot load the embedding model from {model_dir}: {str(err).splitlines()[0]}"
            ) from None
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        cfg = self.config
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), cfg.batch_size):
                enc = self.tokenizer(
                    texts[start : start + cfg.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=cfg.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[cfg.layer]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                out.append(pooled.double().numpy())
        emb = np.concatenate(out) if out else np.zeros((0, 0))
        if cfg.normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb.astype(np.float32)
