"""Few-shot settings: `select` (the candidate adapter with the lowest loss on a task's own training
examples) and `refine` (CMA-ES on the top-K bank weights of that loss). Forward passes only.

Importing this package is free; torch, transformers, peft, cma and ray load on first use.
"""
