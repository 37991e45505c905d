"""What the demo builder trains on, before any training: task specs, splits, pre-training
sentences and the instruction phase's rows — all pure functions of the size, seed, base and
families, so they can be fingerprinted without building (`lorabatch.demo.shipped.recipe`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from lorabatch.demo.families import (
    Family,
    TaskSpec,
    make_examples,
    pretraining_sentences,
    split_examples,
    task_specs,
)
from lorabatch.demo.instruct import bank_sentences, instruction_examples


@dataclass(frozen=True)
class DemoInputs:
    """Everything the builder's training reads: `splits[task number][split]` rows,
    `sentences` (pre-training) and `instruction` rows (empty for the plain base)."""

    specs: list[TaskSpec]
    families: tuple[Family, ...]  # the families the specs come from (the first n of those given)
    splits: dict[int, dict[str, list[dict]]]
    sentences: list[str]
    instruction: list[dict]

    def tokenizer_texts(self) -> list[str]:
        """Every text the tokenizer must cover: sentences, bank rows and instruction rows."""
        rows = [r for s in self.splits.values() for split in s.values() for r in split] + self.instruction
        return self.sentences + [t for r in rows for t in (r["input"], *r["output"])]

    def sha256(self) -> str:
        """Fingerprint of the data: a change in any family's generator, split or phase shows here."""
        payload = {
            "tasks": [[s.number, s.name, s.variant.definition] for s in self.specs],
            "splits": {str(n): s for n, s in sorted(self.splits.items())},
            "sentences": self.sentences,
            "instruction": self.instruction,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def demo_inputs(
    n_families: int,
    n_variants: int,
    examples_per_task: int,
    pretrain_sentences: int,
    instruct_per_variant: int,
    instruct_terse_share: float,
    seed: int,
    base: str,
    all_families: tuple[Family, ...],
) -> DemoInputs:
    """The builder's data for the first `n_families` of `all_families` × `n_variants` variants.

    The instruction phase (base "instruct") draws its sentences outside every bank split.
    """
    n = min(n_families, len(all_families))
    specs = task_specs(n, n_variants, all_families)
    families = all_families[:n]
    splits = {spec.number: split_examples(make_examples(spec, examples_per_task, seed)) for spec in specs}
    sentences = pretraining_sentences(families, pretrain_sentences, seed)
    instruction = []
    if base == "instruct":
        bank_rows = [r for s in splits.values() for rows in s.values() for r in rows]
        instruction = instruction_examples(
            specs, bank_sentences(bank_rows), instruct_per_variant, seed, instruct_terse_share
        )
    return DemoInputs(specs, families, splits, sentences, instruction)
