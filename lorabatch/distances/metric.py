"""The interface every metric implements, and the vectorized kernels the blocks share.

A metric turns a `FeatureSet` of N datasets into a *state*: a dict of arrays whose first axis
indexes the datasets (or lists with one entry per dataset). `block(rows, cols)` maps the states
of a block of target datasets [R] and of source datasets [C] to D [R, C] with
D[r, c] = d(target r, source c) — one vectorized computation per block, no per-pair Python loop
for the paper's metrics. A block must not modify the state it reads (it may be a view of the
whole bank's state, shared by concurrent blocks).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from lorabatch.distances.config import DistancesConfig


class Metric:
    name: ClassVar[str]
    version: ClassVar[str]  # bumped whenever the values a metric produces change
    symmetric: ClassVar[bool]
    representation: ClassVar[str]  # "tokens" or "embeddings"
    definition: ClassVar[str]  # one line, recorded in the distance file's metadata
    default_block: ClassVar[int] = 64
    seconds_per_pair_bin: ClassVar[float] = 1e-9  # single-core cost model for the 'auto' executor

    def __init__(self, config=None):
        self.config = config if config is not None else DistancesConfig()

    @property
    def workers(self) -> int:
        """Threads for per-dataset preparation: config.num_workers, else the CPUs."""
        return self.config.num_workers or os.cpu_count() or 1

    def params(self) -> dict:
        """The config values this metric's values depend on (recorded with the matrix)."""
        return {}

    def prepare(self, features) -> dict:
        raise NotImplementedError

    def block(self, rows: dict, cols: dict) -> np.ndarray:
        raise NotImplementedError

    def block_upper(self, rows: dict) -> np.ndarray:
        """D [R, R] among the datasets of `rows` (a diagonal block of a symmetric metric); only
        entries r <= c are read, so an override may skip the strict lower triangle."""
        return self.block(rows, rows)

    def estimate_seconds(self, n_pairs: int, features) -> float:
        """Rough single-core seconds for `n_pairs` pairs (chooses between Ray and threads)."""
        return n_pairs * features.vocab_size * self.seconds_per_pair_bin

    def identities(self, features) -> list[str | None]:
        """Per dataset: equal identities mean equal inputs, hence distance exactly 0."""
        return features.token_sha256 if self.representation == "tokens" else features.embedding_sha256


def take(state: dict, index) -> dict:
    """The state restricted to the datasets `index` (first axis / list entries).

    A run of consecutive indices (every block the grid cuts) selects a view, not a copy: 128
    rows of a [N, 32000] float64 array would otherwise copy 33 MB per array, side and block.
    """
    index = np.asarray(index, dtype=np.int64)
    if len(index) and index[-1] - index[0] == len(index) - 1 and np.all(np.diff(index) == 1):
        index = slice(int(index[0]), int(index[-1]) + 1)
    out = {}
    for k, v in state.items():
        if isinstance(v, list):
            out[k] = v[index] if isinstance(index, slice) else [v[i] for i in index]
        elif isinstance(v, np.ndarray) and v.ndim >= 1:
            out[k] = v[index]
        else:
            out[k] = v
    return out


def rowwise(fn, n: int, workers: int, rows_per_task: int = 32) -> None:
    """fn(rows) for consecutive slices of `rows_per_task` datasets out of n, on `workers` threads.

    For per-dataset preparation (densities, logs, CDFs, FFTs): numpy and scipy.fft release the
    GIL inside their array operations, and slices of a few MB stay in cache between the steps
    `fn` applies to them.
    """
    slices = [slice(a, min(n, a + rows_per_task)) for a in range(0, n, rows_per_task)]
    workers = min(workers, len(slices))
    if workers <= 1:
        for rows in slices:
            fn(rows)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, slices):
            pass
