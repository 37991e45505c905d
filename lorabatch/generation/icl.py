"""The in-context control `icl`: the base model with k of the task's own training examples in its
prompt — the strongest training-free baseline LoraHub and Text-to-LoRA report.

The prompt of a test example x with shots (x_1, y_1), …, (x_k, y_k) is

    x_1 + " " + y_1[0] + "\\n\\n" + … + x_k + " " + y_k[0] + "\\n\\n" + x

(each shot as the raw `input` followed by its first reference, the form training sees). The shots
are the task's few-shot examples (`fewshot.examples` rows of `fewshot.split`, seeded:
`bank.datasets.sample_examples`, the rows `select` and `refine` are judged on). When the longest
test prompt of a task does not fit the model's input limit with all k shots, the first shots are
dropped until it does, so all of a task's rows see the same shots (each row's prompt shows them).
"""

from __future__ import annotations

from dataclasses import dataclass

from lorabatch.bank.manifest import trusts_remote_code
from lorabatch.generation.preflight import input_limit, max_positions_of

SHOT_SEPARATOR = "\n\n"


def format_shot(row: dict) -> str:
    return f"{row['input']} {row['output'][0]}"


def shots_prefix(shots: list[dict]) -> str:
    """The text put before a test input: every shot then a blank line."""
    return "".join(format_shot(s) + SHOT_SEPARATOR for s in shots)


@dataclass
class InContextPrompts:
    """The shots of every task, fitted to a token budget; `prefix(task, inputs)` gives the text
    put before each of the task's test inputs.

    `count_tokens(text)` is the prompt's token count as generation sees it (BOS included);
    `input_limit` the most a prompt may have (`generation.preflight.input_limit`)."""

    shots: dict[str, list[dict]]
    count_tokens: object  # Callable[[str], int]
    input_limit: int

    def prefix(self, task_id: str, inputs: list[str]) -> str:
        if task_id not in self.shots:
            raise KeyError(f"no in-context examples for {task_id}")
        shots = list(self.shots[task_id])
        longest = max(inputs, key=self.count_tokens) if inputs else ""
        while shots and self.count_tokens(shots_prefix(shots) + longest) > self.input_limit:
            shots.pop(0)
        return shots_prefix(shots)


def in_context_prompts(manifest, config, shots: dict[str, list[dict]]) -> InContextPrompts:
    """The `icl` prompts of a generation run: the base model's tokenizer (default settings, BOS
    added, as generation) counts tokens; the limit is the run's input limit."""
    from transformers import AutoTokenizer

    base = manifest.column("base_model_path")[0].as_py()
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trusts_remote_code(manifest))
    limit = input_limit(max_positions_of(base), config.max_new_tokens, config.max_input_tokens)
    return InContextPrompts(shots, lambda text: len(tokenizer(text)["input_ids"]), limit)
