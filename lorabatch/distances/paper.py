"""The paper's four distances on token-id features, exactly as arXiv 2507.01806's code defines
them (DESIGN.md "The method"), computed a block at a time with vectorized array operations.

N datasets, V = vocabulary size, c_i = token-id histogram of dataset i, L_i = Σ_v c_iv.
Smoothed densities (KL, JS): p_i = c_i / L_i + 1e-10 in every bin, *not* renormalised.

KL  D[i, j] = KL(p_i ‖ p_j) = Σ_v p_iv log(p_iv / p_jv)     (natural log; row i = the target)
    = a_i − (P logPᵀ)_ij  with a_i = Σ_v p_iv log p_iv: one matrix product per block.
JS  D[i, j] = ½ KL(p_i ‖ m) + ½ KL(p_j ‖ m),  m = ½ (p_i + p_j)
    = ½ a_i + ½ a_j − ½ Σ_v s log s + ½ ln2 (Σ_v p_iv + Σ_v p_jv),  s = p_i + p_j;
    only Σ_v s log s is pairwise: one log per pair and bin of the target's support, plus one
    matrix product per block for the bins off it (`slogs.support_slogs`).
WD  Wasserstein-1 between the raw token-id samples (scipy.stats.wasserstein_distance): on the
    integer support, W1 = Σ_{k=0}^{V-2} |F_i(k) − F_j(k)|, F_i = cumsum(c_i) / L_i — an L1
    distance between CDF rows (scipy's C cityblock kernel per block).
MMD biased MMD² of the seeded samples X_i (S_i token ids each) under the multiscale kernel
    k(x, y) = Σ_{a ∈ {0.2, 0.5, 0.9, 1.3}} a² / (a² + (x − y)²):
        MMD²(X, Y) = mean k(X, X) + mean k(Y, Y) − 2 mean k(X, Y)
    k depends only on the integer lag δ = x − y, whose square is formed exactly in float64
    (the authors' code expands (x−y)² = x² + y² − 2xy in float32, which cancels on token ids
    up to 32 000 — e.g. (31000−31001)² evaluates to 128 — so its numbers can differ from these).
    With h_i the sample's histogram, Σ_{x∈X_i, y∈X_j} k(x−y) = h_jᵀ z_i, z_i = h_i ∗ k (a
    convolution over lags −(V−1)..V−1, by FFT in float64: ~1e-13 relative to the kernel sums),
    so a block is one gather z_R[:, U] over the ids U its column samples use and one matrix
    product with their counts. The value is MMD² (not its root), as the authors' code returns.
Values below 0 by rounding (KL, MMD of near-identical inputs) are clamped to 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist, pdist, squareform

from lorabatch.distances.metric import Metric, rowwise
from lorabatch.distances.slogs import SMOOTHING, smoothed_log_terms, support_slogs

MULTISCALE = (0.2, 0.5, 0.9, 1.3)


def smoothed_densities(counts: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """p [N, V] = counts / L + 1e-10 (float64), into `out` when given."""
    counts = np.asarray(counts)
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    p = np.divide(counts, totals, out=out)
    p += SMOOTHING
    return p


class KLDivergence(Metric):
    name, version, symmetric, representation = "KL", "1", False, "tokens"
    default_block, seconds_per_pair_bin = 128, 0.1e-9
    definition = "KL(p_target || p_source), p = counts/L + 1e-10 (no renormalisation), natural log"

    def prepare(self, features) -> dict:
        n, vocab = features.counts.shape
        p, logp, plogp = np.empty((n, vocab)), np.empty((n, vocab)), np.empty(n)

        def fill(rows):
            smoothed_densities(features.counts[rows], out=p[rows])
            np.log(p[rows], out=logp[rows])
            plogp[rows] = np.einsum("nv,nv->n", p[rows], logp[rows])

        rowwise(fill, n, self.workers)
        return {"p": p, "logp": logp, "plogp": plogp}

    def block(self, rows, cols):
        d = rows["plogp"][:, None] - rows["p"] @ cols["logp"].T
        return np.maximum(d, 0.0)


class JSDivergence(Metric):
    name, version, symmetric, representation = "JS", "1", True, "tokens"
    default_block, seconds_per_pair_bin = 64, 1.0e-9
    definition = "½KL(p||m) + ½KL(q||m), m = (p+q)/2, p = counts/L + 1e-10, natural log"

    def prepare(self, features) -> dict:
        n, vocab = features.counts.shape
        p, g = np.empty((n, vocab)), np.empty((n, vocab))
        plogp, psum = np.empty(n), np.empty(n)

        def fill(rows):
            smoothed_densities(features.counts[rows], out=p[rows])
            plogp[rows] = smoothed_log_terms(p[rows], out=g[rows])
            psum[rows] = p[rows].sum(axis=1)

        rowwise(fill, n, self.workers)
        return {"p": p, "g": g, "gsum": g.sum(axis=1), "plogp": plogp, "psum": psum}

    def block(self, rows, cols):
        return self._js(rows, cols, support_slogs(rows["p"], cols["p"], cols["g"], cols["gsum"]))

    def block_upper(self, rows):
        return self._js(rows, rows, support_slogs(rows["p"], rows["p"], rows["g"], rows["gsum"], upper=True))

    @staticmethod
    def _js(rows, cols, slogs):
        half = 0.5 * (rows["plogp"][:, None] + cols["plogp"][None, :])
        mass = 0.5 * math.log(2.0) * (rows["psum"][:, None] + cols["psum"][None, :])
        return np.maximum(half - 0.5 * slogs + mass, 0.0)


class Wasserstein1D(Metric):
    name, version, symmetric, representation = "WD", "1", True, "tokens"
    default_block, seconds_per_pair_bin = 64, 0.4e-9
    definition = "Wasserstein-1 between the token-id samples (scipy.stats.wasserstein_distance), exact via CDFs"

    def prepare(self, features) -> dict:
        n, vocab = features.counts.shape
        cdf = np.empty((n, vocab - 1))

        def fill(rows):
            counts = features.counts[rows]
            np.cumsum(counts[:, :-1], axis=1, out=cdf[rows])
            cdf[rows] /= counts.sum(axis=1, keepdims=True).astype(np.float64)

        rowwise(fill, n, self.workers)
        return {"cdf": cdf}

    def block(self, rows, cols):
        return cdist(rows["cdf"], cols["cdf"], "cityblock")

    def block_upper(self, rows):
        return squareform(pdist(rows["cdf"], "cityblock"))  # each unordered pair once


def multiscale_kernel(lags: np.ndarray) -> np.ndarray:
    """k(δ) = Σ_a a² / (a² + δ²) on integer lags, δ² exact in float64."""
    d2 = np.asarray(lags, dtype=np.float64) ** 2
    return sum(a * a / (a * a + d2) for a in MULTISCALE)


def kernel_sums(samples: np.ndarray, vocab_size: int, workers: int = 1) -> np.ndarray:
    """z [N, V]: z_i[y] = Σ_{x ∈ X_i} k(x − y), by FFT convolution of the sample histograms."""
    from scipy import fft

    n = samples.shape[0]
    size = fft.next_fast_len(2 * vocab_size - 1, real=True)
    lags = np.arange(-(vocab_size - 1), vocab_size)
    kernel_hat = fft.rfft(multiscale_kernel(lags), size)
    z = np.empty((n, vocab_size))

    def fill(rows):  # 16 rows at a time bound the complex temporaries
        part = samples[rows]
        flat = (np.arange(len(part))[:, None] * vocab_size + part).ravel()
        hist = np.bincount(flat, minlength=len(part) * vocab_size).reshape(len(part), vocab_size)
        conv = fft.irfft(fft.rfft(hist.astype(np.float64), size, axis=1) * kernel_hat, size, axis=1)
        z[rows] = conv[:, vocab_size - 1 : 2 * vocab_size - 1]

    rowwise(fill, n, workers, rows_per_task=16)
    return z


class MultiscaleMMD(Metric):
    name, version, symmetric, representation = "MMD", "1", True, "tokens"
    default_block = 128

    def estimate_seconds(self, n_pairs, features):
        return n_pairs * features.samples.shape[1] * 0.5e-9 + len(features) * 2e-3

    definition = "biased MMD² of seeded token-id samples, k = Σ_{a∈{0.2,0.5,0.9,1.3}} a²/(a²+(x−y)²), (x−y)² exact"

    def prepare(self, features) -> dict:
        samples = np.asarray(features.samples, dtype=np.int64)
        z = kernel_sums(samples, features.vocab_size, self.workers)
        ids, weights = zip(*(np.unique(x, return_counts=True) for x in samples)) if len(samples) else ((), ())
        size = samples.shape[1]
        self_term = np.array([z[i, u] @ w for i, (u, w) in enumerate(zip(ids, weights))]) / (size * size)
        return {
            "z": z,
            "ids": list(ids),
            "weights": [w.astype(np.float64) for w in weights],
            "self": self_term,
            "size": size,
        }

    def block(self, rows, cols):
        # Σ_{x ∈ X_r, y ∈ X_c} k(x − y) = Σ_y count_c(y) z_r[y] over the ids U the column samples
        # use: one gather z_R[:, U] and one product with the counts W [C, |U|]
        union, where = np.unique(np.concatenate(cols["ids"]), return_inverse=True)
        owner = np.repeat(np.arange(len(cols["ids"])), [len(u) for u in cols["ids"]])
        w = np.zeros((len(cols["ids"]), len(union)))
        w[owner, where] = np.concatenate(cols["weights"])
        cross = rows["z"][:, union] @ w.T
        cross /= rows["size"] * cols["size"]
        d = rows["self"][:, None] + cols["self"][None, :] - 2.0 * cross
        return np.maximum(d, 0.0)
