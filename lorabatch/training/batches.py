"""The order examples are drawn in and the learning-rate schedule (examples and padded batches:
`lorabatch.examples`). The order is a pure function of the seed and the step, so a resumed run (or
a worker that restarts) draws exactly the batches an uninterrupted run draws.
"""

from __future__ import annotations

import math
import random


def answer_tokens(items: list[tuple[list[int], int]]) -> int:
    """Tokens the loss covers in `items`: after the label shift, every token past the prompt."""
    return sum(len(ids) - n_prompt for ids, n_prompt in items)


class BatchOrder:
    """Global batches of example indices: shuffled epochs drawn from `random.Random(seed)`, a batch
    being the next `batch_size` indices (an epoch's remainder is carried into the next batch)."""

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        if n_examples < 1:
            raise ValueError(f"no training examples (n_examples={n_examples})")
        self.n, self.batch_size = n_examples, batch_size
        self._rng = random.Random(seed)
        self._queue: list[int] = []
        self.step = 0

    def next(self) -> list[int]:
        while len(self._queue) < self.batch_size:
            epoch = list(range(self.n))
            self._rng.shuffle(epoch)
            self._queue += epoch
        picked, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        self.step += 1
        return picked

    def skip_to(self, step: int) -> None:
        """Draw (and drop) batches until `step` batches have been drawn: where a resumed run starts."""
        while self.step < step:
            self.next()


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This worker's share of a global batch (every `world`-th index from `rank`)."""
    return batch[rank::world]


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to `floor` of the peak learning rate, at `step` (from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
