"""Question–answer examples as token ids, and padded batches of them: the one encoding that
training (`lorabatch.training`, the demo builder) and the few-shot criteria (`lorabatch.fewshot`)
share.

An example is (token ids of BOS + input + output[0] + EOS, number of prompt tokens): the loss
covers the answer and EOS only, the prompt being the raw `input` with BOS, exactly what generation
sees.
"""

from __future__ import annotations

IGNORE = -100  # the label of a position no loss is taken on (PyTorch's cross-entropy default)


def encode_examples(tokenizer, rows: list[dict], max_positions: int | None = None) -> list[tuple[list[int], int]]:
    """(prompt ids + answer ids + EOS, prompt length) per row. A prompt too long for the model
    (`max_positions`) loses its first tokens; the answer is always kept whole."""
    prompts = tokenizer([r["input"] for r in rows])["input_ids"]
    answers = tokenizer([r["output"][0] for r in rows], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for p, a in zip(prompts, answers):
        a = list(a) + eos
        if max_positions is not None and len(p) + len(a) > max_positions:
            p = p[-max(1, max_positions - len(a)) :]
        out.append((list(p) + a, len(p)))
    return out


def collate(items: list[tuple[list[int], int]], pad_id: int):
    """Right-padded `input_ids`, `attention_mask` and `labels` (prompt and padding: `IGNORE`)."""
    import torch

    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
