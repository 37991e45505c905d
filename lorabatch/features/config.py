"""Configuration of the features stage (token histograms, MMD samples, embeddings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lorabatch.strict import RuntimeField, StrictModel


class EmbeddingConfig(StrictModel):
    """Mean-pooled example embeddings (beyond paper mode: OT and RBF-MMD distances)."""

    enabled: bool = Field(
        False,
        description="Compute embeddings. Turned on automatically when an embedding metric is requested.",
    )
    model: str | None = Field(
        None,
        description="Local directory of a transformers model whose hidden states are pooled; "
        "None: the bank's base model.",
    )
    layer: int = Field(-1, description="Index into the model's hidden states (-1: the last layer).")
    max_examples: int = Field(
        256, ge=1, description="Train examples embedded per dataset (a seeded subsample when there are more)."
    )
    max_length: int = Field(256, ge=1, description="Tokens per example fed to the model (longer ones are truncated).")
    batch_size: int = Field(16, ge=1, description="Examples per forward pass.")
    normalize: bool = Field(True, description="Scale every pooled embedding to unit Euclidean norm.")
    seed: int = Field(0, description="Seed of the example subsample.")


class FeaturesConfig(StrictModel):
    """Per-dataset features computed from the train split with the base model's tokenizer."""

    max_examples: int | None = Field(
        None,
        ge=1,
        description="Use only the first this many train examples of each dataset (None: all, as the paper).",
    )
    vocab_size: int | None = Field(
        None,
        ge=2,
        description="Size of the token-id histograms; None: the tokenizer's length. A token id at or "
        "above it is an error naming the dataset.",
    )
    mmd_sample_size: int = Field(
        1000, ge=1, description="Token ids drawn with replacement per dataset for the MMD distance (paper: 1000)."
    )
    mmd_seed: int = Field(0, description="Seed of the MMD samples (combined with each dataset's token content).")
    tokenize_batch_size: int = RuntimeField(512, ge=1, description="Texts per tokenizer call.")
    executor: Literal["ray", "local"] = RuntimeField(
        "ray",
        description="'ray': Ray Data map_batches over the bank's datasets on CPU actors; "
        "'local': in this process (small banks, tests).",
    )
    num_workers: int | None = RuntimeField(
        None,
        ge=1,
        description="Ray actors tokenizing in parallel (None: the CPUs Ray offers, at most one per dataset).",
    )
    embedding: EmbeddingConfig = Field(
        default_factory=EmbeddingConfig, description="Mean-pooled example embeddings (beyond paper mode)."
    )
