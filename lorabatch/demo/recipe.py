"""The demo builder's recipe: its version, the bank sizes, and a fingerprint of everything that
decides a bank's bytes (settings, seed, threads, LoRA init, base, and the data it trains on).

A bank records its recipe's sha256 in `demo_bank.json`; a bank is kept, and the shipped default
bank used, only where the recipe asked for is the one it was built from. A change to how the
builder trains that no setting shows (the training loop, the model's initialisation) bumps
`BUILDER_VERSION`, which the recipe holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from lorabatch.demo.families import FAMILIES, Family
from lorabatch.demo.inputs import DemoInputs, demo_inputs
from lorabatch.demo.lora_init import DEFAULT_SHARED_FRACTION
from lorabatch.demo.model import ModelDims
from lorabatch.demo.train import TrainSettings

# 2: lora_init (shared / independent / mixed), fixed default threads, train_seconds; 3: lora_A at
# 1/16 of the LoRA learning rate; 4: answer forms shared across families, shorter training;
# 5: an instruction-following base (instruction phase), acceptance on the valid split.
BUILDER_VERSION = "5"
BASES = ("instruct", "plain")  # the base model's regime: instruction-following, or builder 4's
# Fixed, not chosen from the machine: builds with different thread counts differ in rounding, so a
# count that followed the load average made one command build different banks on different days.
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class DemoSize:
    """How big a demo bank is: tasks, examples, pre-training corpus, training and evaluation."""

    n_families: int
    n_variants: int
    examples_per_task: int  # split 80/10/10
    pretrain_sentences: int
    eval_examples: int  # valid examples per task scored for acceptance (at most the split's)
    instruct_per_variant: int  # instruction-phase rows per variant of each family
    train: TrainSettings = field(default_factory=TrainSettings)
    dims: ModelDims = field(default_factory=ModelDims)
    max_new_tokens: int = 16  # the longest answer has 6 words
    instruct_terse_share: float = 0.45  # of them answered with the bare content (the rest: house style)


SIZES: dict[str, DemoSize] = {
    "small": DemoSize(3, 3, 150, 4000, 15, 200, TrainSettings(pretrain_steps=400, instruct_steps=200, lora_steps=130)),
    # lora_lr 7.5e-3 rather than 5e-3: `uniform` closes 18 % of the gap on valid instead of 17 %
    # (BENCHMARKS.md, tries 5e and 5f); own adapters 0.989.
    "default": DemoSize(
        6, 4, 250, 8000, 25, 200, TrainSettings(pretrain_steps=600, instruct_steps=300, lora_steps=200, lora_lr=7.5e-3)
    ),
    # The builder's mechanics in tests (seconds, not minutes); its adapters learn little.
    "tiny": DemoSize(
        1,
        2,
        40,
        300,
        4,
        20,
        TrainSettings(
            pretrain_steps=20, pretrain_batch=8, instruct_steps=10, instruct_batch=8, lora_steps=12, lora_batch=8
        ),
        ModelDims(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
        ),
    ),
}


def size_inputs(cfg: DemoSize, seed: int, base: str, families: tuple[Family, ...]) -> DemoInputs:
    """The data a bank of size `cfg` trains on (`lorabatch.demo.inputs.demo_inputs`)."""
    return demo_inputs(
        cfg.n_families,
        cfg.n_variants,
        cfg.examples_per_task,
        cfg.pretrain_sentences,
        cfg.instruct_per_variant,
        cfg.instruct_terse_share,
        seed,
        base,
        families,
    )


def recorded_fraction(lora_init: str, shared_fraction: float) -> float | None:
    """`shared_fraction` as the manifest records it: only `mixed` uses it."""
    return float(shared_fraction) if lora_init == "mixed" else None


def recipe(
    size: str = "default",
    seed: int = 0,
    threads: int | None = None,
    lora_init: str = "mixed",
    shared_fraction: float = DEFAULT_SHARED_FRACTION,
    base: str = "instruct",
    families: tuple[Family, ...] | None = None,
    inputs: DemoInputs | None = None,
) -> dict:
    """Everything a bank built with these arguments depends on, as JSON-ready data.

    The data the builder trains on enters as its sha256 (`DemoInputs.sha256`), so a change in a
    family's generator or the instruction phase changes the recipe without a version bump. The
    number of LoRAs trained at once does not enter: the bank does not depend on it.
    """
    cfg = SIZES[size]
    if inputs is None:  # the builder passes the inputs it trains on: generated once
        inputs = size_inputs(cfg, seed, base, FAMILIES if families is None else tuple(families))
    return {
        "builder_version": BUILDER_VERSION,
        "size": size,
        "settings": json.loads(json.dumps(asdict(cfg))),
        "seed": seed,
        "threads": threads or DEFAULT_THREADS,
        "lora_init": lora_init,
        "shared_fraction": recorded_fraction(lora_init, shared_fraction),
        "base": base,
        "families": [f.name for f in inputs.families],
        "data_sha256": inputs.sha256(),
    }


def recipe_sha256(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
