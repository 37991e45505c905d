"""`select` and `refine` for one target task, given its few-shot evaluator (`loss.FewShotLoss`).

The criterion q of an adapter on the task's k training examples: 'rouge' — the mean Rouge-L of its
greedy answers against output[0] (the evaluation's metric), the teacher-forced loss breaking ties;
'loss' — the teacher-forced loss alone.

select:  among candidate coefficient rows c^(1..M) [N] (the sweep's mixture settings, a grid, and
         the own adapters of the few-shot pool — bank tasks near the target by the metrics), the
         one whose mixed adapter does best on q: M evaluations.
refine:  K bank tasks — (from select) the choice's own top tasks, then the pool's best own
         adapters on q (sources 'pool'), or the top-K of the starting row c⁰ only (sources 'start'); weights
         w ∈ [−b, b]^K minimise
             f(w) = q(ΔW(w)) + λ Σ_j |w_j|,   ΔW(w) = Σ_j w_j B_j A_j  (per module)
         (q = 1 − Rouge-L, or the loss) by CMA-ES (the `cma` package), starting at
         w⁰ = c⁰_top / Σ c⁰_top, `budget` evaluations in all, w⁰ first. During the search ΔW(w) is
         held exactly as the rank-Kr pair A = [A_1; …; A_K], B = [w_1 B_1, …, w_K B_K] (no SVD),
         so a candidate costs one copy of B. The result is the lowest f among the points at least
         as good as w⁰ on q — w⁰ itself when none is — so refining never worsens its start.
         Started from select (the default), the start is select's choice; when that choice is a
         dense row (mixed as the sweep mixes, over all its tasks, not the exact top-K mixture the
         search starts from) and refine ends worse than it, select's choice is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lorabatch.settings import REFINE, SELECT
from lorabatch.synthesis.coefficients import model_coefficients
from lorabatch.synthesis.mixing import lora_modules
from lorabatch.synthesis.stage import mix_row

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

    def record(self, method: str, examples: int) -> dict:
        """What the run's files and an adapter's provenance say about this result. rouge_l /
        start_rouge_l: few-shot Rouge-L of the result and of the starting point (None when the
        criterion did not compute it); kept_select: refine kept select's dense choice, which did
        better than the search."""
        rouges = self.details.get("candidate_rouge_l")
        if rouges is not None:  # select
            rouge, start = rouges.get(self.choice), None
        else:
            rouge, start = self.details.get("final_rouge_l"), self.details.get("start_rouge_l")
        return {
            "method": method,
            "choice": self.choice,
            "loss": self.loss,
            "start_loss": self.start_loss,
            "rouge_l": rouge,
            "start_rouge_l": start,
            "kept_select": self.details.get("kept") == "select",
            "evaluations": self.evaluations,
            "forward_passes": self.forward_passes,
            "seconds": round(self.seconds, 4),
            "examples": examples,
        }


def grid_candidates(
    distances: dict[str, np.ndarray], temperatures, top_ks, exclude_self: bool = True
) -> dict[str, np.ndarray]:
    """{name: C [M, N]}: normalized (z-score softmin) coefficients per metric on a T × top-k grid
    (leave-one-out rows, or query rows with `exclude_self=False`)."""
    out = {}
    for metric, d in distances.items():
        for t in temperatures:
            for k in top_ks:
                name = f"{metric}-normalized@T={t:g},k={k if k is not None else 'all'}"
                out[name] = model_coefficients("normalized", d, exclude_self=exclude_self, temperature=t, top_k=k)
    return out


def candidate_rows(
    i: int, matrices: dict[str, np.ndarray], rows: dict[str, np.ndarray] | None = None
) -> list[tuple[str, np.ndarray]]:
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
    evaluator,
    layout,
    candidates: list[tuple[str, np.ndarray]],
    synthesis_config,
    paper_names=(),
    criterion: str = "loss",
    max_new_tokens: int = 256,
) -> FewShotResult:
    """The candidate whose adapter (mixed as `synthesis_config` says) does best on the examples:
    lowest few-shot loss (`criterion` 'loss'), or highest Rouge-L of its greedy generations with
    the loss breaking ties ('rouge')."""

    started, passes = time.perf_counter(), evaluator.forward_passes
    losses, rouges, answers = {}, {}, {}
    for group in _groups(candidates, evaluator):
        found = evaluator.scores(
            [mix_row(layout, row, synthesis_config)[0] for _, row in group], criterion, max_new_tokens
        )
        for (name, _), score in zip(group, found):
            losses[name] = score["loss"]
            if criterion == "rouge":
                rouges[name], answers[name] = score["rouge_l"], score["answers"]
    if criterion == "rouge":
        best = min(losses, key=lambda n: (-rouges[n], losses[n], n))
    else:
        best = min(losses, key=lambda n: (losses[n], n))
    paper = [losses[n] for n in paper_names if n in losses]
    details = {"criterion": criterion, "candidate_losses": losses}
    if rouges:
        details["candidate_rouge_l"] = rouges
        details["candidate_answers"] = answers
    return FewShotResult(
        coefficients=dict(candidates)[best],
        choice=best,
        loss=losses[best],
        start_loss=min(paper) if paper else float("nan"),
        evaluations=len(losses),
        forward_passes=evaluator.forward_passes - passes,
        seconds=time.perf_counter() - started,
        details=details,
    )


class StackedAdapter:
    """ΔW(w) = Σ_j w_j B_j A_j of K bank adapters as one rank-Kr adapter: A stacked once, B rescaled per w."""

    def __init__(self, layout, sources: np.ndarray):
        self.sources = np.asarray(sources)
        self.prefixes = lora_modules(layout)
        self.a = {
            p: np.concatenate([layout.read_tensor(int(j), p + _A) for j in self.sources], axis=0) for p in self.prefixes
        }
        self.b = {p: [layout.read_tensor(int(j), p + _B) for j in self.sources] for p in self.prefixes}

    def tensors(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for p in self.prefixes:
            out[p + _A] = self.a[p]
            out[p + _B] = np.concatenate([w * b for w, b in zip(weights, self.b[p])], axis=1).astype(np.float32)
        return out


def rank_pool(
    evaluator, layout, pool: list[int], criterion: str = "loss", max_new_tokens: int = 256
) -> tuple[list[int], dict]:
    """The pool's bank indices, best own adapter first (lowest loss; or highest few-shot Rouge-L,
    the loss breaking ties), and {task id: {"loss", "rouge_l", "answers"}} of each."""
    scores = {}
    for group in _groups(pool, evaluator):
        found = evaluator.scores(
            [{t.name: layout.read_tensor(j, t.name) for t in layout.tensors} for j in group], criterion, max_new_tokens
        )
        for j, score in zip(group, found):
            scores[j] = {k: score[k] for k in ("loss", "rouge_l", "answers") if k in score}
    order = sorted(pool, key=lambda j: (-scores[j].get("rouge_l", 0.0), scores[j]["loss"], j))
    return order, {layout.task_ids[j]: v for j, v in scores.items()}


def refine(
    evaluator,
    layout,
    start_row: np.ndarray,
    config,
    seed: int,
    start_name: str,
    sources: list[int] | None = None,
    criterion: str = "loss",
    max_new_tokens: int = 256,
) -> FewShotResult:
    """CMA-ES on the weights of K bank tasks (see the module docstring): `sources`, or the top-K
    of `start_row`; the search starts at `start_row` on them, renormalised (uniform if it gives
    them no weight), and minimises the criterion plus the L1 penalty."""
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
    points: list[Point] = []

    def evaluate(ws: list) -> list[float]:
        """The objective of every weight vector of `ws` (evaluated together, in order)."""
        ws = [np.clip(np.asarray(w, dtype=np.float64), -config.bound, config.bound) for w in ws]
        found = evaluator.scores([stacked.tensors(w) for w in ws], criterion, max_new_tokens)
        for w, score in zip(ws, found):
            point = Point(w, score["loss"], score.get("rouge_l") if criterion == "rouge" else None)
            point.objective = point.quality(criterion) + config.l1 * float(np.abs(w).sum())
            points.append(point)
        return [p.objective for p in points[len(points) - len(ws) :]]

    evaluate([w0])
    if len(top) == 1:
        # CMA-ES needs two dimensions; one weight is searched on a seeded 1-D sample instead.
        rng = np.random.default_rng(seed)
        evaluate([np.array([w]) for w in rng.uniform(-config.bound, config.bound, size=config.budget - 1)])
    else:
        options = {"bounds": [-config.bound, config.bound], "seed": int(seed) % (2**31 - 2) + 1, "verbose": -9}
        es = cma.CMAEvolutionStrategy(w0.tolist(), config.sigma, options)
        while len(points) < config.budget and not es.stop():
            population = es.ask()
            room = config.budget - len(points)
            values = evaluate(population[:room])
            if len(values) < len(population):
                break
            es.tell(population, values)
    start = points[0]
    eligible = [p for p in points if p.rank(criterion) <= start.rank(criterion)]
    best = min(eligible, key=lambda p: (p.objective, p.loss))
    full = np.zeros(layout.n_tasks)
    full[top] = best.w
    return FewShotResult(
        coefficients=full,
        choice=start_name,
        loss=best.loss,
        start_loss=start.loss,
        evaluations=len(points),
        forward_passes=evaluator.forward_passes - passes,
        seconds=time.perf_counter() - started,
        details={
            "sources": [layout.task_ids[int(j)] for j in top],
            "start_weights": w0.tolist(),
            "weights": best.w.tolist(),
            "objective": best.objective,
            "l1": config.l1,
            "criterion": criterion,
            "start_rouge_l": start.rouge,
            "final_rouge_l": best.rouge,
        },
    )


def _groups(items: list, evaluator) -> list[list]:
    """`items` in groups of the evaluator's `candidates_per_pass` (the adapters scored together)."""
    size = max(1, int(getattr(evaluator, "candidates_per_pass", 1)))
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class Point:
    """One evaluated weight vector of refine's search."""

    w: np.ndarray
    loss: float
    rouge: float | None
    objective: float = float("nan")

    def quality(self, criterion: str) -> float:
        """q: lower is better (1 − Rouge-L, or the loss)."""
        return 1.0 - self.rouge if criterion == "rouge" else self.loss

    def rank(self, criterion: str) -> tuple[float, float]:
        """Order on the criterion alone (lower is better; the loss breaks Rouge-L ties)."""
        return (self.quality(criterion), self.loss) if criterion == "rouge" else (self.loss, 0.0)


