"""Coefficient models: from a distance matrix D to mixing weights C (each row sums to 1).

Shapes: D is [M, N] — row i holds d(target i, source j) for the N bank tasks. In leave-one-out
mode D is the bank's own [N, N] matrix and the target's own column is excluded (its entry is set
to +∞ before the softmin, so its weight is exactly 0). In query mode (a new dataset) there is no
self entry to exclude.

    softmin_T(s)_j = exp(−s_j / T) / Σ_k exp(−s_k / T)            (entries at +∞ get weight 0)
    attentional:  C_i = softmin_T(d_i·)                                  (paper: base_version)
    normalized:   z_ij = (d_ij − mean_k d_ik) / std_k d_ik,  C_i = softmin_T(z_i·)
                  (population std; the self entry d_ii *is* part of mean and std, as in the
                  authors' normalized_version; std 0 gives z = 0, i.e. uniform weights)
    neural:       C_i = softmin_T(g(z_i·)) with g a trained scalar MLP (see `neural.py`)

Controls (what a setting must beat to show that distances carry information):
    uniform:      C_ij = 1 / (N − 1) for j ≠ i      (the plain mean of the other adapters)
    nearest:      C_ij = 1 for j = argmin_{k≠i} d_ik (ties: the lower column), else 0

Top-k sparsification keeps the k largest weights of a row and renormalises them to sum 1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lorabatch.settings import COEFFICIENT_MODELS


def softmin(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmin of `scores` [M, N] in float64; +∞ entries get weight exactly 0.

    Stable: each row is shifted by its smallest finite score before exponentiating.
    """
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        i, j = np.argwhere(np.isnan(s))[0]
        raise ValueError(f"score matrix holds NaN (first at row {i}, column {j})")
    finite = np.isfinite(s)
    if (~finite.any(axis=1)).any():
        i = int(np.flatnonzero(~finite.any(axis=1))[0])
        raise ValueError(f"row {i} has no finite score: every source is excluded or infinitely far")
    shift = np.where(finite, s, np.inf).min(axis=1, keepdims=True)
    e = np.exp(-(s - shift) / temperature)
    e[~finite] = 0.0
    return e / e.sum(axis=1, keepdims=True)


def _check_distances(distances: np.ndarray, exclude_self: bool) -> np.ndarray:
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"distances must be a 2-D matrix [targets, sources], got shape {d.shape}")
    if exclude_self and d.shape[0] != d.shape[1]:
        raise ValueError(f"leave-one-out coefficients need a square distance matrix, got shape {d.shape}")
    if exclude_self and d.shape[0] < 2:
        raise ValueError("leave-one-out coefficients need at least 2 bank tasks")
    return d


def exclude_diagonal(scores: np.ndarray) -> np.ndarray:
    """A copy of square `scores` with the diagonal at +∞ (each task excluded from its own row)."""
    out = np.array(scores, dtype=np.float64, copy=True)
    np.fill_diagonal(out, np.inf)
    return out


def row_zscore(distances: np.ndarray) -> np.ndarray:
    """z_ij = (d_ij − mean_i) / std_i over each whole row (population std); std 0 → z 0."""
    d = np.asarray(distances, dtype=np.float64)
    if not np.isfinite(d).all():
        i, j = np.argwhere(~np.isfinite(d))[0]
        raise ValueError(f"cannot standardise a row holding a non-finite distance (row {i}, column {j})")
    mean = d.mean(axis=1, keepdims=True)
    std = d.std(axis=1, keepdims=True)
    safe = np.where(std > 0, std, 1.0)
    return np.where(std > 0, (d - mean) / safe, 0.0)


