"""Content apart from form: does a prediction hold the reference's content words?

Rouge-L rewards an answer's form as much as its content ("the answer is italy" scores 0.75
against "the answer is red"). The content score looks at the content only:

- a task's **template words** are the tokens found in ≥ `TEMPLATE_SHARE` (90 %) of its
  references (e.g. "it", "is" in "it is blue", "the answer is" in "the answer is red");
- a reference's **content words** are its other tokens (all of them when every token is a
  template word, as for a task with one reference);
- content(prediction) = 1 when every content word occurs among the prediction's tokens, else 0.

Tokens are Rouge-L's own (rouge-score's tokenizer: lower case, alphanumeric runs, Porter stems),
so "Brazil." and "brazil" are one word, and content and Rouge-L agree on what a word is.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

TEMPLATE_SHARE = 0.9


@lru_cache(maxsize=1)
def _tokenizer():
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=True)


def words(text: str) -> list[str]:
    """Rouge-L's tokens of `text` (lower-cased, stemmed, punctuation dropped)."""
    return _tokenizer().tokenize(text)


def template_words(references: list[str], share: float = TEMPLATE_SHARE) -> frozenset[str]:
    """Tokens found in at least `share` of `references` (each reference counted once per token)."""
    if not references:
        return frozenset()
    counts = Counter(tok for ref in references for tok in set(words(ref)))
    return frozenset(tok for tok, n in counts.items() if n >= share * len(references))


def content_words(reference: str, template: frozenset[str] | set[str]) -> list[str]:
    """The reference's tokens that are not template words (all its tokens if none is left)."""
    tokens = words(reference)
    return [t for t in tokens if t not in template] or tokens


def content_match(prediction: str, reference: str, template: frozenset[str] | set[str]) -> float:
    """1.0 when every content word of `reference` occurs in `prediction`, else 0.0."""
    have = set(words(prediction))
    return float(all(t in have for t in content_words(reference, template)))
