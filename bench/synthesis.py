"""Benchmark of adapter synthesis: blocked streaming vs baselines, and the neural model's costs.

    python -m bench.synthesis                  # everything (~5 min and ~8 GB of temporary disk on 2 cores)
    python -m bench.synthesis --part batch     # all N leave-one-out adapters of one setting
    python -m bench.synthesis --part neural    # Gram vs explicit loss term; paper-size MLP epoch
    python -m bench.synthesis --part neural --device cuda --full-epoch   # the whole epoch on a GPU

batch: a bank shaped like the paper's (N = 502 tasks, rank 16, q/k/v of 32 layers, grouped-query
k/v at a quarter of the width) with the hidden size scaled from 4096 down to `--hidden`, random
float32 adapters. Each method runs in its own subprocess so peak RSS (ru_maxrss) is its own:
  stream  blocked streaming (`synthesize_batch`, in-process executor)      ← lorabatch
  loop    a per-adapter loop over the bank (`synthesize_one` per target; timed on `--loop-targets`
          targets and scaled to N, the per-target cost being constant)
  dense   the dense Θ [N, P] held in memory, C Θ in row blocks
  ray     blocked streaming as Ray CPU tasks (time only: Ray's own processes dominate RSS)
neural: at N = 401 training tasks, the reconstruction-loss term (forward + backward through C)
explicit ‖CΘ − Θ‖² at P = 1M vs the Gram form; then one epoch of the paper-size MLP
(1→4000→4000→1) over the n² row-standardised distances, with a breakdown of where time goes.
Every figure is measured in this invocation; the machine is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_line
from tests.helpers.synthetic_bank import random_adapter_files

REPO = Path(__file__).resolve().parents[1]


def maxrss_mb() -> float:
    """Peak resident set of this process (VmHWM: unlike ru_maxrss it does not inherit a parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- batch synthesis


def paper_shaped_shapes(hidden: int, layers: int = 32, rank: int = 16) -> dict[str, tuple[int, int]]:
    kv = hidden // 4  # Mistral-7B: 4096 → k/v 1024
    shapes = {}
    for li in range(layers):
        for proj, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv)):
            pre = f"base_model.model.model.layers.{li}.self_attn.{proj}"
            shapes[pre + ".lora_A.weight"] = (rank, hidden)
            shapes[pre + ".lora_B.weight"] = (out, rank)
    return shapes


def make_bank(root: Path, n: int, hidden: int) -> None:
    random_adapter_files(
        [root / f"task{i + 1}" for i in range(n)], paper_shaped_shapes(hidden), rank=16, base_model="bench/base"
    )


def bench_layout_and_c(bank: Path, n: int):
    from lorabatch.synthesis.coefficients import normalized_coefficients
    from lorabatch.synthesis.tensors import bank_layout

    ids = [f"task{i + 1}" for i in range(n)]
    layout = bank_layout(ids, [bank / t for t in ids], manifest_hash="bench")
    d = np.random.default_rng(1).uniform(0, 3, size=(n, n))
    np.fill_diagonal(d, 0)
    return layout, normalized_coefficients(d)


