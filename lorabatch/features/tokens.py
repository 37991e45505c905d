"""The paper's representation of a dataset: token ids of `input + output[0]` of every train
example, tokenized with the base model's tokenizer with default settings (BOS added), concatenated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lorabatch.features.featureset import FeaturesError, token_histogram

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def tokenizer_fingerprint(directory: str | Path) -> str | None:
    """sha256 of a directory's tokenizer files (name and bytes); None when it holds none."""
    directory = Path(directory)
    files = [directory / f for f in TOKENIZER_FILES if (directory / f).is_file()]
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The transformers tokenizer of a model directory (default settings)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise FeaturesError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None


def example_texts(table, dataset: str, max_examples: int | None = None) -> list[str]:
    """`input + output[0]` per example (a pyarrow Table with columns input, output)."""
    if table.num_rows == 0:
        raise FeaturesError(f"dataset {dataset}: the train split is empty")
    for col in ("input", "output"):
        if col not in table.column_names:
            raise FeaturesError(f"dataset {dataset}: the train split lacks column {col!r} (has {table.column_names})")
    n = table.num_rows if max_examples is None else min(max_examples, table.num_rows)
    inputs = table.column("input").slice(0, n).to_pylist()
    outputs = table.column("output").slice(0, n).to_pylist()
    texts = []
    for k, (x, out) in enumerate(zip(inputs, outputs)):
        if isinstance(out, str):
            out = [out]
        if x is None or not out or out[0] is None:
            raise FeaturesError(f"dataset {dataset}: train example {k} lacks an input or a reference output")
        texts.append(x + out[0])
    return texts


def tokenize_counts(tokenizer, texts: list[str], vocab_size: int, dataset: str, batch_size: int = 512) -> np.ndarray:
    """counts [V] of the token ids of all `texts` (each tokenized with default settings)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size])["input_ids"]
        flat = np.fromiter((t for seq in ids for t in seq), dtype=np.int64)
        if flat.size:
            counts += token_histogram(flat, vocab_size, dataset)
    if not counts.any():
        raise FeaturesError(f"dataset {dataset}: its train examples tokenize to no tokens at all")
    return counts


def vocab_size_of(tokenizer, configured: int | None) -> int:
    return int(configured) if configured is not None else len(tokenizer)
