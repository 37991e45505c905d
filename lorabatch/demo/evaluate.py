"""Own adapter vs base model on a task's test examples: greedy generation, Rouge-L.

The measure of the paper's evaluation (raw `input` as prompt, greedy decoding, Rouge-L F-measure
with stemming against `output[0]`), with `max_new_tokens` sized for the demo's short outputs.
"""

from __future__ import annotations

from lorabatch.scoring.rouge import rouge_l


def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 8, batch_size: int = 64) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), decoded without special tokens."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            outputs += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
        return outputs
    finally:
        tokenizer.padding_side = side


def mean_rouge_l(predictions: list[str], rows: list[dict]) -> float:
    """Mean Rouge-L of predictions against each row's `output[0]`."""
    if not rows:
        raise ValueError("no examples to score")
    return sum(rouge_l(p, list(r["output"])) for p, r in zip(predictions, rows, strict=True)) / len(rows)


def own_vs_base(peft_model, tokenizer, rows: list[dict], max_new_tokens: int = 8) -> dict:
    """Rouge-L of `peft_model`'s active adapter and of its base (adapter disabled) on `rows`."""
    prompts = [r["input"] for r in rows]
    own = greedy_generate(peft_model, tokenizer, prompts, max_new_tokens)
    with peft_model.disable_adapter():
        base = greedy_generate(peft_model, tokenizer, prompts, max_new_tokens)
    return {
        "own": round(mean_rouge_l(own, rows), 4),
        "base": round(mean_rouge_l(base, rows), 4),
        "n": len(rows),
        "example": {"input": prompts[0], "reference": rows[0]["output"][0], "own": own[0], "base": base[0]},
    }
