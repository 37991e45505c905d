"""Straightforward per-pair implementations, following the paper's definitions literally.

They are the references the blocked metrics are tested against and the "per-pair way" the
benchmark times: one pair at a time, the way the authors' code computes a matrix.
"""

from __future__ import annotations

import numpy as np

from lorabatch.distances.paper import MULTISCALE, SMOOTHING


def density(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum() + SMOOTHING


def kl_pair(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p log(p / q) on smoothed densities."""
    return float(np.sum(p * np.log(p / q)))


def js_pair(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)
    return 0.5 * kl_pair(p, m) + 0.5 * kl_pair(q, m)


def wd_pair(u_ids: np.ndarray, v_ids: np.ndarray) -> float:
    """scipy.stats.wasserstein_distance on the raw token ids."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(u_ids, v_ids))


def expand(counts: np.ndarray) -> np.ndarray:
    """The token ids of a histogram, sorted (same empirical distribution as the dataset)."""
    return np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=np.int64))


def mmd_pair(x: np.ndarray, y: np.ndarray) -> float:
    """Biased MMD² with the multiscale kernel, per-pair kernel matrices, (x − y)² exact."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dxx = (x[:, None] - x[None, :]) ** 2
    dyy = (y[:, None] - y[None, :]) ** 2
    dxy = (x[:, None] - y[None, :]) ** 2
    xx = yy = xy = 0.0
    for a in MULTISCALE:
        xx = xx + a * a / (a * a + dxx)
        yy = yy + a * a / (a * a + dyy)
        xy = xy + a * a / (a * a + dxy)
    return float(xx.mean() + yy.mean() - 2.0 * xy.mean())


def mmd_pair_float32_expansion(x: np.ndarray, y: np.ndarray) -> float:
    """The authors' formulation: (x − y)² as x² + y² − 2xy in float32 (cancels on large ids)."""
    x = np.asarray(x, dtype=np.float32)[:, None]
    y = np.asarray(y, dtype=np.float32)[:, None]
    xx, yy, zz = x @ x.T, y @ y.T, x @ y.T
    rx, ry = np.diag(xx)[None, :], np.diag(yy)[None, :]
    dxx, dyy, dxy = rx.T + rx - 2 * xx, ry.T + ry - 2 * yy, rx.T + ry - 2 * zz
    total = np.zeros_like(xx)
    for a in MULTISCALE:
        a2 = np.float32(a * a)
        total = total + a2 / (a2 + dxx) + a2 / (a2 + dyy) - 2 * a2 / (a2 + dxy)
    return float(total.mean())


def ot_emd_pair(x: np.ndarray, y: np.ndarray) -> float:
    import ot

    a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    return float(ot.emd2(a, b, ot.dist(x, y, metric="euclidean")))


def sliced_pair(x: np.ndarray, y: np.ndarray, projections: np.ndarray) -> float:
    import ot

    return float(ot.sliced_wasserstein_distance(x, y, projections=projections, p=2))


def mmd_rbf_pair(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Biased MMD² with the Gaussian kernel, explicit loops over examples."""

    def mean_k(a, b):
        return np.mean([[np.exp(-np.sum((u - v) ** 2) / (2 * bandwidth**2)) for v in b] for u in a])

    return float(mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))
