"""`select` and `refine` for one target task, given its few-shot loss (`loss.FewShotLoss`).

select:  among candidate coefficient rows c^(1..M) [N] (the sweep's mixture settings, a grid, and
         the own adapters of the few-shot pool — the nearest bank tasks by each metric), the one
         whose mixed adapter does best on the examples: the lowest few-shot loss, or (criterion
         'rouge') the highest mean Rouge-L of its greedy generations against output[0], the loss
         breaking ties: M loss evaluations (and M greedy generations).
refine:  K bank tasks — the pool's K lowest-loss own adapters (sources 'loss'), or the top-k of
         the starting row c⁰ (sources 'start'); weights w ∈ [−b, b]^K minimise
             f(w) = loss(ΔW(w)) + λ Σ_j |w_j|,   ΔW(w) = Σ_j w_j B_j A_j  (per module)
         by CMA-ES (the `cma` package), starting at w⁰ = c⁰_top / Σ c⁰_top, `budget` evaluations in
         all, w⁰ first. During the search ΔW(w) is held exactly as the rank-Kr pair
         A = [A_1; …; A_K], B = [w_1 B_1, …, w_K B_K] (no SVD), so a candidate costs one copy of B.
         The result is the best f among the points whose loss is ≤ loss(w⁰) — w⁰ itself when none
         is better — so refining never raises the few-shot loss over its start (criterion 'rouge':
         the best few-shot Rouge-L among the 5 best-f such points).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lorabatch.synthesis.mixing import lora_modules

_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class FewShotResult:
    """What a few-shot method chose for one task and what it cost."""

    coefficients: np.ndarray  # [N] over the bank (signed for refine)
    choice: str  # select: the winning candidate; refine: the starting setting
    loss: float  # few-shot loss of the chosen point (refine: objective's loss term)
    start_loss: float  # select: the best paper setting's loss; refine: loss(w⁰)
    evaluations: int  # loss evaluations (adapters tried)
    forward_passes: int
    seconds: float
    details: dict = field(default_factory=dict)


def grid_candidates(distances: dict[str, np.ndarray], temperatures, top_ks, exclude_self: bool = True) -> dict[str, np.ndarray]:
    """{name: C [M, N]}: normalized (z-score softmin) coefficients per metric on a T × top-k grid
    (leave-one-out rows, or query rows with `exclude_self=False`)."""
    from lorabatch.synthesis.coefficients import normalized_coefficients

    out = {}
    for metric, d in distances.items():
        for t in temperatures:
            for k in top_ks:
                name = f"{metric}-normalized@T={t:g},k={k if k is not None else 'all'}"
                out[name] = normalized_coefficients(d, exclude_self=exclude_self, temperature=t, top_k=k)
    return out


def candidate_rows(i: int, matrices: dict[str, np.ndarray], rows: dict[str, np.ndarray] | None = None) -> list[tuple[str, np.ndarray]]:
    """Row i of every candidate matrix, then the extra `rows` ([N] each); duplicates (same weights
    to 1e-12) kept once, the first name wins."""
    seen: list[np.ndarray] = []
    out = []
    named = [(name, c[i]) for name, c in matrices.items()] + list((rows or {}).items())
    for name, row in named:
        row = np.asarray(row, dtype=np.float64)
        if any(np.allclose(row, s, rtol=0, atol=1e-12) for s in seen):
            continue
        seen.append(row)
        out.append((name, row))
    return out


def select(
    evaluator, layout, candidates: list[tuple[str, np.ndarray]], synthesis_config, paper_names=(),
    criterion: str = "loss", max_new_tokens: int = 256,
) -> FewShotResult:  # fmt: skip
    """The candidate whose adapter (mixed as `synthesis_config` says) does best on the examples:
    lowest few-shot loss (`criterion` 'loss'), or highest Rouge-L of its greedy generations with
    the loss breaking ties ('rouge')."""
    from lorabatch.synthesis.stage import mix_row

    started, passes = time.perf_counter(), evaluator.forward_passes
    losses, rouges = {}, {}
    for name, row in candidates:
        tensors, _, _ = mix_row(layout, row, synthesis_config)
        losses[name] = evaluator.loss(tensors)
        if criterion == "rouge":
            rouges[name] = evaluator.rouge(tensors, max_new_tokens)
    if criterion == "rouge":
        best = min(losses, key=lambda n: (-rouges[n], losses[n], n))
    else:
        best = min(losses, key=lambda n: (losses[n], n))
    paper = [losses[n] for n in paper_names if n in losses]
    details = {"criterion": criterion, "candidate_losses": losses}
    if rouges:
        details["candidate_rouge_l"] = rouges
    return FewShotResult(
        coefficients=dict(candidates)[best], choice=best, loss=losses[best],
        start_loss=min(paper) if paper else float("nan"), evaluations=len(losses),
        forward_passes=evaluator.forward_passes - passes, seconds=time.perf_counter() - started,
        details=details,
    )  # fmt: skip


class StackedAdapter:
    """ΔW(w) = Σ_j w_j B_j A_j of K bank adapters as one rank-Kr adapter: A stacked once, B rescaled per w."""

    def __init__(self, layout, sources: np.ndarray):
        self.sources = np.asarray(sources)
        self.prefixes = lora_modules(layout)
        self.a = {p: np.concatenate([layout.read_tensor(int(j), p + _A) for j in self.sources], axis=0) for p in self.prefixes}
        self.b = {p: [layout.read_tensor(int(j), p + _B) for j in self.sources] for p in self.prefixes}

    def tensors(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for p in self.prefixes:
            out[p + _A] = self.a[p]
            out[p + _B] = np.concatenate([w * b for w, b in zip(weights, self.b[p])], axis=1).astype(np.float32)
        return out


def rank_pool(evaluator, layout, pool: list[int], criterion: str = "loss", max_new_tokens: int = 256) -> tuple[list[int], dict]:
    """The pool's bank indices, best own adapter first (lowest loss; or highest few-shot Rouge-L,
    the loss breaking ties), and {task id: {"loss", "rouge_l"}} of each."""
    scores = {}
    for j in pool:
        tensors = {t.name: layout.read_tensor(j, t.name) for t in layout.tensors}
        scores[j] = {"loss": evaluator.loss(tensors)}
        if criterion == "rouge":
            scores[j]["rouge_l"] = evaluator.rouge(tensors, max_new_tokens)
    order = sorted(pool, key=lambda j: (-scores[j].get("rouge_l", 0.0), scores[j]["loss"], j))
    return order, {layout.task_ids[j]: v for j, v in scores.items()}


def refine(
    evaluator, layout, start_row: np.ndarray, config, seed: int, start_name: str, sources: list[int] | None = None,
    criterion: str = "loss", max_new_tokens: int = 256, finalists: int = 5,
) -> FewShotResult:  # fmt: skip
    """CMA-ES on the weights of K bank tasks (see the module docstring): `sources`, or the top-K
    of `start_row`; the search starts at `start_row` on them, renormalised (uniform if it gives
    them no weight). With criterion 'rouge' the result is, among the `finalists` points of lowest
    objective whose loss is ≤ the start's, the one whose greedy generations score best."""
    import cma

    started, passes = time.perf_counter(), evaluator.forward_passes
    start_row = np.asarray(start_row, dtype=np.float64)
    if sources is None:
        order = np.argsort(-start_row, kind="stable")[: config.top_k]
        top = order[start_row[order] > 0]
    else:
        top = np.asarray(sources[: config.top_k], dtype=np.int64)
    if top.size == 0:
        raise ValueError(f"the starting setting {start_name} gives no positive weight")
    total = start_row[top].sum()
    w0 = start_row[top] / total if total > 0 else np.full(top.size, 1.0 / top.size)
    stacked = StackedAdapter(layout, top)
    points: list[tuple[np.ndarray, float, float]] = []  # (w, loss, objective)

    def evaluate(w: np.ndarray) -> float:
        w = np.clip(np.asarray(w, dtype=np.float64), -config.bound, config.bound)
        loss = evaluator.loss(stacked.tensors(w))
        objective = loss + config.l1 * float(np.abs(w).sum())
        points.append((w, loss, objective))
        return objective

    evaluate(w0)
    if len(top) == 1:
        # CMA-ES needs two dimensions; one weight is searched on a seeded 1-D sample instead.
        rng = np.random.default_rng(seed)
        for w in rng.uniform(-config.bound, config.bound, size=config.budget - 1):
            evaluate(np.array([w]))
    else:
        options = {"bounds": [-config.bound, config.bound], "seed": int(seed) % (2**31 - 2) + 1, "verbose": -9}
        es = cma.CMAEvolutionStrategy(w0.tolist(), config.sigma, options)
        while len(points) < config.budget and not es.stop():
            population = es.ask()
            room = config.budget - len(points)
            values = [evaluate(x) for x in population[:room]]
            if len(values) < len(population):
                break
            es.tell(population, values)
    start_loss = points[0][1]
    eligible = sorted((p for p in points if p[1] <= start_loss), key=lambda p: p[2])
    best_w, best_loss, best_obj = eligible[0]
    final_rouge = None
    if criterion == "rouge":
        scored = [(evaluator.rouge(stacked.tensors(p[0]), max_new_tokens), -p[2], k) for k, p in enumerate(eligible[:finalists])]
        final_rouge, _, k = max(scored)
        best_w, best_loss, best_obj = eligible[k]
    full = np.zeros(layout.n_tasks)
    full[top] = best_w
    return FewShotResult(
        coefficients=full, choice=start_name, loss=best_loss, start_loss=start_loss, evaluations=len(points),
        forward_passes=evaluator.forward_passes - passes, seconds=time.perf_counter() - started,
        details={"sources": [layout.task_ids[int(j)] for j in top], "start_weights": w0.tolist(),
                 "weights": best_w.tolist(), "objective": best_obj, "l1": config.l1, "criterion": criterion,
                 "final_rouge_l": final_rouge},
    )  # fmt: skip
