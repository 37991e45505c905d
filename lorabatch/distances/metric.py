"""The interface every metric implements, and the vectorized kernels the blocks share.

A metric turns a `FeatureSet` of N datasets into a *state*: a dict of arrays whose first axis
indexes the datasets (or lists with one entry per dataset). `block(rows, cols)` maps the states
of a block of target datasets [R] and of source datasets [C] to D [R, C] with
D[r, c] = d(target r, source c) — one vectorized computation per block, no per-pair Python loop
for the paper's metrics.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np


class Metric:
    name: ClassVar[str]
    version: ClassVar[str]  # bumped whenever the values a metric produces change
    symmetric: ClassVar[bool]
    representation: ClassVar[str]  # "tokens" or "embeddings"
    definition: ClassVar[str]  # one line, recorded in the distance file's metadata
    default_block: ClassVar[int] = 64
    seconds_per_pair_bin: ClassVar[float] = 1e-9  # single-core cost model for the 'auto' executor

    def __init__(self, config):
        self.config = config

    def params(self) -> dict:
        """The config values this metric's values depend on (recorded with the matrix)."""
        return {}

    def prepare(self, features) -> dict:
        raise NotImplementedError

    def block(self, rows: dict, cols: dict) -> np.ndarray:
        raise NotImplementedError

    def estimate_seconds(self, n_pairs: int, features) -> float:
        """Rough single-core seconds for `n_pairs` pairs (chooses between Ray and threads)."""
        return n_pairs * features.vocab_size * self.seconds_per_pair_bin

    def identities(self, features) -> list[str | None]:
        """Per dataset: equal identities mean equal inputs, hence distance exactly 0."""
        return features.token_sha256 if self.representation == "tokens" else features.embedding_sha256


def take(state: dict, index) -> dict:
    """The state restricted to the datasets `index` (first axis / list entries)."""
    index = np.asarray(index, dtype=np.int64)
    out = {}
    for k, v in state.items():
        if isinstance(v, list):
            out[k] = [v[i] for i in index]
        elif isinstance(v, np.ndarray) and v.ndim >= 1:
            out[k] = v[index]
        else:
            out[k] = v
    return out


def pairwise_reduce(a: np.ndarray, b: np.ndarray, op: str, chunk: int = 2048) -> np.ndarray:
    """out [R, C] with out[r, c] = Σ_v f(a[r, v], b[c, v]) for f chosen by `op`:

        'slogs':  f = (x + y) · log(x + y)      (JS: the only non-separable part)

    Chunks of the vocabulary keep the [C, chunk] temporaries in cache; per (row, chunk) the
    work is one add, one log and one row-wise dot product, all vectorized over C × chunk.
    """
    r, c, v = a.shape[0], b.shape[0], a.shape[1]
    out = np.zeros((r, c))
    width = min(chunk, v)
    buf, logs = np.empty((c, width)), np.empty((c, width))
    for c0 in range(0, v, width):
        c1 = min(v, c0 + width)
        w = c1 - c0
        bc, s, ls = b[:, c0:c1], buf[:, :w], logs[:, :w]
        for i in range(r):
            np.add(bc, a[i, c0:c1], out=s)
            if op == "slogs":
                np.log(s, out=ls)
                out[i] += np.vecdot(s, ls)
            else:
                raise ValueError(f"unknown reduction {op!r}")
    return out