def worker(args) -> dict:
    """One method in a fresh process; returns its time and peak RSS."""
    from lorabatch.synthesis.batch import synthesize_batch
    from lorabatch.synthesis.config import SynthesisConfig
    from lorabatch.synthesis.stage import synthesize_one
    from lorabatch.synthesis.writer import output_adapter_config, write_adapter

    layout, c = bench_layout_and_c(Path(args.bank), args.n)
    out = Path(args.out)
    base_rss = maxrss_mb()
    n = layout.n_tasks
    provs = [{"target": t} for t in layout.task_ids]
    t0 = time.perf_counter()
    if args.worker == "stream":
        synthesize_batch(
            layout,
            c,
            [out / t for t in layout.task_ids],
            provs,
            chunk_size=args.chunk,
            executor="local",
            progress=False,
        )
        done = n
    elif args.worker == "ray":
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()  # Ray's start-up is not synthesis
        synthesize_batch(
            layout, c, [out / t for t in layout.task_ids], provs, chunk_size=args.chunk, executor="ray", progress=False
        )
        done = n
    elif args.worker == "loop":
        cfg = SynthesisConfig()
        for i in range(args.loop_targets):
            synthesize_one(layout, c[i], out / layout.task_ids[i], cfg, setting="bench", target=layout.task_ids[i])
        done = args.loop_targets
    elif args.worker == "dense":
        theta = np.empty((n, layout.n_params), dtype=np.float32)
        for j in range(n):
            theta[j] = layout.read_flat(j)
        cfg = output_adapter_config(layout.adapter_config, 16)
        for s in range(0, n, 32):
            y = c[s : s + 32].astype(np.float32) @ theta
            for k, row in enumerate(y):
                write_adapter(
                    out / layout.task_ids[s + k],
                    {t.name: row[t.offset : t.offset + t.size].reshape(t.shape) for t in layout.tensors},
                    cfg,
                    provs[s + k],
                )
        done = n
    seconds = time.perf_counter() - t0
    return {
        "method": args.worker,
        "seconds": seconds,
        "adapters": done,
        "seconds_all_n": seconds * n / done,
        "maxrss_mb": maxrss_mb(),
        "baseline_rss_mb": base_rss,
    }