def pool_scores_from_select(result: FewShotResult, candidates: list[tuple[str, np.ndarray]], layout) -> dict[int, dict]:
    """{bank index j: {"loss", "rouge_l"}} of every select candidate that is one bank task's own
    adapter (a one-hot row), read from select's record — no new evaluation."""
    losses = result.details["candidate_losses"]
    rouges = result.details.get("candidate_rouge_l", {})
    answers = result.details.get("candidate_answers", {})
    out = {}
    for name, row in candidates:
        nz = np.flatnonzero(row)
        if len(nz) == 1 and row[nz[0]] == 1.0 and name in losses:
            out[int(nz[0])] = {"loss": losses[name]}
            if name in rouges:
                out[int(nz[0])].update(rouge_l=rouges[name], answers=answers.get(name))
    return out


def covering_order(
    ranked: list[int], answers: dict[int, list[str] | None], references: list[str], covered_by: list[int]
) -> list[int]:
    r"""`ranked` reordered for complementarity: repeatedly the task whose answers add the most
    reference words not yet covered, counted per example,

        gain(j) = Σ_e |words(ref_e) ∩ words(answer_j,e) \ covered_e|,

    starting from the words of the `covered_by` tasks' answers; ties, and every task once nothing
    adds a word, keep `ranked`'s order. Words are Rouge-L's (rouge-score's tokenizer, stemmed).
    So a task that has the content and one that has the answer form both come early, where the
    ranking by Rouge-L alone puts every task of the right form first."""
    from rouge_score.tokenizers import DefaultTokenizer

    tokenize = DefaultTokenizer(use_stemmer=True).tokenize
    refs = [set(tokenize(r)) for r in references]

    def words(j: int) -> list[set[str]]:
        got = answers.get(j) or [""] * len(refs)
        return [set(tokenize(a)) & ref for a, ref in zip(got, refs)]

    covered = [set() for _ in refs]
    for j in covered_by:
        if answers.get(j):
            covered = [c | w for c, w in zip(covered, words(j))]
    left, order = list(ranked), []
    hits = {j: words(j) for j in left}
    while left:
        gains = [sum(len(w - c) for w, c in zip(hits[j], covered)) for j in left]
        if max(gains) == 0:
            break
        j = left[gains.index(max(gains))]
        order.append(j)
        covered = [c | w for c, w in zip(covered, hits[j])]
        left.remove(j)
    return order + left


