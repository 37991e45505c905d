"""Probe: does adapter arithmetic s + a·(f − f′) move a content donor's output format to the target's?

    python -m bench.analogy_probe runs/demo

For a few demo tasks t, s is a sibling of t (same family: the content, another format), f a task
of another family in t's format and f′ f's sibling in s's format, picked by hand from the demo's
known formats: a check of the idea, not a method. Few-shot Rouge-L on 32 rows of each task's
**valid** split (never test), exact mixing Σ w_j B_j A_j; the task's own adapter for reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lorabatch.bank.manifest import load_manifest
from lorabatch.fewshot.loss import FewShotLoss
from lorabatch.fewshot.methods import StackedAdapter
from lorabatch.fewshot.stage import few_shot_examples
from lorabatch.synthesis.tensors import layout_from_manifest

REPO = Path(__file__).resolve().parents[1]

# (target, content donor s, format donor f, f's sibling f′ in s's format)
TRIPLES = [
    ("task201", "task204", "task401", "task402"),  # "blue" ← "it is blue" + ("fruit" − "it is a fruit")
    ("task203", "task201", "task403", "task401"),  # "colour : blue" ← "blue" + ("category : fruit" − "fruit")
    ("task303", "task301", "task202", "task201"),  # "the country is x" ← "x" + ("the colour is y" − "y")
    ("task504", "task501", "task203", "task201"),  # "name : x" ← "x" + ("colour : y" − "y")
    ("task602", "task601", "task502", "task501"),  # "the topic is x" ← "x" + ("the person is y" − "y")
    ("task304", "task301", "task603", "task601"),  # "in x" ← "x" + ("this is about y" − "y")
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--examples", type=int, default=32)
    args = parser.parse_args()
    layout = layout_from_manifest(args.run)
    manifest = load_manifest(args.run).to_pylist()
    paths = {r["task_id"]: r["dataset_path"] for r in manifest}
    evaluator = FewShotLoss(manifest[0]["base_model_path"], layout.adapter_config)
    index = {t: i for i, t in enumerate(layout.task_ids)}
    print("| target | s alone | s + f − f′ | best s + a(f − f′), a ∈ {0.5, 1, 1.5} | own adapter |")
    print("|---|---:|---:|---:|---:|")
    for t, s, f, g in TRIPLES:
        evaluator.set_examples(few_shot_examples(paths[t], "valid", args.examples, 0, t))
        stacked = StackedAdapter(layout, np.array([index[s], index[f], index[g], index[t]]))

        def rouge(w):
            return evaluator.rouge(stacked.tensors(np.array(w, dtype=float)), 32)

        best = max((rouge([1, a, -a, 0]), a) for a in (0.5, 1.0, 1.5))
        print(
            f"| {t} | {rouge([1, 0, 0, 0]):.3f} | {rouge([1, 1, -1, 0]):.3f} | {best[0]:.3f} (a = {best[1]}) "
            f"| {rouge([0, 0, 0, 1]):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
