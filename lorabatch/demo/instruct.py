"""The instruction phase of the demo base model (builder 5): an instruction-following base.

The real bank's base, Mistral-7B-Instruct, already answers most Natural-Instructions tasks with
the right content in its own verbose words; what a task adapter mostly adds is the task's exact
answer form. After its plain-text pre-training, the demo base is tuned the same way on
instruction data of its own, derived from whatever task families the bank is built from:

- the definition is a paraphrase of a variant's question (`PARAPHRASES`), never a bank task's
  definition, and carries no answer-form instruction;
- the input sentence is drawn from the family's templates and kept only if no bank task's
  train, valid or test split holds it (so no bank row, and no bank input string, is used);
- the answer is in one house style of the base's own (`house_answer`): a lead-in, then the
  content as a sentence, e.g. ``well , i think brazil .`` for a bank answer ``the answer is
  brazil``; a minority (`terse_share`) is the bare content, as instruction data mixes short
  answers in. The base's greedy answers are in the house style; how sure it is of that style
  decides how far a task-agnostic push (the plain mean of the bank's adapters) moves it towards
  short forms — on Lots-of-LoRAs that mean closes ≈ 37 % of the base→oracle gap.

The phase is next-token training on the answer tokens (and EOS) only, the recipe of the task
LoRAs but on every weight of the base model.
"""

from __future__ import annotations

import random
import re

from lorabatch.demo.families import TaskSpec, Variant

# Paraphrases of a variant's question: none of them is a bank definition, since bank definitions
# end with a form instruction (`Variant.form_hint`) and these never do.
PARAPHRASES = (
    "{question}",
    "Read the sentence below. {question}",
    "Task : {question}",
    "{question} Think about the sentence first.",
    "Here is a sentence. {question}",
)
HOUSE_LEAD = "well , i think that"

_SENTENCE = re.compile(r"\n\nInput: (.*)\nOutput:\Z", re.S)


def house_answer(variant: Variant, slots: dict) -> str:
    """The base model's own way of answering: the lead-in, then the content as a sentence."""
    return f"{HOUSE_LEAD} {slots[variant.answer]} ."


def instruction_prompt(definition: str, sentence: str) -> str:
    """The bank's prompt frame (`Definition: …\\n\\nInput: …\\nOutput:`) around any definition."""
    return f"Definition: {definition}\n\nInput: {sentence}\nOutput:"


def bank_sentences(rows: list[dict]) -> set[str]:
    """The input sentences of bank rows (the text between `Input: ` and `\\nOutput:`)."""
    out = set()
    for r in rows:
        match = _SENTENCE.search(r["input"])
        if match is None:
            raise ValueError(f"bank row {r.get('id')!r} is not in the `Definition/Input/Output` frame")
        out.add(match.group(1))
    return out


def instruction_examples(
    specs: list[TaskSpec], exclude: set[str], per_variant: int, seed: int, terse_share: float = 0.0
) -> list[dict]:
    """`per_variant` instruction rows `{"input", "output", "id"}` for each task spec's variant; a
    seeded `terse_share` of them answer with the bare content, the others in the house style.

    Sentences in `exclude` (every bank split's) are skipped; a variant whose family has too few
    other sentences gets what could be drawn in `50 * per_variant` tries. Reproducible from `seed`.
    """
    rng = random.Random(f"{seed}:instruction")
    rows = []
    for spec in specs:
        drawn = 0
        for _ in range(50 * per_variant):
            if drawn == per_variant:
                break
            sentence, slots = spec.family.instance(rng, spec.variant)
            if sentence in exclude:
                continue
            definition = rng.choice(PARAPHRASES).format(question=spec.variant.question)
            terse = rng.random() < terse_share
            rows.append(
                {
                    "input": instruction_prompt(definition, sentence),
                    "output": [slots[spec.variant.answer] if terse else house_answer(spec.variant, slots)],
                    "id": f"instruct-{spec.task_id}-{drawn:05d}",
                }
            )
            drawn += 1
    rng.shuffle(rows)
    return rows
