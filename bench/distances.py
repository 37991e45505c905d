"""Distances benchmark: lorabatch's blocked metrics against the per-pair way, in one run.

    python -m bench.distances                 # N=200 ratios, then N=502 end to end (a few minutes)
    python -m bench.distances --quick         # small sizes, to check the script works

Synthetic banks: N datasets of ~1.5 M tokens (uniform in [1.2 M, 1.8 M]) over a vocabulary of
32 000. Each histogram is a multinomial draw from a Zipf-like law whose ranks are moved by a
seeded per-dataset perturbation of a shared order (datasets share frequent tokens, as real
ones do). Two laws, both reported:
  realistic  p(rank) ∝ (rank + 2.7)^-1.1 · exp(-rank / 4000): ~37 % of the vocabulary is
             non-zero per histogram, ~4 200 bins hold 1 or 2 tokens, the top token ~7 %. Real
             text measured for this: 1.5 M Mistral-7B tokens of English docs, licences and
             Python sources use 35 % of the 32 000 tokens (4 214 bins with 1–2 tokens, top 4.8 %);
             a single task's dataset is narrower still.
  dense      p(rank) ∝ (rank + 2.7)^-1.1: ~99 % non-zero, a worst case no real dataset reaches.
Features are written to a run directory with the features stage's cache layout and every
lorabatch timing starts from that cache.

Per-pair way (what a loop over pairs costs, one core; the functions of reference.py):
scipy.stats.wasserstein_distance on the raw (shuffled) token ids for WD, per-pair kernel matrices
for MMD (1 000 samples), per-pair numpy on the smoothed densities for KL / JS. Each dataset's
input (raw ids, densities, sample) is built once beforehand and not timed, so the baseline is
the pair function alone. Its median time over a sample of pairs is extrapolated to every pair
the matrix needs: N(N-1)/2 for the symmetric WD, JS, MMD, N(N-1) for KL.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np

from bench.machine import machine_line
from lorabatch.distances import DistancesConfig, get_metric
from lorabatch.distances.matrix import compute_distance_matrix, use_ray
from lorabatch.features import FeatureSet, sample_token_ids
from lorabatch.features.store import load_bank_features, save_features
from lorabatch.layout import RunLayout
from tests.helpers import distance_reference as reference

METRICS = ("KL", "JS", "WD", "MMD")
LAWS = {"realistic": 4000.0, "dense": None}  # exponential cut-off of the Zipf law (rank scale)


def synthetic_features(
    n: int, vocab: int, tokens: float, seed: int = 0, sample_size: int = 1000, law: str = "realistic"
) -> FeatureSet:
    rng = np.random.default_rng(seed)
    base = np.log(rng.permutation(vocab) + 1.0)  # a shared order of the vocabulary
    ranks = np.arange(vocab)
    zipf = (ranks + 2.7) ** -1.1
    if LAWS[law] is not None:
        zipf *= np.exp(-ranks / LAWS[law])
    zipf /= zipf.sum()
    counts = np.empty((n, vocab), dtype=np.int64)
    for i in range(n):
        order = np.argsort(base + rng.normal(0.0, 1.5, vocab))  # dataset-specific ranks
        weights = np.empty(vocab)
        weights[order] = zipf
        counts[i] = rng.multinomial(int(rng.uniform(0.8, 1.2) * tokens), weights)
    samples = np.stack([sample_token_ids(c, sample_size, seed) for c in counts])
    names = [f"task{i + 1}" for i in range(n)]
    return FeatureSet(
        names=names,
        counts=counts,
        samples=samples,
        n_examples=np.full(n, 5000),
        tokenizer_sha256="synthetic",
        keys=[f"synthetic-{law}-{seed}-{i}" for i in range(n)],
    )


PAIR_FUNCTIONS = {"KL": reference.kl_pair, "JS": reference.js_pair, "WD": reference.wd_pair, "MMD": reference.mmd_pair}


def pair_inputs(metric: str, features: FeatureSet, datasets, rng) -> dict:
    """What the per-pair function takes, per dataset, built once and not timed: the smoothed
    densities (KL, JS), the raw token ids in document (shuffled) order (WD), the sample (MMD)."""
    if metric == "WD":
        return {i: rng.permutation(reference.expand(features.counts[i])) for i in datasets}
    if metric == "MMD":
        return {i: features.samples[i] for i in datasets}
    return {i: reference.density(features.counts[i]) for i in datasets}


def time_baseline(metric: str, pairs: list[tuple[int, int]], inputs: dict) -> tuple[float, float, list[float]]:
    """(median wall seconds per pair, median CPU seconds per pair, values); the medians resist what
    other work on a shared machine adds."""
    values, walls, cpus = [], [], []
    pair = PAIR_FUNCTIONS[metric]
    for i, j in pairs:
        t0, c0 = time.perf_counter(), time.thread_time()
        values.append(pair(inputs[i], inputs[j]))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return float(np.median(walls)), float(np.median(cpus)), values


def weighted_wd_per_pair(features: FeatureSet, rng, n_pairs: int) -> float:
    """Median seconds of scipy.stats.wasserstein_distance(support, support, counts_i, counts_j)."""
    from scipy.stats import wasserstein_distance

    support = np.arange(features.vocab_size)
    times = []
    for _ in range(n_pairs):
        i, j = rng.choice(len(features), 2, replace=False)
        t0 = time.perf_counter()
        wasserstein_distance(support, support, features.counts[i], features.counts[j])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def pairs_needed(metric: str, n: int) -> int:
    return n * (n - 1) if metric == "KL" else n * (n - 1) // 2


def executor_of(features: FeatureSet, metric: str, config: DistancesConfig) -> str:
    m = get_metric(metric, config)
    n = len(features)
    pairs = n * n if not m.symmetric else n * (n + 1) // 2
    return "ray" if use_ray(config, m.estimate_seconds(pairs, features)) else "threads"


STEPS = ("load", "identities", "prepare", "blocks", "assemble", "write")


def timed_matrix(run: str, metric: str, config: DistancesConfig) -> tuple[float, float, dict, np.ndarray]:
    """(wall seconds, CPU seconds of every thread, seconds per step, D): loading the cached
    features + compute_distance_matrix."""
    for old in RunLayout(run).distances_dir.glob("*.parquet"):
        old.unlink()  # time a full computation, not the up-to-date check
    steps: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    bank = load_bank_features(run)
    steps["load"] = time.perf_counter() - t0
    _, d = compute_distance_matrix(run, metric, config, features=bank, progress=False, timings=steps)
    return time.perf_counter() - t0, time.process_time() - c0, steps, d


def median_run(run: str, metric: str, config: DistancesConfig, repeat: int) -> tuple[float, float, dict, np.ndarray]:
    """The run of median wall time, with the median CPU time of all runs."""
    runs = [timed_matrix(run, metric, config) for _ in range(repeat)]
    k = int(np.argsort([r[0] for r in runs])[len(runs) // 2])
    return runs[k][0], float(np.median([r[1] for r in runs])), runs[k][2], runs[k][3]


def steps_line(steps: dict) -> str:
    return " ".join(f"{k} {steps.get(k, 0.0):.3f}" for k in STEPS)


def ratio_table(args, law: str, config: DistancesConfig, sampled: dict) -> None:
    goals = {"KL": 20, "JS": 20, "WD": 1000, "MMD": 1000}
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        features = synthetic_features(args.n, args.vocab, args.tokens, law=law)
        save_features(run, features)
        print(
            f"\n[{law}] N={args.n}: generated and cached features in {time.perf_counter() - t0:.1f}s "
            f"(non-zero bins per histogram: {np.mean((features.counts > 0).sum(1)) / args.vocab:.0%})"
        )
        rng = np.random.default_rng(1)
        print(
            f"{'metric':<6} {'baseline/pair':>14} {'pairs timed':>11} {'pairs needed':>12} {'baseline (extrap.)':>19} "
            f"{'lorabatch':>10} {'ratio':>9} {'goal':>6} {'CPU ratio':>9} {'max rel diff':>12}  executor"
        )
        where, walls = {}, {}
        for metric in METRICS:
            pairs = [tuple(rng.choice(args.n, 2, replace=False)) for _ in range(sampled[metric])]
            inputs = pair_inputs(metric, features, sorted({k for p in pairs for k in p}), rng)
            per_pair, per_pair_cpu, values = time_baseline(metric, pairs, inputs)
            baseline_s = per_pair * pairs_needed(metric, args.n)
            ours, ours_cpu, where[metric], d = median_run(run, metric, config, args.repeat)
            rel = max(abs(d[i, j] - v) / abs(v) for (i, j), v in zip(pairs, values))
            cpu_ratio = per_pair_cpu * pairs_needed(metric, args.n) / ours_cpu
            walls[metric] = ours
            print(
                f"{metric:<6} {per_pair * 1e3:>11.3f} ms {len(pairs):>11} {pairs_needed(metric, args.n):>12} "
                f"{baseline_s:>17.1f} s {ours:>8.3f} s {baseline_s / ours:>8.0f}x {goals[metric]:>5}x {cpu_ratio:>8.0f}x "
                f"{rel:>12.1e}  {executor_of(features, metric, config)}"
            )
        print(
            f"lorabatch = median of {args.repeat} runs of: loading the cached features + all blocks + writing the "
            f"Parquet (executor 'auto': Ray Data from {config.ray_min_work_s:.0f} estimated core-seconds, else "
            f"{args.workers} threads of this process); baseline = median single-core per-pair time × pairs needed; "
            "ratio = wall over wall; CPU ratio = CPU seconds over CPU seconds (all threads): the work saved, "
            "whatever else runs on the machine"
        )
        weighted = weighted_wd_per_pair(features, rng, sampled["MMD"])
        print(
            f"WD against a smarter per-pair loop, scipy with the histograms as weights: {weighted * 1e3:.2f} ms/pair, "
            f"{weighted * pairs_needed('WD', args.n):.1f} s for all pairs, ratio {weighted * pairs_needed('WD', args.n) / walls['WD']:.0f}x"
        )
        print("where the time goes (s):")
        for metric in METRICS:
            print(f"  {metric:<4} {steps_line(where[metric])}")


def end_to_end(args, law: str, config: DistancesConfig, executors: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as run:
        features = synthetic_features(args.n_full, args.vocab, args.tokens, seed=2, law=law)
        save_features(run, features)
        del features
        print(f"\n[{law}] N={args.n_full}: all 4 paper metrics from cached features, {args.workers} workers")
        for executor in executors:
            cfg = config.model_copy(update={"executor": executor})
            t_all = time.perf_counter()
            t0 = time.perf_counter()
            bank = load_bank_features(run)
            load_s = time.perf_counter() - t0
            walls, where = {}, {}
            for metric in METRICS:
                for old in RunLayout(run).distances_dir.glob("*.parquet"):
                    old.unlink()
                where[metric] = {}
                t0 = time.perf_counter()
                compute_distance_matrix(run, metric, cfg, features=bank, progress=False, timings=where[metric])
                walls[metric] = time.perf_counter() - t0
            total = time.perf_counter() - t_all
            label = "auto (threads below ray_min_work_s)" if executor == "auto" else "every metric on Ray Data"
            print(
                f"  executor {label}: total {total:.1f}s (goal < 60 s) = load {load_s:.2f}s + "
                + ", ".join(f"{m} {walls[m]:.2f}s" for m in METRICS)
            )
            for metric in METRICS:
                print(f"    {metric:<4} {steps_line(where[metric])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="datasets for the ratio table")
    ap.add_argument("--n-full", type=int, default=502, help="datasets for the end-to-end run (0: skip)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tokens", type=float, default=1.5e6, help="mean tokens per dataset")
    ap.add_argument("--workers", type=int, default=2, help="block workers: threads, or Ray CPUs")
    ap.add_argument("--block-size", type=int, default=None, help="default: each metric's own")
    ap.add_argument("--laws", type=str, default="realistic,dense", help=f"synthetic banks, of {list(LAWS)}")
    ap.add_argument("--repeat", type=int, default=3, help="lorabatch runs per metric (the median is reported)")
    ap.add_argument("--pairs", type=str, default="KL=400,JS=200,WD=3,MMD=20", help="baseline pairs timed per metric")
    ap.add_argument("--no-ray", action="store_true", help="skip the N-full run with every metric on Ray Data")
    ap.add_argument("--quick", action="store_true", help="small sizes (checks the script, numbers meaningless)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_full, args.vocab, args.tokens, args.pairs = 24, 40, 4000, 1e5, "KL=20,JS=20,WD=2,MMD=5"
    sampled = {k: int(v) for k, v in (kv.split("=") for kv in args.pairs.split(","))}
    laws = args.laws.split(",")

    import ray
    import scipy

    print(f"machine: {machine_line(f'numpy {np.__version__}', f'scipy {scipy.__version__}')}")
    print(
        f"synthetic banks: V={args.vocab}, ~{args.tokens / 1e6:.2f} M tokens per dataset, MMD samples of 1000; "
        f"block {args.block_size or 'per metric'}; {args.workers} workers"
    )
    config = DistancesConfig(block_size=args.block_size, num_workers=args.workers)
    for law in laws:
        ratio_table(args, law, config, sampled)
    if args.n_full:
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        print(f"\nray.init: {time.perf_counter() - t0:.1f}s (not counted)")
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        for k, law in enumerate(laws):
            end_to_end(args, law, config, ("auto",) if (k or args.no_ray) else ("auto", "ray"))
        ray.shutdown()
    print(
        "\nsteps: load = cached features from disk; identities = per-dataset feature hashes; prepare = per-dataset "
        "arrays (densities and logs, CDFs, FFT kernel sums); blocks = every block on the workers; assemble = "
        "mirroring and exact zeros; write = the long-format Parquet"
    )


if __name__ == "__main__":
    main()
