"""Rouge-L F-measure through the `rouge-score` package (stemmed), as the paper scores outputs."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: list[str], use_max: bool = False) -> float:
    """Rouge-L F1 of `prediction` against references[0] (paper) or the best reference (`use_max`)."""
    if not references:
        raise ValueError("no reference to score against")
    refs = references if use_max else references[:1]
    return max(_scorer().score(ref, prediction)["rougeL"].fmeasure for ref in refs)


def exact_match(prediction: str, references: list[str], use_max: bool = False) -> float:
    """1.0 if the whitespace-normalised, lower-cased prediction equals the (any) reference."""
    norm = " ".join(prediction.lower().split())
    refs = references if use_max else references[:1]
    return float(any(norm == " ".join(r.lower().split()) for r in refs))
