"""The paper's whole CPU stage at its real shape: bank → features → distances → coefficients →
every leave-one-out adapter of the 12 settings, measured stage by stage.

    python -m bench.paper_cpu_stage                       # N=502, ~1.5 M tokens each, hidden 4096 (long)
    python -m bench.paper_cpu_stage --tasks 12 --tokens 2e4 --hidden 256 --layers 2 \
        --mlp-width 64 --epochs 2                         # smoke run: checks the script, minutes

Built first under `--workdir` (not part of the comparison, timed separately):
  - a base-model directory with a Mistral-7B config.json (no weights: the CPU stage needs none)
    and a word-level tokenizer of V = 32,000 ids (4 specials + 31,996 words, BOS added);
  - N datasets in the bank's on-disk layout (<org>/task<N>_<slug>/data/{train,valid,test}-*.parquet),
    each a token stream of ~`--tokens` ids (uniform in [0.8, 1.2] × it) drawn from the realistic
    law of bench/distances.py (Zipf (rank + 2.7)^-1.1 · exp(-rank / 4000) with per-dataset ranks
    moved around a shared order), cut into train examples of ~`--example-tokens` tokens;
  - N adapters <org>/<base>-r16-task<N>/ (PEFT files, random bf16 lora_A / lora_B on q/k/v of
    `--layers` layers, k/v at a quarter of `--hidden`: 9,437,184 parameters at the paper's shape).
Then the project's own stages, as `lorabatch sweep` calls them, each measured:
  bank          the bank stage (`sweep.run.stage_bank`: resolve, inspect headers, hash the datasets and
                adapter files; weights read for the finite check only with `--validate-weights`)
  features      `features.compute_bank_features` (tokenizes every train split, Ray Data actors)
  distances     `distances.matrix.compute_distances`: KL, JS, WD, MMD
  coefficients  `synthesis.stage.compute_coefficients` per metric: attentional + normalized, then
                neural (the bank's Gram pass, then the paper-width MLP trained `--epochs` epochs)
  adapters      all N × 12 leave-one-out adapters (`synthesis.stage.synthesize_setting`) in the
                waves `sweep.jit.plan_waves` makes of `--wave` adapters; each wave is deleted once
                written, as the just-in-time sweep does after generating from it
Per stage: wall seconds; CPU seconds of the whole process tree (this process, Ray's GCS, raylet
and workers: psutil, sampled every `--sample-s` s, so a process that ends between samples loses
at most that much); peak RSS summed over the tree (Ray's shared object store counted once per
process that maps it: an upper bound); disk high-water mark of the workdir (sampled likewise).
The word-level tokenizer costs less per token than Mistral-7B's SentencePiece BPE, so the features
row is a lower bound of what the real tokenizer costs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.distances import LAWS  # the realistic law's exponential cut-off
from bench.machine import machine_line
from bench.synthesis import paper_shaped_shapes
from tests.helpers.synthetic_bank import (  # bench/synthesis.py: the adapter shapes of the paper's bank
    numbered_words,
    random_adapter_files,
    word_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]

ORG = "paperbench"
BASE = "mistral-7b-shaped"
METRICS = ("KL", "JS", "WD", "MMD")
AUTHORS_HOURS, AUTHORS_CORES = (6.0, 8.0), 20


# ---------------------------------------------------------------- measuring


class Meter:
    """Samples the process tree (CPU seconds, summed RSS) and the workdir's size in a thread."""

    def __init__(self, workdir: Path, interval: float):
        import psutil

        self.psutil, self.workdir, self.interval = psutil, workdir, interval
        self.root = psutil.Process(os.getpid())
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> last CPU seconds seen
        self.peak_rss = self.peak_disk = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _tree(self):
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return [self.root]

    def sample(self) -> None:
        rss = 0
        seen = {}
        for p in self._tree():
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    seen[(p.pid, p.create_time())] = t.user + t.system
                    rss += p.memory_info().rss
            except self.psutil.Error:
                continue
        disk = disk_usage(self.workdir)
        with self.lock:
            self.cpu.update(seen)
            self.peak_rss, self.peak_disk = max(self.peak_rss, rss), max(self.peak_disk, disk)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def start_stage(self) -> tuple[float, float]:
        self.sample()
        with self.lock:
            self.peak_rss = self.peak_disk = 0
            return time.perf_counter(), sum(self.cpu.values())

    def end_stage(self, started: tuple[float, float]) -> dict:
        wall = time.perf_counter() - started[0]
        self.sample()
        with self.lock:
            cpu = sum(self.cpu.values()) - started[1]
            return {"wall_s": wall, "cpu_s": cpu, "rss_gb": self.peak_rss / 2**30, "disk_gb": self.peak_disk / 2**30}

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def disk_usage(root: Path) -> int:
    """Bytes allocated under `root` (st_blocks, like du)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- the synthetic bank


def build_base(root: Path, vocab: int, hidden: int, layers: int) -> Path:
    """config.json of a Mistral-7B-shaped model (scaled by the flags) and a word-level tokenizer."""
    from transformers import MistralConfig

    out = root / ORG / BASE
    out.mkdir(parents=True)
    head_dim = min(128, hidden // 8)  # Mistral-7B: 32 heads of 128, 8 k/v heads (k/v width hidden / 4)
    heads = hidden // head_dim
    MistralConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 4,
        head_dim=head_dim,
        bos_token_id=1,
        eos_token_id=2,
    ).to_json_file(out / "config.json")
    word_tokenizer(out, numbered_words(vocab))
    return out


def build_datasets(
    root: Path, n: int, vocab: int, tokens: float, example_tokens: int, workers: int, seed: int = 0
) -> int:
    """N datasets of realistic token streams, `workers` processes; returns the tokens written."""
    from concurrent.futures import ProcessPoolExecutor

    args = [(root, i, vocab, tokens, example_tokens, seed) for i in range(n)]
    if workers <= 1:
        return sum(build_dataset(*a) for a in args)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(build_dataset, *zip(*args)))


def build_dataset(root: Path, i: int, vocab: int, tokens: float, example_tokens: int, seed: int) -> int:
    """Dataset i: a stream of ~`tokens` ids from the realistic law, its ranks moved around the
    shared order by a per-dataset perturbation; returns its number of tokens."""
    from lorabatch.bank.datasets import write_split

    words = numbered_words(vocab)
    v = len(words)
    base = np.log(np.random.default_rng(seed).permutation(v) + 1.0)  # the shared order of the vocabulary
    ranks = np.arange(v)
    zipf = (ranks + 2.7) ** -1.1 * np.exp(-ranks / LAWS["realistic"])
    zipf /= zipf.sum()
    rng = np.random.default_rng([seed, i])
    weights = np.empty(v)
    weights[np.argsort(base + rng.normal(0.0, 1.5, v))] = zipf  # dataset-specific ranks
    size = int(rng.uniform(0.8, 1.2) * tokens)
    ids = rng.choice(v, size=size, p=weights)
    per = max(2, example_tokens - 1)  # + BOS
    rows = []
    for k, s in enumerate(range(0, size, per)):
        chunk = [words[t] for t in ids[s : s + per]]
        cut = max(1, len(chunk) - max(1, len(chunk) // 30))  # ~3 % of an example is its answer
        rows.append(
            {
                "input": " ".join(chunk[:cut]) + " ",
                "output": [" ".join(chunk[cut:]) or chunk[-1]],
                "id": f"task{i + 1}-{k}",
            }
        )
    ds = root / ORG / f"task{i + 1}_synthetic_{i + 1}"
    write_split(ds, "train", rows)
    write_split(ds, "valid", rows[:2])
    write_split(ds, "test", rows[:2])
    return size


def build_adapters(root: Path, n: int, hidden: int, layers: int, rank: int, seed: int = 1) -> int:
    """N PEFT adapters with random bf16 weights; returns the parameters per adapter."""
    return random_adapter_files(
        [root / ORG / f"{BASE}-r{rank}-task{i + 1}" for i in range(n)],
        paper_shaped_shapes(hidden, layers, rank),
        rank=rank,
        base_model=f"{ORG}/{BASE}",
        dtype="BF16",
        seed=seed,
    )


# ---------------------------------------------------------------- the stages


def run_stages(args, run: Path, bank_root: Path, meter: Meter) -> dict[str, dict]:
    from lorabatch.config import parse_config
    from lorabatch.distances.matrix import compute_distances
    from lorabatch.distances.registry import features_config_for
    from lorabatch.features import compute_bank_features
    from lorabatch.raysession import ensure_ray
    from lorabatch.sweep.jit import plan_waves
    from lorabatch.sweep.run import stage_bank
    from lorabatch.synthesis.stage import adapter_dir, compute_coefficients, mixture_settings, synthesize_setting
    from lorabatch.synthesis.tensors import layout_from_manifest

    executor = "local" if args.local else "ray"
    config = parse_config(
        {
            "run_dir": str(run),
            "seed": 0,
            "ray": {"num_cpus": args.workers},
            "bank": {
                "source": "local",
                "root": str(bank_root),
                "base_model": f"{ORG}/{BASE}",
                "adapter_repo": f"{ORG}/{BASE}-r{args.rank}-task{{number}}",
                "dataset_repo": f"{ORG}/task{{number}}_{{slug}}",
                "validate_weights": args.validate_weights,
            },
            "features": {"executor": executor, "num_workers": args.workers},
            "distances": {
                "metrics": list(METRICS),
                "num_workers": args.workers,
                **({"executor": "local"} if args.local else {}),
            },
            "synthesis": {
                "controls": [],
                "executor": executor,
                "jit": True,
                "jit_wave": args.wave,
                "neural": {"hidden": args.mlp_width, "epochs": args.epochs, "eval_chunk": args.eval_chunk},
            },
        }
    )
    t0 = time.perf_counter()
    if not args.local:
        ensure_ray(None, args.workers)
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    print(f"ray start: {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
    rows: dict[str, dict] = {}

    def stage(name, fn):
        started = meter.start_stage()
        out = fn()
        rows[name] = meter.end_stage(started)
        r = rows[name]
        print(f"  {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s", flush=True)
        return out

    manifest = stage("bank (manifest, validation)", lambda: stage_bank(config, progress=False))
    feats = features_config_for(config.distances.metrics, config.features)
    stage("features", lambda: compute_bank_features(manifest, run, feats, progress=False))
    stage("distances (KL, JS, WD, MMD)", lambda: compute_distances(run, config.distances, progress=False))
    layout = layout_from_manifest(run)
    syn = config.synthesis

    def coefficients(models):
        cfg = syn.model_copy(update={"models": models})
        for metric in METRICS:
            compute_coefficients(run, metric, cfg, seed=config.seed, layout=layout, progress=False)

    stage("coefficients: attentional + normalized", lambda: coefficients(["attentional", "normalized"]))
    stage(f"coefficients: neural (Gram pass + {args.epochs} epochs × 4 metrics)", lambda: coefficients(["neural"]))
    settings = [s.name for s in mixture_settings(METRICS, syn)]
    waves = plan_waves({s: list(layout.task_ids) for s in settings}, syn.jit_wave)

    def adapters():
        for wave in waves:
            for setting in wave.settings:
                synthesize_setting(run, setting, syn, tasks=list(wave.tasks), layout=layout, progress=False)
            for setting in wave.settings:
                for task in wave.tasks:
                    shutil.rmtree(adapter_dir(run, setting, task), ignore_errors=True)

    stage(f"adapters: {len(settings)} settings × {layout.n_tasks} in {len(waves)} waves", adapters)
    return rows


def size(gb: float) -> str:
    return f"{gb:.2f} GB" if gb >= 1 else f"{gb * 1024:.0f} MB"


def print_table(setup: dict[str, dict], rows: dict[str, dict], args, n_params: int) -> None:
    print("\n| stage | wall | CPU-s | peak RSS (tree) | disk high-water (workdir) |")
    print("|---|---|---|---|---|")
    for name, r in {**{f"*setup: {k}*": v for k, v in setup.items()}, **rows}.items():
        print(f"| {name} | {r['wall_s']:.1f} s | {r['cpu_s']:.0f} | {size(r['rss_gb'])} | {size(r['disk_gb'])} |")
    wall = sum(r["wall_s"] for r in rows.values())
    cpu = sum(r["cpu_s"] for r in rows.values())
    print(
        f"| **CPU stage, total** | **{wall:.0f} s ({wall / 60:.1f} min)** | **{cpu:.0f}** | "
        f"{size(max(r['rss_gb'] for r in rows.values()))} | {size(max(r['disk_gb'] for r in rows.values()))} |"
    )
    held = wall / 3600 * args.workers
    lo, hi = (h * AUTHORS_CORES for h in AUTHORS_HOURS)
    print(
        f"\ncore-hours: {cpu / 3600:.3f} used (CPU-s / 3600), {held:.3f} held (wall × {args.workers} cores); "
        f"the authors: {AUTHORS_HOURS[0]:.0f}–{AUTHORS_HOURS[1]:.0f} h × {AUTHORS_CORES} cores = {lo:.0f}–{hi:.0f} "
        f"core-hours → {lo / held:.0f}–{hi / held:.0f}× fewer (held), {lo / max(cpu / 3600, 1e-9):.0f}–"
        f"{hi / max(cpu / 3600, 1e-9):.0f}× fewer (used); goal: whole stage ≤ 60 min on 2 cores, ≥ 60× fewer"
    )
    paper = (args.tasks, args.hidden, args.layers, args.tokens, args.epochs, args.mlp_width) == (
        502,
        4096,
        32,
        1.5e6,
        40,
        4000,
    )
    if not paper:
        print(
            f"NOT the paper's shape (N={args.tasks}, hidden {args.hidden}, {args.layers} layers, P={n_params:,}, "
            f"{args.tokens:.3g} tokens/dataset, MLP {args.mlp_width} × {args.epochs} epochs): the comparison "
            "above is meaningless at this scale"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=502, help="bank size N (paper: 502)")
    ap.add_argument("--tokens", type=float, default=1.5e6, help="mean tokens per dataset (paper-like: 1.5e6)")
    ap.add_argument("--vocab", type=int, default=32000, help="tokenizer vocabulary V (Mistral-7B: 32,000)")
    ap.add_argument("--example-tokens", type=int, default=300, help="tokens per train example")
    ap.add_argument("--hidden", type=int, default=4096, help="model width of the adapters (paper: 4096)")
    ap.add_argument("--layers", type=int, default=32, help="layers with q/k/v LoRAs (paper: 32)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (paper: 16)")
    ap.add_argument("--epochs", type=int, default=40, help="neural-model epochs (paper: 40)")
    ap.add_argument("--mlp-width", type=int, default=4000, help="neural-model hidden width (paper: 4000)")
    ap.add_argument(
        "--eval-chunk",
        type=int,
        default=1 << 14,
        help="synthesis.neural.eval_chunk: bounds the "
        "MLP's activations (0: all n² scalars at once, ≈ 20 GB at the paper's shape)",
    )
    ap.add_argument("--wave", type=int, default=512, help="synthesis.jit_wave: adapters per just-in-time wave")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="CPUs for Ray and the block workers")
    ap.add_argument("--local", action="store_true", help="every stage in this process (executor 'local'), no Ray")
    ap.add_argument(
        "--validate-weights",
        action="store_true",
        help="bank.validate_weights: read every tensor to check "
        "it is finite (off by default: work the paper's stage does not do)",
    )
    ap.add_argument("--sample-s", type=float, default=1.0, help="seconds between samples of CPU, RSS and disk")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where everything is written (default: a temp dir under /tmp)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lorabatch-paper-cpu-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    bank_root, run = workdir / "bank", workdir / "run"
    print(f"machine: {machine_line(torch_threads=True, ram=True)}")
    print(
        f"shape: N={args.tasks}, ~{args.tokens:.3g} tokens per dataset, V={args.vocab}, rank {args.rank}, "
        f"q/k/v × {args.layers} layers, hidden {args.hidden} (k/v {args.hidden // 4}), bf16; neural MLP "
        f"1→{args.mlp_width}→{args.mlp_width}→1 × {args.epochs} epochs; waves of {args.wave}; workdir {workdir}",
        flush=True,
    )
    meter = Meter(workdir, args.sample_s)
    try:
        setup = {}
        started = meter.start_stage()
        build_base(bank_root, args.vocab, args.hidden, args.layers)
        n_tokens = build_datasets(bank_root, args.tasks, args.vocab, args.tokens, args.example_tokens, args.workers)
        setup["datasets"] = meter.end_stage(started)
        started = meter.start_stage()
        n_params = build_adapters(bank_root, args.tasks, args.hidden, args.layers, args.rank)
        setup["adapters"] = meter.end_stage(started)
        print(
            f"setup: {n_tokens / 1e6:.1f} M tokens in {args.tasks} datasets ({setup['datasets']['wall_s']:.0f} s), "
            f"{args.tasks} adapters of {n_params:,} parameters ({setup['adapters']['wall_s']:.0f} s)",
            flush=True,
        )
        rows = run_stages(args, run, bank_root, meter)
        print_table(setup, rows, args, n_params)
    finally:
        meter.close()
        if not args.local:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
