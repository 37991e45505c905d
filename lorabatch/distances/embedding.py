"""Distances between datasets represented by their example embeddings E_i [n_i, d] (beyond paper
mode), with POT for optimal transport. Every value is symmetric and 0 on identical inputs.

OT_EMD     exact earth mover's distance (POT `ot.emd2`) between uniform empirical measures on
           seeded subsamples of at most `ot_sample_size` rows, ground cost ‖x − y‖₂ (so W1).
OT_SLICED  sliced Wasserstein-2 (POT `ot.sliced_wasserstein_distance`) with K seeded random
           directions shared by the whole bank: SW = (1/K Σ_k W2²(θ_k#μ, θ_k#ν))^½; the
           projections of every dataset are computed once, each pair costs K 1-D transports.
MMD_RBF    biased MMD² with k(x, y) = exp(−‖x − y‖² / (2σ²)); ‖x − y‖² = ‖x‖² + ‖y‖² − 2x·y
           in float64 (embeddings are float32, so the expansion loses nothing that matters),
           clamped at 0. Self terms are computed once per dataset, cross terms per pair.
Pairs are computed one at a time inside a block (sizes differ between datasets); the cost of a
pair is O(n² d) (EMD: network simplex on n × n), not the paper metrics' O(V).
"""

from __future__ import annotations

import hashlib

import numpy as np

from lorabatch.distances.metric import Metric
from lorabatch.distances.registry import DistancesError


def _content_seed(seed: int, array: np.ndarray) -> np.random.Generator:
    content = int(hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16], 16)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), content]))


def ot_subsample(emb: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most `size` rows of `emb`, chosen without replacement, seeded by seed and content."""
    emb = np.asarray(emb, dtype=np.float64)
    if len(emb) <= size:
        return emb
    pick = np.sort(_content_seed(seed, emb).choice(len(emb), size=size, replace=False))
    return emb[pick]


def _check_embeddings(features, name: str) -> list[np.ndarray]:

    if features.embeddings is None:
        raise DistancesError(f"metric {name} needs embeddings: compute features with features.embedding.enabled")
    dims = {e.shape[1] for e in features.embeddings if e.ndim == 2 and len(e)}
    empty = [n for n, e in zip(features.names, features.embeddings) if e.ndim != 2 or not len(e)]
    if empty:
        raise DistancesError(f"metric {name}: dataset {empty[0]} has no embeddings")
    if len(dims) > 1:
        raise DistancesError(f"metric {name}: embeddings of different widths {sorted(dims)}")
    return [np.asarray(e, dtype=np.float64) for e in features.embeddings]


class ExactOT(Metric):
    name, version, symmetric, representation = "OT_EMD", "1", True, "embeddings"
    default_block = 16

    def estimate_seconds(self, n_pairs, features):
        return n_pairs * 0.02

    definition = "exact EMD (POT ot.emd2), Euclidean cost, uniform weights, seeded subsamples"

    def params(self):
        return {"ot_sample_size": self.config.ot_sample_size, "ot_seed": self.config.ot_seed}

    def prepare(self, features):
        embs = _check_embeddings(features, self.name)
        return {"x": [ot_subsample(e, self.config.ot_sample_size, self.config.ot_seed) for e in embs]}

    def block(self, rows, cols):
        import ot

        out = np.empty((len(rows["x"]), len(cols["x"])))
        for i, x in enumerate(rows["x"]):
            for j, y in enumerate(cols["x"]):
                a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
                out[i, j] = ot.emd2(a, b, ot.dist(x, y, metric="euclidean"))
        return np.maximum(out, 0.0)


def sliced_projections(dim: int, n_projections: int, seed: int) -> np.ndarray:
    """Θ [d, K]: K random unit directions (POT's get_random_projections, seeded)."""
    from ot.sliced import get_random_projections

    return get_random_projections(dim, n_projections, seed=np.random.RandomState(seed))


class SlicedOT(Metric):
    name, version, symmetric, representation = "OT_SLICED", "1", True, "embeddings"
    default_block = 16

    def estimate_seconds(self, n_pairs, features):
        return n_pairs * 0.002

    definition = "sliced Wasserstein-2 (POT), uniform weights, seeded random directions shared by the bank"

    def params(self):
        return {"sliced_projections": self.config.sliced_projections, "sliced_seed": self.config.sliced_seed}

    def prepare(self, features):
        embs = _check_embeddings(features, self.name)
        theta = sliced_projections(embs[0].shape[1], self.config.sliced_projections, self.config.sliced_seed)
        return {"proj": [e @ theta for e in embs]}

    def block(self, rows, cols):
        from ot.lp import wasserstein_1d

        out = np.empty((len(rows["proj"]), len(cols["proj"])))
        for i, x in enumerate(rows["proj"]):
            a = np.full(len(x), 1.0 / len(x))
            for j, y in enumerate(cols["proj"]):
                b = np.full(len(y), 1.0 / len(y))
                out[i, j] = np.sqrt(np.mean(wasserstein_1d(x, y, a, b, p=2)))
        return out


def rbf_mean_kernel(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """mean_{a, b} exp(−‖x_a − y_b‖² / (2σ²))."""
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return float(np.exp(-np.maximum(d2, 0.0) / (2.0 * bandwidth**2)).mean())


class RBFMMD(Metric):
    name, version, symmetric, representation = "MMD_RBF", "1", True, "embeddings"
    default_block = 16

    def estimate_seconds(self, n_pairs, features):
        return n_pairs * 0.002

    definition = "biased MMD² with the Gaussian kernel exp(-‖x−y‖²/(2σ²)) on example embeddings"

    def params(self):
        return {"rbf_bandwidth": self.config.rbf_bandwidth}

    def prepare(self, features):
        embs = _check_embeddings(features, self.name)
        sigma = self.config.rbf_bandwidth
        return {"x": embs, "self": np.array([rbf_mean_kernel(e, e, sigma) for e in embs])}

    def block(self, rows, cols):
        sigma = self.config.rbf_bandwidth
        cross = np.array([[rbf_mean_kernel(x, y, sigma) for y in cols["x"]] for x in rows["x"]])
        cross = cross.reshape(len(rows["x"]), len(cols["x"]))
        return np.maximum(rows["self"][:, None] + cols["self"][None, :] - 2.0 * cross, 0.0)