def sparsify_top_k(coefficients: np.ndarray, k: int | None) -> np.ndarray:
    """Keep the k largest weights of each row (ties: lower column first), renormalise to sum 1."""
    c = np.asarray(coefficients, dtype=np.float64)
    if k is None or k >= c.shape[1]:
        return c
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    order = np.argsort(-c, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(c)
    rows = np.arange(c.shape[0])[:, None]
    out[rows, order] = c[rows, order]
    return out / out.sum(axis=1, keepdims=True)


def attentional_coefficients(
    distances: np.ndarray, *, exclude_self: bool = True, temperature: float = 1.0, top_k: int | None = None
) -> np.ndarray:
    """C_i = softmin_T(d_i·) (self at +∞ when `exclude_self`). [M, N] → [M, N]."""
    d = _check_distances(distances, exclude_self)
    scores = exclude_diagonal(d) if exclude_self else d
    return sparsify_top_k(softmin(scores, temperature), top_k)


def normalized_coefficients(
    distances: np.ndarray, *, exclude_self: bool = True, temperature: float = 1.0, top_k: int | None = None
) -> np.ndarray:
    """C_i = softmin_T(z_i·) with z the row z-score of d (self entry in the statistics, then +∞)."""
    d = _check_distances(distances, exclude_self)
    z = row_zscore(d)
    scores = exclude_diagonal(z) if exclude_self else z
    return sparsify_top_k(softmin(scores, temperature), top_k)


def neural_coefficients(
    distances: np.ndarray,
    scalar_fn: Callable[[np.ndarray], np.ndarray],
    *,
    exclude_self: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> np.ndarray:
    """C_i = softmin_T(g(z_i·)) where `scalar_fn` is g applied elementwise to the z-scores."""
    d = _check_distances(distances, exclude_self)
    g = np.asarray(scalar_fn(row_zscore(d)), dtype=np.float64)
    if g.shape != d.shape:
        raise ValueError(f"scalar_fn returned shape {g.shape}, expected {d.shape}")
    scores = exclude_diagonal(g) if exclude_self else g
    return sparsify_top_k(softmin(scores, temperature), top_k)


def model_coefficients(
    model: str,
    distances: np.ndarray,
    *,
    scalar_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    exclude_self: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> np.ndarray:
    """C [M, N] of coefficient model `model` (one of `COEFFICIENT_MODELS`), checked.

    The one dispatch from a model's name to its coefficients, for the synthesis stage (leave-one-out
    rows), `predict` and the few-shot query candidates (query rows, `exclude_self=False`);
    `scalar_fn` is the trained MLP g that `neural` needs. `ValueError` for an unknown model.
    """
    common = dict(exclude_self=exclude_self, temperature=temperature, top_k=top_k)
    if model == "attentional":
        c = attentional_coefficients(distances, **common)
    elif model == "normalized":
        c = normalized_coefficients(distances, **common)
    elif model == "neural":
        if scalar_fn is None:
            raise ValueError("the neural coefficient model needs its trained scalar MLP (scalar_fn)")
        c = neural_coefficients(distances, scalar_fn, **common)
    else:
        raise ValueError(f"unknown coefficient model {model!r}; one of {', '.join(COEFFICIENT_MODELS)}")
    check_coefficients(c, exclude_self=exclude_self)
    return c


def uniform_coefficients(n_tasks: int) -> np.ndarray:
    """C [N, N] with every other task weighted 1 / (N − 1) and the task itself 0."""
    if n_tasks < 2:
        raise ValueError("leave-one-out coefficients need at least 2 bank tasks")
    c = np.full((n_tasks, n_tasks), 1.0 / (n_tasks - 1))
    np.fill_diagonal(c, 0.0)
    return c


def nearest_coefficients(distances: np.ndarray) -> np.ndarray:
    """C [N, N]: all weight on each task's closest other task (ties: the lower column)."""
    d = _check_distances(distances, exclude_self=True)
    if np.isnan(d).any():
        i, j = np.argwhere(np.isnan(d))[0]
        raise ValueError(f"distance matrix holds NaN (first at row {i}, column {j})")
    nearest = np.argmin(exclude_diagonal(d), axis=1)
    c = np.zeros_like(d)
    c[np.arange(d.shape[0]), nearest] = 1.0
    return c


def check_coefficients(coefficients: np.ndarray, exclude_self: bool = True, atol: float = 1e-9) -> None:
    """Raise `ValueError` unless C is finite, non-negative, rows sum to 1 and (LOO) self weight 0."""
    c = np.asarray(coefficients)
    if not np.isfinite(c).all():
        raise ValueError("coefficients hold non-finite values")
    if (c < 0).any():
        raise ValueError("coefficients hold negative values")
    sums = c.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > atol)
    if bad.size:
        raise ValueError(f"row {bad[0]} of the coefficients sums to {sums[bad[0]]!r}, not 1")
    if exclude_self and np.diagonal(c).any():
        raise ValueError("a task has non-zero weight in its own leave-one-out coefficients")
