"""Synthetic banks in the Lots-of-LoRAs layout, random (untrained) adapters: the one builder the
tests and the benches share.

    root/<org>/tiny-base/                      MistralForCausalLM + word-level tokenizer
    root/<org>/tiny-base-r<r>-task<N>/         PEFT LoRA (q/k/v) with random weights
    root/<org>/task<N>_<slug>/data/*.parquet   train/valid/test with input, output, id

`build_tiny_bank` writes a whole tiny bank in seconds, where a test needs real files but not a
meaningful bank (the demo builder makes that). Its parts serve the benches' larger banks:
`word_tokenizer` (a word-level tokenizer, BOS added like Mistral's), `random_peft_adapters` (one
base model, LoRA weights drawn per task) and `random_adapter_files` (adapter files of given
tensor shapes, written without any model, for banks too large to instantiate).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.bank.datasets import write_split
from lorabatch.synthesis.tensors import SafetensorsLayout

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
TARGETS = ("q_proj", "k_proj", "v_proj")
WORDS = (
    "red green blue yellow cat dog bird fish one two three four apple pear plum "
    "run walk jump swim big small hot cold yes no up down left right"
).split()


@dataclass(frozen=True)
class TinyBank:
    root: Path
    org: str
    base_model: str  # repo id of the base model
    adapter_repo: str  # template with {number}
    dataset_repo: str  # template with {number} and {slug}
    task_numbers: tuple[int, ...]

    def bank_config(self, **overrides) -> dict:
        cfg = {
            "source": "local",
            "root": str(self.root),
            "base_model": self.base_model,
            "adapter_repo": self.adapter_repo,
            "dataset_repo": self.dataset_repo,
            "tasks": "all",
        }
        cfg.update(overrides)
        return cfg


def word_tokenizer(out_dir: Path, words, punctuation: bool = False):
    """A word-level tokenizer over `SPECIALS` + `words` (ids in that order; BOS added like
    Mistral's), split on whitespace (and punctuation), saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate([*SPECIALS, *words])}, unk_token="<unk>"))
    split = pre_tokenizers.WhitespaceSplit()
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.Punctuation()]) if punctuation else split
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(out_dir)
    return fast


def numbered_words(vocab: int) -> list[str]:
    """`vocab` − 4 distinct words (base-36 numerals): a tokenizer of exactly `vocab` ids with `SPECIALS`."""
    return [np.base_repr(k, 36).lower() for k in range(vocab - len(SPECIALS))]


def build_tokenizer(out_dir: Path):
    """The tiny bank's tokenizer: `WORDS` and `: . ?`, punctuation split off."""
    return word_tokenizer(out_dir, [*sorted(set(WORDS)), ":", ".", "?"], punctuation=True)


def random_peft_adapters(
    model, out_dirs: dict[int, Path], rank: int, std: float, seed_of: Callable[[int], int]
) -> None:
    """One PEFT LoRA (rank `rank`, alpha 2·rank, q/k/v) of `model` per task number in `out_dirs`,
    every lora_A / lora_B weight drawn from N(0, std²) after `torch.manual_seed(seed_of(task))`."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS), lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, lora)
    for n, out in out_dirs.items():
        torch.manual_seed(seed_of(n))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, std)
        peft_model.save_pretrained(out, save_embedding_layers=False)


def random_adapter_files(
    out_dirs: list[Path],
    shapes: dict[str, tuple[int, int]],
    *,
    rank: int,
    base_model: str,
    dtype: str = "F32",
    seed: int = 0,
    std: float = 0.02,
) -> int:
    """PEFT adapter directories with the tensors `shapes` ({name: shape}) drawn from N(0, std²)
    (one seeded stream, adapter after adapter), written without instantiating any model; returns
    the parameters per adapter."""
    layout = SafetensorsLayout(shapes, dtype)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS),
        "lora_dropout": 0.0,
        "bias": "none",
        "base_model_name_or_path": base_model,
        "task_type": "CAUSAL_LM",
        "use_rslora": False,
        "fan_in_fan_out": False,
    }
    rng = np.random.default_rng(seed)
    for out in out_dirs:
        out.mkdir(parents=True)
        flat = rng.standard_normal(layout.n_params, dtype=np.float32)
        flat *= std
        layout.write_tensors(
            out / ADAPTER_WEIGHTS, {t.name: flat[t.offset : t.offset + t.size].reshape(t.shape) for t in layout.tensors}
        )
        (out / ADAPTER_CONFIG).write_text(json.dumps(config))
    return layout.n_params


def write_task_dataset(out: Path, rows: list[dict], test: int, valid: int = 2) -> None:
    """A task's dataset: the last `test` rows its test split, the `valid` before them its valid
    split, the rest its train split."""
    held_out = len(rows) - test
    write_split(out, "train", rows[: held_out - valid])
    write_split(out, "valid", rows[held_out - valid : held_out])
    write_split(out, "test", rows[held_out:])


def build_base_model(
    out_dir: Path,
    vocab_size: int,
    seed: int = 0,
    name: str | None = None,
    intermediate_size: int = 128,
    max_positions: int = 256,
):
    """A 2-layer MistralForCausalLM (hidden 64, 2 heads of 32, 1 k/v head) with seeded weights, saved."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    model = MistralForCausalLM(config)
    if name:
        model.name_or_path = name
    model.save_pretrained(out_dir)
    return model


def build_tiny_bank(
    root: str | Path,
    n_tasks: int = 4,
    rank: int = 8,
    seed: int = 0,
    org: str = "tiny-org",
    rows: int = 12,
    test_rows: int = 2,
) -> TinyBank:
    """Write a tiny bank under `root` and describe it. Deterministic for a given seed.

    Each task has `rows` examples: the last `test_rows` are its test split, the 2 before them
    its valid split, the rest its train split.
    """
    if rows < test_rows + 3:
        raise ValueError(
            f"rows must leave at least one train example after {test_rows} test and 2 valid rows, got {rows}"
        )
    root = Path(root)
    base_repo = f"{org}/tiny-base"
    tokenizer = build_tokenizer(root / base_repo)
    model = build_base_model(root / base_repo, vocab_size=len(tokenizer), seed=seed, name=base_repo)
    numbers = tuple(range(1, n_tasks + 1))
    random_peft_adapters(
        model, {n: root / f"{org}/tiny-base-r{rank}-task{n}" for n in numbers}, rank, 0.2, lambda n: seed * 1000 + n
    )
    rng = random.Random(seed)
    for n in numbers:
        words = WORDS[(n * 3) % len(WORDS) :] + WORDS[: (n * 3) % len(WORDS)]
        data = [
            {
                "input": " ".join(rng.choice(words[:10]) for _ in range(5)),
                "output": [rng.choice(words[:4])],
                "id": f"task{n}-{i}",
            }
            for i in range(rows)
        ]
        write_task_dataset(root / f"{org}/task{n}_tiny_{n}", data, test_rows)
    return TinyBank(
        root=root,
        org=org,
        base_model=base_repo,
        adapter_repo=f"{org}/tiny-base-r{rank}-task{{number}}",
        dataset_repo=f"{org}/task{{number}}_{{slug}}",
        task_numbers=numbers,
    )
