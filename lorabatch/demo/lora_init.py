"""Which demo tasks start their LoRA from one shared lora_A initialisation, and each task's seeds.

The real Lots-of-LoRAs bank (third-party analysis, see DESIGN.md): about 38 % of its adapters
share one near-identical lora_A — PEFT's default init drawn from one seed — and the rest look
independently initialised. The demo bank mirrors that structure:

- ``independent``: task N's init seed is its own, ``seed * 100_003 + N`` (builder 1's only mode);
- ``shared``: every task's init seed is the bank's shared seed, ``seed * 100_003`` (task numbers
  start at 1, so it is nobody's own seed);
- ``mixed``: ``round(shared_fraction * n_tasks)`` tasks, drawn by an RNG seeded from the bank seed
  alone, take the shared seed, the others their own.

The data-shuffle seed of a task's training is always its own (``task_seed``): tasks that share
an init still see their examples in different orders.
"""

from __future__ import annotations

import random
from typing import Iterable, Literal

LoraInit = Literal["shared", "independent", "mixed"]
LORA_INITS: tuple[str, ...] = ("shared", "independent", "mixed")
DEFAULT_SHARED_FRACTION = 0.38
_STRIDE = 100_003  # a prime above any demo task number: seeds of different bank seeds never meet


def task_seed(seed: int, number: int) -> int:
    """Task `number`'s own seed in a bank built with `seed` (its data shuffle, its own init)."""
    return seed * _STRIDE + number


def shared_init_seed(seed: int) -> int:
    """The one lora_A init seed of the tasks that share their init."""
    return seed * _STRIDE


def shared_init_tasks(
    numbers: Iterable[int], seed: int, lora_init: str, shared_fraction: float = DEFAULT_SHARED_FRACTION
) -> list[int]:
    """Task numbers (sorted) whose LoRA starts from the shared init.

    `mixed` draws ``round(shared_fraction * n)`` of the n tasks (Python's round: halves go to the
    even count) with ``random.Random(f"{seed}:lora-init")`` — string seeds hash the same on every
    machine and Python version — over the sorted task numbers, so the choice depends on the bank
    seed and the task set only.
    """
    numbers = sorted(set(numbers))
    if lora_init == "independent":
        return []
    if lora_init == "shared":
        return numbers
    if lora_init != "mixed":
        raise ValueError(f"lora_init must be one of {list(LORA_INITS)}, got {lora_init!r}")
    if not 0.0 <= shared_fraction <= 1.0:
        raise ValueError(f"shared_fraction must lie in [0, 1], got {shared_fraction!r}")
    k = round(shared_fraction * len(numbers))
    return sorted(random.Random(f"{seed}:lora-init").sample(numbers, k))


def lora_init_seeds(
    numbers: Iterable[int], seed: int, lora_init: str, shared_fraction: float = DEFAULT_SHARED_FRACTION
) -> dict[int, int]:
    """Task number -> seed of its lora_A initialisation (see the module docstring)."""
    numbers = sorted(set(numbers))
    shared = set(shared_init_tasks(numbers, seed, lora_init, shared_fraction))
    return {n: shared_init_seed(seed) if n in shared else task_seed(seed, n) for n in numbers}