def run_worker(kind: str, bank: Path, out: Path, opts) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.synthesis",
        "--worker",
        kind,
        "--bank",
        str(bank),
        "--out",
        str(out),
        "--n",
        str(opts.n),
        "--chunk",
        str(opts.chunk),
        "--loop-targets",
        str(opts.loop_targets),
    ]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_batch(opts) -> None:
    from lorabatch.synthesis.tensors import bank_layout

    tmp = Path(tempfile.mkdtemp(prefix="lorabatch-bench-", dir=opts.tmp))
    try:
        t0 = time.perf_counter()
        make_bank(tmp / "bank", opts.n, opts.hidden)
        ids = [f"task{i + 1}" for i in range(opts.n)]
        layout = bank_layout(ids[:1], [tmp / "bank" / ids[0]])
        p = layout.n_params
        print(
            f"\n## batch synthesis: N={opts.n}, P={p:,} (paper: 9,437,184; hidden {opts.hidden} instead of 4096), "
            f"dense Θ = {opts.n * p * 4 / 2**30:.2f} GiB float32; bank written in {time.perf_counter() - t0:.0f} s"
        )
        results = {}
        for kind in opts.methods:
            out = tmp / f"out-{kind}"
            results[kind] = run_worker(kind, tmp / "bank", out, opts)
            if kind == "stream" and "dense" in opts.methods:
                keep = out
                continue
            if kind == "dense" and "stream" in results:
                a = np.fromfile(keep / ids[7] / "adapter_model.safetensors", dtype=np.uint8)
                b = np.fromfile(out / ids[7] / "adapter_model.safetensors", dtype=np.uint8)
                from lorabatch.synthesis.tensors import bank_layout as bl

                la, lb = bl(["x"], [keep / ids[7]]), bl(["x"], [out / ids[7]])
                diff = np.abs(la.read_flat(0) - lb.read_flat(0)).max()
                print(f"stream vs dense adapter task8: max |Δ| = {diff:.2e} (files {a.size} / {b.size} bytes)")
            shutil.rmtree(out, ignore_errors=True)
        print("| method | time for all N adapters | peak RSS | RSS after imports |")
        print("| --- | --- | --- | --- |")
        for kind, r in results.items():
            note = (
                f" (measured {r['adapters']} targets: {r['seconds']:.1f} s, scaled)" if r["adapters"] != opts.n else ""
            )
            print(
                f"| {kind} | {r['seconds_all_n']:.1f} s{note} | {r['maxrss_mb']:.0f} MB | {r['baseline_rss_mb']:.0f} MB |"
            )
        if {"stream", "loop"} <= set(results):
            print(
                f"time: per-adapter loop / blocked streaming = {results['loop']['seconds_all_n'] / results['stream']['seconds_all_n']:.1f}×"
            )
        if {"stream", "dense"} <= set(results):
            s, d = results["stream"], results["dense"]
            print(
                f"peak RSS: streaming / dense = {s['maxrss_mb'] / d['maxrss_mb']:.3f} "
                f"(above the import baseline: {(s['maxrss_mb'] - s['baseline_rss_mb']) / max(d['maxrss_mb'] - d['baseline_rss_mb'], 1e-9):.3f}); "
                f"time dense / streaming = {d['seconds_all_n'] / s['seconds_all_n']:.2f}×"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- neural model


def _timed(fn, repeat: int, sync=lambda: None) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_neural(opts) -> None:
    import torch

    from lorabatch.synthesis.coefficients import row_zscore
    from lorabatch.synthesis.neural import (
        build_mlp,
        explicit_reconstruction_loss,
        gram_reconstruction_loss,
        loo_coefficients,
    )

    dev = torch.device(opts.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    n, p = 401, opts.params
    print(f"\n## neural model: n = {n} training tasks, device {dev}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    theta = (torch.randn(n, p, generator=gen) * 0.02).to(dev)
    logits = torch.randn(n, n, generator=gen).to(dev).requires_grad_(True)
    eye = torch.eye(n, dtype=torch.bool, device=dev)

    def coeffs():
        return torch.softmax(logits.masked_fill(eye, float("-inf")), dim=1)

    t0 = time.perf_counter()
    gram = torch.zeros(n, n, dtype=torch.float64, device=dev)
    for s in range(0, p, 1 << 16):
        block = theta[:, s : s + (1 << 16)].double()
        gram += block @ block.T
    sync()
    t_gram = time.perf_counter() - t0

    def step(loss_fn):
        logits.grad = None
        loss = loss_fn(coeffs())
        loss.backward()
        return loss

    t_exp = _timed(lambda: step(lambda c: explicit_reconstruction_loss(c, theta)), 2, sync)
    t_grm = _timed(lambda: step(lambda c: gram_reconstruction_loss(c, gram, p)), 20, sync)
    l_exp, l_grm = (
        step(lambda c: explicit_reconstruction_loss(c, theta)).item(),
        step(lambda c: gram_reconstruction_loss(c, gram, p)).item(),
    )
    print(f"reconstruction-loss term, forward + backward, P = {p:,} (Θ float32, G float64):")
    print(
        f"  explicit ‖CΘ−Θ‖²: {t_exp * 1e3:.1f} ms   Gram tr((C−I)G(C−I)ᵀ): {t_grm * 1e3:.2f} ms   → {t_exp / t_grm:.0f}× faster"
    )
    print(f"  loss values {l_exp:.9e} vs {l_grm:.9e} (relative difference {abs(l_exp - l_grm) / l_exp:.1e})")
    print(f"  one-off cost of G = ΘΘᵀ (float64, one pass): {t_gram:.2f} s = {t_gram / t_exp:.1f} explicit epochs")
    theta = None  # frees Θ before the next measurement

    # One epoch of the paper-size MLP on the n_train² standardised distances.
    n_train = int(round(0.8 * n)) if not opts.n_train else opts.n_train
    d = np.random.default_rng(2).uniform(0, 3, size=(n_train, n_train))
    np.fill_diagonal(d, 0)
    z = torch.as_tensor(row_zscore(d), dtype=torch.float32, device=dev)
    mlp = build_mlp(opts.hidden_mlp, seed=0).to(dev)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    g_sub = gram[:n_train, :n_train]
    scalars = n_train * n_train
    h = opts.hidden_mlp
    flops_per_scalar = 3 * 2 * (h * h + 2 * h)  # forward + backward ≈ 3× forward; H×H layer dominates
    print(
        f"epoch of the paper-size MLP 1→{h}→{h}→1 over n_train² = {n_train}² = {scalars:,} scalars "
        f"(≈ {flops_per_scalar * scalars / 1e12:.1f} TFLOP forward + backward):"
    )
    if opts.full_epoch:

        def epoch():
            opt.zero_grad(set_to_none=True)
            gram_reconstruction_loss(loo_coefficients(mlp, z, 1.0, opts.eval_chunk), g_sub, p).backward()
            opt.step()

        epoch()  # warm-up
        t_epoch = _timed(epoch, 3, sync)
        print(
            f"  whole epoch measured: {t_epoch:.3f} s ({flops_per_scalar * scalars / t_epoch / 1e12:.1f} TFLOP/s); "
            f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
            if dev.type == "cuda"
            else f"  whole epoch measured: {t_epoch:.1f} s"
        )
        return
    sub = opts.mlp_sample
    zs = z.reshape(-1)[:sub].reshape(-1, 1).clone()

    def mlp_part():
        mlp.zero_grad(set_to_none=True)
        mlp(zs).sum().backward()

    mlp_part()
    t_mlp = _timed(mlp_part, 2, sync)
    scores = torch.randn(n_train, n_train, device=dev, requires_grad=True)

    def rest():
        scores.grad = None
        c = torch.softmax((-scores).masked_fill(torch.eye(n_train, dtype=torch.bool, device=dev), float("-inf")), dim=1)
        gram_reconstruction_loss(c, g_sub, p).backward()

    t_rest = _timed(rest, 5, sync)
    for prm in mlp.parameters():
        prm.grad = torch.zeros_like(prm)
    t_adam = _timed(opt.step, 3, sync)
    t_mlp_all = t_mlp * scalars / sub
    total = t_mlp_all + t_rest + t_adam
    print(
        f"  MLP forward + backward: {t_mlp * 1e3:.0f} ms on {sub:,} scalars → {t_mlp_all:.0f} s for all "
        f"({flops_per_scalar * sub / t_mlp / 1e9:.0f} GFLOP/s) = {100 * t_mlp_all / total:.2f} % of the epoch"
    )
    print(
        f"  softmin + Gram loss + backward to the scores: {t_rest * 1e3:.1f} ms; Adam step over {sum(x.numel() for x in mlp.parameters()):,} parameters: {t_adam * 1e3:.0f} ms"
    )
    print(
        f"  ≈ {total:.0f} s per epoch, {40 * total / 60:.0f} min for the paper's 40 epochs; activations without "
        f"chunking ≈ {8 * scalars * h * 4 / 2**30:.0f} GiB (synthesis.neural.eval_chunk bounds this)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "batch", "neural"], default="all")
    ap.add_argument("--n", type=int, default=502, help="bank tasks (paper: 502)")
    ap.add_argument("--hidden", type=int, default=512, help="model width of the scaled bank (paper: 4096)")
    ap.add_argument("--chunk", type=int, default=1 << 14, help="streaming chunk, elements")
    ap.add_argument("--loop-targets", type=int, default=6, help="targets timed for the per-adapter loop")
    ap.add_argument("--methods", nargs="+", default=["stream", "loop", "dense", "ray"])
    ap.add_argument("--tmp", default=None, help="directory for the temporary bank (default: system temp)")
    ap.add_argument("--params", type=int, default=1_000_000, help="P for the loss-term comparison")
    ap.add_argument("--hidden-mlp", type=int, default=4000)
    ap.add_argument("--n-train", type=int, default=0)
    ap.add_argument("--mlp-sample", type=int, default=2048, help="scalars timed for the MLP (scaled to n_train²)")
    ap.add_argument("--full-epoch", action="store_true", help="time whole epochs (use on a GPU)")
    ap.add_argument("--eval-chunk", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bank", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.worker:
        print(json.dumps(worker(opts)))
        return
    print(f"# bench.synthesis on {machine_line(torch_threads=True)}")
    if opts.part in ("all", "batch"):
        bench_batch(opts)
    if opts.part in ("all", "neural"):
        bench_neural(opts)


if __name__ == "__main__":
    main()
