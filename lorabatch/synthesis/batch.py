"""Batch synthesis: many adapters from one streaming pass over the bank, as a blocked matrix product.

For a coefficient matrix C [M, N] (M targets, e.g. all N leave-one-out rows of a setting) the new
adapters are Θ_new = C Θ [M, P]. The bank Θ [N, P] is never held whole: P is cut into chunks of
`chunk_size` elements; for each chunk X = Θ[:, chunk] [N, chunk] is read from the N safetensors
files, Y = C X [M, chunk] is formed, and each row of Y is written in place into its target's
pre-sized safetensors file. Chunks are independent Ray CPU tasks (or run in this process).
Peak memory per chunk ≈ (N + M) × chunk_size × 4 bytes. Each output directory is an atomic
directory: a failure anywhere (e.g. a non-finite value) leaves none of the M adapters behind.

The same pass computes the bank's Gram matrix G = Θ Θᵀ (`bank_gram`) for the neural model.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from lorabatch.adapter_format import ADAPTER_WEIGHTS
from lorabatch.atomic import atomic_dir
from lorabatch.raysession import require_ray, task_fault_tolerance
from lorabatch.synthesis.tensors import DTYPE_NAMES, BankLayout, SafetensorsLayout
from lorabatch.synthesis.writer import NonFiniteWeightsError, finish_adapter_dir, output_adapter_config


def output_dtype_name(layout: BankLayout, output_dtype: str) -> str:
    return layout.dtype if output_dtype == "bank" else DTYPE_NAMES[output_dtype]


def _read_block(layout: BankLayout, rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    block = np.empty((len(rows), stop - start), dtype=np.float32)
    for k, j in enumerate(rows):
        block[k] = layout.read_range(int(j), start, stop)
    return block


def mix_chunk(
    layout: BankLayout, coefficients: np.ndarray, start: int, stop: int, out_paths: list[str], out_dtype: str
) -> int:
    """Y = C Θ[:, start:stop], written into each target's file; returns the chunk length.

    Only bank adapters with a non-zero coefficient in some row are read (top-k makes C sparse).
    """
    used = np.flatnonzero(np.any(coefficients != 0, axis=0))
    block = _read_block(layout, used, start, stop)
    y = coefficients[:, used].astype(np.float32) @ block
    if not np.isfinite(y).all():
        row = int(np.flatnonzero(~np.isfinite(y).all(axis=1))[0])
        raise NonFiniteWeightsError(f"adapter for {out_paths[row]} has non-finite values in parameters {start}..{stop}")
    writer = SafetensorsLayout({t.name: t.shape for t in layout.tensors}, out_dtype)
    for m, path in enumerate(out_paths):
        fd = os.open(path, os.O_WRONLY)
        try:
            writer.write_range(fd, start, y[m])
        finally:
            os.close(fd)
    return stop - start


def _run_chunks(layout, coefficients, chunks, out_paths, out_dtype, executor, progress, desc):
    from tqdm.auto import tqdm

    bar = tqdm(total=layout.n_params, desc=desc, unit="param", unit_scale=True, disable=not progress or None)
    if executor == "local":
        for start, stop in chunks:
            bar.update(mix_chunk(layout, coefficients, start, stop, out_paths, out_dtype))
    else:
        import ray

        require_ray("synthesis.executor 'ray'")
        remote = ray.remote(num_cpus=1, **task_fault_tolerance())(mix_chunk)
        layout_ref, c_ref = ray.put(layout), ray.put(coefficients)
        pending = [remote.remote(layout_ref, c_ref, s, e, out_paths, out_dtype) for s, e in chunks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(ray.get(done[0]))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    bar.close()


def synthesize_batch(
    layout: BankLayout,
    coefficients: np.ndarray,
    out_dirs: list[str | Path],
    provenances: list[dict],
    *,
    chunk_size: int = 1 << 16,
    output_dtype: str = "bank",
    executor: str = "local",
    progress: bool = True,
) -> list[Path]:
    """Write M paper-mixed adapters Θ_new = C Θ (C [M, N]) into `out_dirs`, streaming the bank once."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != layout.n_tasks or c.shape[0] != len(out_dirs) or len(provenances) != len(out_dirs):
        raise ValueError(f"coefficients {c.shape} do not match {len(out_dirs)} targets × {layout.n_tasks} bank tasks")
    if not np.isfinite(c).all() or not c.any(axis=1).all():
        raise ValueError("every coefficient row must be finite with at least one non-zero weight")
    out_dtype = output_dtype_name(layout, output_dtype)
    config = output_adapter_config(layout.adapter_config, int(layout.adapter_config["r"]))
    writer = SafetensorsLayout({t.name: t.shape for t in layout.tensors}, out_dtype)
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_dir(d)) for d in out_dirs]
        paths = [str(t / ADAPTER_WEIGHTS) for t in tmps]
        for p in paths:
            writer.allocate(p)
        if len(out_dirs):
            _run_chunks(layout, c, layout.chunks(chunk_size), paths, out_dtype, executor, progress, "synthesize")
        for tmp, prov in zip(tmps, provenances):
            finish_adapter_dir(tmp, config, prov)
    return [Path(d) for d in out_dirs]


def bank_gram(layout: BankLayout, chunk_size: int = 1 << 16, progress: bool = True) -> np.ndarray:
    """G = Θ Θᵀ [N, N] in float64, accumulated over parameter chunks (one pass over the bank)."""
    from tqdm.auto import tqdm

    n = layout.n_tasks
    gram = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for start, stop in tqdm(
        layout.chunks(chunk_size), desc="bank Gram matrix", unit="chunk", disable=not progress or None
    ):
        block = _read_block(layout, rows, start, stop).astype(np.float64)
        gram += block @ block.T
    return gram
