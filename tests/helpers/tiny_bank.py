"""A tiny bank in the Lots-of-LoRAs layout with random (untrained) adapters, built in seconds.

    root/<org>/tiny-base/                      MistralForCausalLM + word-level tokenizer
    root/<org>/tiny-base-r<r>-task<N>/         PEFT LoRA (q/k/v) with random weights
    root/<org>/task<N>_<slug>/data/*.parquet   train/valid/test with input, output, id

Useful where a test needs real files but not a meaningful bank (the demo builder makes that).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

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


def build_tokenizer(out_dir: Path):
    """A word-level tokenizer (BOS added like Mistral's) saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)) + [":", ".", "?"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(out_dir)
    return fast


def build_base_model(out_dir: Path, vocab_size: int, seed: int = 0, name: str | None = None):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
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
    import torch
    from peft import LoraConfig, get_peft_model

    from lorabatch.bank.datasets import write_split

    root = Path(root)
    base_repo = f"{org}/tiny-base"
    tokenizer = build_tokenizer(root / base_repo)
    model = build_base_model(root / base_repo, vocab_size=len(tokenizer), seed=seed, name=base_repo)
    lora = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj"], lora_dropout=0.0, bias="none"
    )
    peft_model = get_peft_model(model, lora)
    rng = random.Random(seed)
    numbers = tuple(range(1, n_tasks + 1))
    for n in numbers:
        torch.manual_seed(seed * 1000 + n)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.2)
        peft_model.save_pretrained(root / f"{org}/tiny-base-r{rank}-task{n}", save_embedding_layers=False)
        words = WORDS[(n * 3) % len(WORDS) :] + WORDS[: (n * 3) % len(WORDS)]
        data = [
            {
                "input": " ".join(rng.choice(words[:10]) for _ in range(5)),
                "output": [rng.choice(words[:4])],
                "id": f"task{n}-{i}",
            }
            for i in range(rows)
        ]
        ds_dir = root / f"{org}/task{n}_tiny_{n}"
        held_out = rows - test_rows
        write_split(ds_dir, "train", data[: held_out - 2])
        write_split(ds_dir, "valid", data[held_out - 2 : held_out])
        write_split(ds_dir, "test", data[held_out:])
    return TinyBank(
        root=root,
        org=org,
        base_model=base_repo,
        adapter_repo=f"{org}/tiny-base-r{rank}-task{{number}}",
        dataset_repo=f"{org}/task{{number}}_{{slug}}",
        task_numbers=numbers,
    )