def order_by_scores(scores: dict[int, dict]) -> list[int]:
    """Bank indices, best first (highest few-shot Rouge-L where scored, then lowest loss)."""
    return sorted(scores, key=lambda j: (-scores[j].get("rouge_l", 0.0), scores[j]["loss"], j))


def run_methods(
    evaluator,
    layout,
    methods,
    config,
    synthesis_config,
    candidates: list[tuple[str, np.ndarray]],
    pool: list[int],
    paper_rows: dict[str, np.ndarray],
    paper_names,
    seed: int,
    max_new_tokens: int,
) -> dict:
    """{method: (FewShotResult, the SynthesisConfig its coefficients are mixed with), or the
    exception that method failed with} for one task whose examples are set on `evaluator`: select
    over `candidates`; refine from select's choice or from `paper_rows[config.refine.start]`, its K
    tasks from `pool` (see the module docstring). refine started from select counts select's cost
    in its own."""

    out: dict = {}
    from_select = REFINE in methods and config.refine.start == SELECT
    if SELECT in methods or from_select:
        try:
            chosen = select(
                evaluator, layout, candidates, synthesis_config, paper_names, config.criterion, max_new_tokens
            )
        except Exception as err:  # the caller records it; refine from select fails with it
            return {m: err for m in methods if m == SELECT or from_select}
        if SELECT in methods:
            out[SELECT] = (chosen, synthesis_config)
    if REFINE in methods:
        try:
            out[REFINE] = refine_task(
                evaluator,
                layout,
                config,
                synthesis_config,
                candidates,
                pool,
                paper_rows,
                chosen if from_select else None,
                seed,
                max_new_tokens,
            )
        except Exception as err:  # the caller records it, select's result stands
            out[REFINE] = err
    return out


