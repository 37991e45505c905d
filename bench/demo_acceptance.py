"""A demo bank's acceptance on rows that carry no method (base, own adapters, uniform; valid split),
read from the `demo_bank.json` the builder wrote (`lorabatch.demo.accept`).

    python -m bench.demo_acceptance demo-bank [more banks...]            # one table row per bank
    python -m bench.demo_acceptance demo-bank --examples 6              # + base / oracle / uniform answers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FIGURES = (
    ("oracle_rouge_l", "own adapters", "{:.3f}"),
    ("base_over_oracle", "base / oracle", "{:.2f}"),
    ("base_content", "base content", "{:.0%}"),
    ("base_exact_match", "base exact", "{:.0%}"),
    ("uniform_gap_closed", "uniform: gap closed", "{:.0%}"),
)


def row(bank: Path) -> str:
    info = json.loads((bank / "demo_bank.json").read_text())
    a = info["acceptance"]
    training = info["training"]
    recipe = (
        f"builder {info['builder_version']}, seed {info['seed']}, base {info.get('base')}, "
        f"terse share {training.get('instruct_terse_share')}, LoRA lr {training['lora_lr']:g}"
    )
    cells = []
    for key, _, spec in FIGURES:
        met = a["criteria"][key]["met"]
        cells.append(spec.format(a["figures"][key]) + ("" if met else " ✗"))
    mean = a["mean"]
    rouge = " / ".join(f"{mean[r]['rouge_l']:.3f}" for r in ("base", "uniform", "oracle"))
    return f"| {bank.name} ({recipe}) | {rouge} | " + " | ".join(cells) + f" | {'yes' if a['accepted'] else 'no'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("banks", type=Path, nargs="+")
    parser.add_argument("--examples", type=int, default=0, help="Also show this many tasks' first valid answers.")
    args = parser.parse_args()
    head = (
        "| bank | Rouge-L base / uniform / oracle | " + " | ".join(label for _, label, _ in FIGURES) + " | accepted |"
    )
    print(head)
    print("|" + "---|" * (len(FIGURES) + 3))
    for bank in args.banks:
        print(row(bank))
    print("\nBounds: own ≥ 0.90; base / oracle 0.2–0.4 (real 0.26); base content ≥ 50 %; base exact ≤ 10 %; ")
    print("uniform closes 20–50 % of the gap (real ≈ 37 %). ✗: outside its bounds.")
    if args.examples:
        info = json.loads((args.banks[-1] / "demo_bank.json").read_text())
        print(f"\nFirst valid example of {args.examples} tasks ({args.banks[-1].name}):\n")
        print("| task | reference | base | uniform | oracle |")
        print("|---|---|---|---|---|")
        for task, ex in list(info["acceptance"]["examples"].items())[: args.examples]:
            print(f"| {task} | {ex['reference']} | {ex['base']} | {ex['uniform']} | {ex['oracle']} |")


if __name__ == "__main__":
    main()
