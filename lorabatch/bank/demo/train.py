"""Training of the demo bank on CPU: pre-training of the base model, then one LoRA per task.

Both use padded mini-batches of token ids. Pre-training is next-token prediction on documents of
the generic mixture; LoRA training computes the loss on the output tokens (and EOS) only, the
prompt being the raw `input` with BOS, exactly what generation later sees.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

IGNORE = -100


@dataclass(frozen=True)
class TrainSettings:
    """Steps, batch sizes and learning rates of pre-training and of each task's LoRA."""

    pretrain_steps: int = 500
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    sentences_per_document: int = 4
    lora_steps: int = 200
    lora_batch: int = 32
    lora_lr: float = 5e-3  # 1e-2 left copying tasks stuck at the marginal answer
    # lora_A learns at lora_lr × this (LoRA+'s ratio, 1/16): in the real bank trained A's stay close
    # to their initialisation; at the full rate the demo's A's moved 1.3–2.2× their init's norm.
    lora_a_lr_factor: float = 1 / 16
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def encode_examples(tokenizer, rows: list[dict]) -> list[tuple[list[int], int]]:
    """(token ids of BOS + input + output[0] + EOS, number of prompt tokens) per example."""
    prompts = tokenizer([r["input"] for r in rows])["input_ids"]
    answers = tokenizer([r["output"][0] for r in rows], add_special_tokens=False)["input_ids"]
    return [(p + a + [tokenizer.eos_token_id], len(p)) for p, a in zip(prompts, answers)]


def encode_documents(tokenizer, sentences: list[str], per_document: int, seed: int) -> list[list[int]]:
    """Pre-training documents: BOS + a few random sentences of the mixture + EOS."""
    rng = random.Random(f"{seed}:documents")
    order = list(range(len(sentences)))
    rng.shuffle(order)
    docs = [" ".join(sentences[i] for i in order[k : k + per_document]) for k in range(0, len(order), per_document)]
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(docs)["input_ids"]]


def collate(items: list[tuple[list[int], int]], pad_id: int):
    """Right-padded `input_ids`, `attention_mask` and `labels` (prompt and padding ignored)."""
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


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _fit(model, params, items, steps: int, batch: int, lr: float, pad_id: int, seed: int, desc: str, progress: bool) -> list[float]:
    """AdamW over shuffled epochs of `items` (`params`: tensors, or param groups with their own
    `lr`); returns the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, max(1, steps // 10)))
    model.train()
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False, disable=not progress or None)
    for _ in bar:
        if len(order) < batch:
            epoch = list(range(len(items)))
            rng.shuffle(epoch)
            order += epoch
        picked, order = order[:batch], order[batch:]
        loss = model(**collate([items[i] for i in picked], pad_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


def pretrain(model, tokenizer, sentences: list[str], settings: TrainSettings, seed: int, progress: bool = True) -> list[float]:
    """Next-token pre-training of the base model on the generic mixture; returns step losses."""
    import torch

    torch.manual_seed(seed)
    docs = encode_documents(tokenizer, sentences, settings.sentences_per_document, seed)
    items = [(ids, 1) for ids in docs]  # BOS is never a target
    params = [p for p in model.parameters() if p.requires_grad]
    return _fit(model, params, items, settings.pretrain_steps, settings.pretrain_batch, settings.pretrain_lr,
                tokenizer.pad_token_id, seed, "pre-train base", progress)  # fmt: skip


def lora_model(model, settings: TrainSettings, base_name: str):
    """Wrap `model` in a PEFT LoRA (q/k/v, no bias, no dropout) whose config names `base_name`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        target_modules=list(settings.lora_targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
    )
    # PEFT records the wrapped model's name_or_path in the adapter config: it must be the bank's name.
    model.name_or_path = base_name
    return get_peft_model(model, config)


def reset_lora(peft_model, seed: int) -> None:
    """Fresh LoRA weights with PEFT's default init (A Kaiming-uniform, B zero: the adapter starts
    as the identity), drawn from `seed`: the same seed gives bit-identical A matrices."""
    import torch
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.reset_lora_parameters("default", True)


def train_lora(
    peft_model, tokenizer, rows: list[dict], settings: TrainSettings, init_seed: int, seed: int, desc: str, progress: bool = True
) -> list[float]:
    """Train the adapter of `peft_model` on one task's train rows, from a fresh init drawn from
    `init_seed` (tasks sharing it start from one lora_A); `seed` orders the examples."""
    reset_lora(peft_model, init_seed)
    items = encode_examples(tokenizer, rows)
    lora = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n]
    groups = [
        {"params": [p for n, p in lora if "lora_A" in n], "lr": settings.lora_lr * settings.lora_a_lr_factor},
        {"params": [p for n, p in lora if "lora_A" not in n], "lr": settings.lora_lr},
    ]
    return _fit(peft_model, groups, items, settings.lora_steps, settings.lora_batch, settings.lora_lr,
                tokenizer.pad_token_id, seed, desc, progress)  # fmt: skip