def refine_task(
    evaluator, layout, config, synthesis_config, candidates, pool, paper_rows, chosen, seed, max_new_tokens
):
    """(refine's FewShotResult, its SynthesisConfig): from select's `chosen`, or from the configured paper setting."""
    from_select = chosen is not None
    exact = synthesis_config.model_copy(update={"mixing": "exact"})
    cost = [0.0, 0, 0]  # seconds, forward passes, evaluations spent before the search
    if from_select:
        start_row, start_name = chosen.coefficients, f"select:{chosen.choice}"
        scores = pool_scores_from_select(chosen, candidates, layout)
        missing = [j for j in pool if j not in scores]
        cost = [chosen.seconds, chosen.forward_passes, chosen.evaluations]
    else:
        start_row, start_name = paper_rows[config.refine.start], config.refine.start
        scores, missing = {}, list(pool)
    sources = None
    if config.refine.sources in ("pool", "cover") and pool:
        if missing:
            started, passes = time.perf_counter(), evaluator.forward_passes
            _, screened = rank_pool(evaluator, layout, missing, config.criterion, max_new_tokens)
            scores.update({layout.task_ids.index(t): v for t, v in screened.items()})
            cost = [
                cost[0] + time.perf_counter() - started,
                cost[1] + evaluator.forward_passes - passes,
                cost[2] + len(missing),
            ]
        ranked = order_by_scores({j: scores[j] for j in pool})
        # Refining select's choice keeps its own tasks, so the search starts exactly there.
        own = (
            [int(j) for j in np.argsort(-start_row, kind="stable")[: config.refine.top_k] if start_row[j] > 0]
            if from_select
            else []
        )
        rest = [j for j in ranked if j not in own]
        if config.refine.sources == "cover" and config.criterion == "rouge":
            answers = {j: scores[j].get("answers") for j in pool}
            if from_select:
                answers.update({j: chosen.details["candidate_answers"].get(chosen.choice) for j in own})
            rest = covering_order(rest, answers, evaluator.references, own)
        sources = own + rest
    result = refine(
        evaluator, layout, start_row, config.refine, seed, start_name, sources, config.criterion, max_new_tokens
    )
    result.seconds += cost[0]
    result.forward_passes += cost[1]
    result.evaluations += cost[2]
    if sources is not None:
        result.details["pool"] = {
            layout.task_ids[j]: {k: v for k, v in scores[j].items() if k != "answers"} for j in pool
        }
    # A one-hot choice is its bank adapter under any mixing, so the search started exactly there; a
    # dense choice (mixed as configured, over all its tasks) is not the exact top-K mixture the
    # search started from, and may stay better.
    dense = np.count_nonzero(chosen.coefficients) > 1 if from_select else False
    if dense and _worse(result, chosen, config.criterion):
        kept = FewShotResult(
            **{
                **chosen.__dict__,
                "choice": start_name,
                "seconds": result.seconds,
                "forward_passes": result.forward_passes,
                "evaluations": result.evaluations,
                "start_loss": result.start_loss,
                "details": {
                    **result.details,
                    "kept": "select",
                    "final_rouge_l": chosen.details.get("candidate_rouge_l", {}).get(chosen.choice),
                },
            }
        )
        return kept, synthesis_config
    return result, exact


def _worse(refined: FewShotResult, chosen: FewShotResult, criterion: str) -> bool:
    """Whether refine's result does worse on the criterion than select's choice."""
    if criterion == "rouge":
        mine = (-(refined.details["final_rouge_l"] or 0.0), refined.loss)
        theirs = (-chosen.details["candidate_rouge_l"][chosen.choice], chosen.loss)
        return mine > theirs
    return refined.loss > chosen.loss
