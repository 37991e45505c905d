"""`FeatureSet`: the features of one or more datasets, as the distances stage consumes them.

Shapes (N datasets, V = vocabulary size, S = MMD sample size):
    counts      int64   [N, V]   token-id histogram of the concatenated train examples
    samples     int64   [N, S]   token ids drawn with replacement (seeded) for MMD
    embeddings  list of float32 [n_i, d] mean-pooled example embeddings (or None)
    known_token_sha256  token_sha256 per dataset when already known (read from the cache index,
                        which records it) — hashing 128 MB of histograms at N = 502 takes ~0.15 s
Everything the paper's metrics need derives from `counts` and `samples`: densities p = counts / L
(KL, JS), CDFs F = cumsum(counts) / L (exact 1-D Wasserstein), samples (MMD).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from lorabatch.errors import LorabatchError


class FeaturesError(LorabatchError):
    """Features cannot be computed or loaded; the message names the dataset (or file) at fault."""


@dataclass
class FeatureSet:
    names: list[str]
    counts: np.ndarray
    samples: np.ndarray
    n_examples: np.ndarray
    tokenizer_sha256: str
    embeddings: list[np.ndarray] | None = None
    keys: list[str] = field(default_factory=list)
    known_token_sha256: list[str] | None = field(default=None, repr=False)

    def __post_init__(self):
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.samples = np.asarray(self.samples, dtype=np.int64)
        self.n_examples = np.asarray(self.n_examples, dtype=np.int64)
        n = len(self.names)
        if self.counts.ndim != 2 or self.counts.shape[0] != n or self.samples.shape[0] != n:
            raise ValueError(
                f"features of {n} datasets need counts [N, V] and samples [N, S]; got {self.counts.shape}, {self.samples.shape}"
            )
        if self.embeddings is not None and len(self.embeddings) != n:
            raise ValueError(f"{len(self.embeddings)} embedding matrices for {n} datasets")
        if self.known_token_sha256 is not None and len(self.known_token_sha256) != n:
            raise ValueError(f"{len(self.known_token_sha256)} known token hashes for {n} datasets")
        if not self.keys:
            self.keys = list(self.token_sha256)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def vocab_size(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_tokens(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    @property
    def token_sha256(self) -> list[str]:
        """Identity of each dataset's token features (histogram and MMD sample)."""
        if self.known_token_sha256 is not None:
            return list(self.known_token_sha256)
        return [_sha(self.counts[i], self.samples[i]) for i in range(len(self))]

    @property
    def embedding_sha256(self) -> list[str | None]:
        if self.embeddings is None:
            return [None] * len(self)
        return [_sha(e) for e in self.embeddings]

    def subset(self, index) -> "FeatureSet":
        index = list(index)
        return FeatureSet(
            names=[self.names[i] for i in index],
            counts=self.counts[index],
            samples=self.samples[index],
            n_examples=self.n_examples[index],
            tokenizer_sha256=self.tokenizer_sha256,
            embeddings=None if self.embeddings is None else [self.embeddings[i] for i in index],
            keys=[self.keys[i] for i in index],
            known_token_sha256=None if self.known_token_sha256 is None else [self.known_token_sha256[i] for i in index],
        )

    @staticmethod
    def concat(parts: list["FeatureSet"]) -> "FeatureSet":
        tok = {p.tokenizer_sha256 for p in parts}
        if len(tok) > 1:
            raise FeaturesError("features computed with different tokenizers cannot be compared")
        vocab = {p.vocab_size for p in parts}
        if len(vocab) > 1:
            raise FeaturesError(f"features with different vocabulary sizes {sorted(vocab)} cannot be compared")
        emb = None
        if all(p.embeddings is not None for p in parts):
            emb = [e for p in parts for e in p.embeddings]
        return FeatureSet(
            names=[n for p in parts for n in p.names],
            counts=np.concatenate([p.counts for p in parts]),
            samples=np.concatenate([p.samples for p in parts]),
            n_examples=np.concatenate([p.n_examples for p in parts]),
            tokenizer_sha256=parts[0].tokenizer_sha256,
            embeddings=emb,
            keys=[k for p in parts for k in p.keys],
            # a bank with known hashes plus a query: hash only the parts that need it
            known_token_sha256=None
            if all(p.known_token_sha256 is None for p in parts)
            else [h for p in parts for h in p.token_sha256],
        )


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def token_histogram(token_ids: np.ndarray, vocab_size: int, dataset: str) -> np.ndarray:
    """counts [V] (int64) of the token ids; a token id outside [0, V) is an error naming `dataset`."""
    ids = np.asarray(token_ids)
    if ids.size == 0:
        raise FeaturesError(f"dataset {dataset}: no tokens (empty train split?)")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise FeaturesError(
            f"dataset {dataset}: token id {bad} is outside the vocabulary [0, {vocab_size}); "
            "the features were computed with another tokenizer or vocab_size is too small"
        )
    return np.bincount(ids, minlength=vocab_size).astype(np.int64)


def sample_token_ids(counts: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` token ids drawn uniformly with replacement from the dataset's concatenated tokens.

    Drawing positions 0..L-1 of the tokens sorted by id is the same distribution as drawing
    positions of the concatenation, so the sample follows from the histogram alone. The
    generator is seeded by `seed` and the histogram's content: identical datasets get
    identical samples (MMD(P, P) = 0), whatever their file layout or order in the bank.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total <= 0:
        raise FeaturesError("cannot sample token ids from an empty histogram")
    content = int(hashlib.sha256(np.ascontiguousarray(counts).tobytes()).hexdigest()[:16], 16)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), content]))
    positions = rng.integers(0, total, size=size)
    return np.searchsorted(np.cumsum(counts), positions, side="right").astype(np.int64)
