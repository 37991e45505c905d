"""Demo-bank build time with the task LoRAs trained one at a time (in the building process, the
default on 2 cores) vs several at once (Ray Train), in one invocation on one machine, and a check
that both builds hold the same adapters.

    python -m bench.demo_build --size small                  # parallel 1 vs 2
    python -m bench.demo_build --size default --parallel 1 2 3

Prints the LoRA phase's and the whole build's wall seconds per setting and the ratio against the
first (the baseline, normally parallel 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from bench.machine import machine_line
from lorabatch.demo.build import ORG, build_demo_bank

REPO = Path(__file__).resolve().parents[1]


def adapter_hashes(root: Path) -> dict[str, str]:
    return {
        p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / ORG).glob("*/adapter_model.safetensors"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="demo-build-"))
    rows, hashes = [], {}
    for parallel in args.parallel:
        out = build_demo_bank(
            work / f"p{parallel}", size=args.size, seed=0, progress=False, threads=args.threads, parallel=parallel
        )
        info = json.loads((out / "demo_bank.json").read_text())
        hashes[parallel] = adapter_hashes(out)
        rows.append((parallel, info["timings_s"]["lora"], info["timings_s"]["total"], len(info["tasks"])))
    same = all(h == hashes[args.parallel[0]] for h in hashes.values())
    print(
        f"demo bank '{args.size}', {rows[0][3]} tasks, {args.threads} threads per task · {machine_line()} "
        f"· identical adapters across settings: {same}"
    )
    print("| tasks at once | LoRA phase s | build s | LoRA phase vs first |")
    print("|---:|---:|---:|---:|")
    for parallel, lora, total, _ in rows:
        print(f"| {parallel} | {lora:.0f} | {total:.0f} | {rows[0][1] / lora:.2f}× |")


if __name__ == "__main__":
    main()
