"""Distances benchmark: lorabatch's blocked metrics against the per-pair way, in one run.

    python bench/distances.py                 # N=200 ratios, then N=502 end to end (a few minutes)
    python bench/distances.py --quick         # small sizes, to check the script works

Synthetic bank: N datasets of ~1.5 M tokens (uniform in [1.2 M, 1.8 M]) over a vocabulary of
32 000. Each histogram is a multinomial draw from a Zipf-like law p(rank) ∝ (rank + 2.7)^-1.1
whose ranks are moved by a seeded per-dataset perturbation of a shared order (datasets share
frequent tokens, as real ones do); ~99 % of the vocabulary is non-zero in each histogram (a
worst case: real datasets use far fewer tokens), so no kernel gets help from sparsity. Features are written to a run directory
with the features stage's cache layout and every lorabatch timing starts from that cache.

Per-pair way (what a loop over pairs costs, one core): scipy.stats.wasserstein_distance on the
raw (shuffled) token ids for WD, per-pair kernel matrices for MMD (1 000 samples), per-pair
numpy on the smoothed histograms for KL / JS. It is timed on a sample of pairs and extrapolated
to every pair the matrix needs: N(N-1)/2 for the symmetric WD, JS, MMD, N(N-1) for KL.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lorabatch.distances import DistancesConfig, get_metric, reference  # noqa: E402
from lorabatch.distances.matrix import block_grid, compute_distance_matrix, use_ray  # noqa: E402
from lorabatch.distances.metric import take  # noqa: E402
from lorabatch.features import FeatureSet, sample_token_ids  # noqa: E402
from lorabatch.features.store import load_bank_features, save_features  # noqa: E402

METRICS = ("KL", "JS", "WD", "MMD")


def synthetic_features(n: int, vocab: int, tokens: float, seed: int = 0, sample_size: int = 1000) -> FeatureSet:
    rng = np.random.default_rng(seed)
    base = np.log(rng.permutation(vocab) + 1.0)  # a shared order of the vocabulary
    zipf = (np.arange(vocab) + 2.7) ** -1.1
    zipf /= zipf.sum()
    counts = np.empty((n, vocab), dtype=np.int64)
    for i in range(n):
        order = np.argsort(base + rng.normal(0.0, 1.5, vocab))  # dataset-specific ranks
        weights = np.empty(vocab)
        weights[order] = zipf
        counts[i] = rng.multinomial(int(rng.uniform(0.8, 1.2) * tokens), weights)
    samples = np.stack([sample_token_ids(c, sample_size, seed) for c in counts])
    names = [f"task{i + 1}" for i in range(n)]
    return FeatureSet(names=names, counts=counts, samples=samples, n_examples=np.full(n, 5000),
                      tokenizer_sha256="synthetic", keys=[f"synthetic-{seed}-{i}" for i in range(n)])  # fmt: skip


def machine_info() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import scipy

    return (f"{platform.platform()} | {cpu} | {os.cpu_count()} logical CPUs | python {platform.python_version()} "
            f"| numpy {np.__version__} | scipy {scipy.__version__}")  # fmt: skip


def baseline_pair(metric: str, features: FeatureSet, i: int, j: int, raw: dict) -> float:
    if metric == "WD":
        return reference.wd_pair(raw[i], raw[j])
    if metric == "MMD":
        return reference.mmd_pair(features.samples[i], features.samples[j])
    p, q = reference.density(features.counts[i]), reference.density(features.counts[j])
    return reference.kl_pair(p, q) if metric == "KL" else reference.js_pair(p, q)


def time_baseline(metric: str, features: FeatureSet, pairs: list[tuple[int, int]], raw: dict) -> tuple[float, list[float]]:
    values = []
    t0 = time.perf_counter()
    for i, j in pairs:
        values.append(baseline_pair(metric, features, i, j, raw))
    return (time.perf_counter() - t0) / len(pairs), values


def pairs_needed(metric: str, n: int) -> int:
    return n * (n - 1) if metric == "KL" else n * (n - 1) // 2


def executor_of(features: FeatureSet, metric: str, config: DistancesConfig) -> str:
    m = get_metric(metric, config)
    n = len(features)
    pairs = n * n if not m.symmetric else n * (n + 1) // 2
    return "ray" if use_ray(config, m.estimate_seconds(pairs, features)) else f"threads"


def breakdown(features: FeatureSet, metric: str, block_size: int | None) -> tuple[float, float, int]:
    """(prepare seconds, seconds of one representative off-diagonal block, number of blocks), in-process."""
    m = get_metric(metric, DistancesConfig(block_size=block_size))
    block_size = block_size or m.default_block
    t0 = time.perf_counter()
    state = m.prepare(features)
    prep = time.perf_counter() - t0
    blocks = block_grid(np.arange(len(features)), np.arange(len(features)), block_size, m.symmetric)
    n = len(features)
    rows, cols = np.arange(min(block_size, n // 2)), np.arange(n // 2, min(n, n // 2 + block_size))
    t0 = time.perf_counter()
    m.block(take(state, rows), take(state, cols))
    return prep, time.perf_counter() - t0, len(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="datasets for the ratio table")
    ap.add_argument("--n-full", type=int, default=502, help="datasets for the end-to-end run (0: skip)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", type=float, default=1.5e6, help="mean tokens per dataset")
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs (block workers)")
    ap.add_argument("--block-size", type=int, default=None, help="default: each metric's own")
    ap.add_argument("--pairs", type=str, default="KL=200,JS=100,WD=3,MMD=20", help="baseline pairs timed per metric")
    ap.add_argument("--quick", action="store_true", help="small sizes (checks the script, numbers meaningless)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_full, args.vocab, args.tokens, args.pairs = 24, 40, 4000, 1e5, "KL=20,JS=20,WD=2,MMD=5"
    sampled = {k: int(v) for k, v in (kv.split("=") for kv in args.pairs.split(","))}

    import ray

    print(f"machine: {machine_info()}")
    print(f"synthetic bank: V={args.vocab}, ~{args.tokens / 1e6:.2f} M tokens per dataset, MMD samples of 1000; "
          f"block {args.block_size or 'per metric'}; {args.workers} workers")  # fmt: skip
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(f"ray.init: {time.perf_counter() - t0:.1f}s (not counted below)")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    config = DistancesConfig(block_size=args.block_size, num_workers=args.workers)

    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        features = synthetic_features(args.n, args.vocab, args.tokens)
        save_features(run, features)
        print(f"\nN={args.n}: generated and cached features in {time.perf_counter() - t0:.1f}s "
              f"(non-zero bins per histogram: {np.mean((features.counts > 0).sum(1)) / args.vocab:.0%})")  # fmt: skip
        rng = np.random.default_rng(1)
        print(f"{'metric':<6} {'baseline/pair':>14} {'pairs timed':>11} {'pairs needed':>12} {'baseline (extrap.)':>19} "
              f"{'lorabatch':>10} {'ratio':>9} {'max rel diff':>12}  executor")  # fmt: skip
        for metric in METRICS:
            pairs = [tuple(rng.choice(args.n, 2, replace=False)) for _ in range(sampled[metric])]
            raw = {}
            if metric == "WD":  # raw token ids in document (shuffled) order; building them is not timed
                for i in {k for p in pairs for k in p}:
                    raw[i] = rng.permutation(reference.expand(features.counts[i]))
            per_pair, values = time_baseline(metric, features, pairs, raw)
            baseline_s = per_pair * pairs_needed(metric, args.n)
            t0 = time.perf_counter()
            bank = load_bank_features(run)
            _, d = compute_distance_matrix(run, metric, config, features=bank, progress=False)
            ours = time.perf_counter() - t0
            rel = max(abs(d[i, j] - v) / abs(v) for (i, j), v in zip(pairs, values))
            print(f"{metric:<6} {per_pair * 1e3:>11.3f} ms {len(pairs):>11} {pairs_needed(metric, args.n):>12} "
                  f"{baseline_s:>17.1f} s {ours:>8.2f} s {baseline_s / ours:>8.0f}x {rel:>12.1e}  "
                  f"{executor_of(bank, metric, config)}")  # fmt: skip
        print("lorabatch time = loading the cached features + all blocks + writing the Parquet (executor 'auto': "
              f"Ray Data from {config.ray_min_work_s:.0f} estimated core-seconds, else threads of this process); "
              "baseline = single-core per-pair time × pairs needed")  # fmt: skip

    if args.n_full:
        with tempfile.TemporaryDirectory() as run:
            features = synthetic_features(args.n_full, args.vocab, args.tokens, seed=2)
            save_features(run, features)
            del features
            print(f"\nN={args.n_full}: all 4 paper metrics from cached features, {args.workers} workers")
            bank = None
            walls = {}
            for executor in ("auto", "ray"):
                cfg = config.model_copy(update={"executor": executor})
                t_all = time.perf_counter()
                bank = load_bank_features(run)
                load_s = time.perf_counter() - t_all
                for metric in METRICS:
                    for old in Path(run, "distances").glob("*.parquet"):
                        old.unlink()  # time a full computation, not the up-to-date check
                    t0 = time.perf_counter()
                    compute_distance_matrix(run, metric, cfg, features=bank, progress=False)
                    walls[executor, metric] = time.perf_counter() - t0
                walls[executor, "total"] = time.perf_counter() - t_all
                walls[executor, "load"] = load_s
            print(f"  load cached features: {walls['auto', 'load']:.2f}s")
            print(f"  {'metric':<6} {'auto':>14} {'Ray Data':>9} {'prepare':>8} {'1 block':>8} {'blocks':>6} {'blocks·core-s':>13}")
            for metric in METRICS:
                prep, one, nblocks = breakdown(bank, metric, args.block_size)
                auto = f"{walls['auto', metric]:.2f}s ({executor_of(bank, metric, config)})"
                print(f"  {metric:<6} {auto:>14} {walls['ray', metric]:>8.2f}s {prep:>7.2f}s {one:>7.3f}s {nblocks:>6} {one * nblocks:>12.1f}s")
            print(f"  total (load + 4 metrics + Parquet): {walls['auto', 'total']:.1f}s with executor 'auto', "
                  f"{walls['ray', 'total']:.1f}s with every metric on Ray Data  (goal < 60 s on 2 cores)")
            print("  prepare = per-dataset arrays on the driver (densities/logs, CDFs, FFT kernel sums); 1 block = "
                  "one off-diagonal block in-process, single core; blocks·core-s = its cost × blocks (the CPU work "
                  "the workers share); wall − prepare − blocks·core-s/workers ≈ scheduling, transfers and Parquet")
    ray.shutdown()


if __name__ == "__main__":
    main()
