"""Training of the demo bank on CPU: pre-training of the base model, then one LoRA per task.

Both use padded mini-batches of token ids (`lorabatch.training.batches`). Pre-training is
next-token prediction on documents of the generic mixture, here in process; the builder trains
the task LoRAs on Ray Train (`lorabatch.training`), the loss on the output tokens (and EOS) only,
the prompt being the raw `input` with BOS, exactly what generation later sees. `train_lora` is the
same LoRA recipe in this process: the reference the Ray Train path is tested against.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from lorabatch.examples import collate, encode_examples
from lorabatch.progress import ProgressLine
from lorabatch.training.batches import (
    BatchOrder,
    answer_tokens,
    lr_factor,
)
from lorabatch.training.config import TrainingConfig
from lorabatch.training.lora import LoraSpec, lora_parameter_groups, reset_lora
from lorabatch.training.lora import lora_model as wrap

__all__ = ["TrainSettings", "instruct", "lora_model", "pretrain", "reset_lora", "train_lora"]


@dataclass(frozen=True)
class TrainSettings:
    """Steps, batch sizes and learning rates of pre-training and of each task's LoRA."""

    pretrain_steps: int = 500
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    sentences_per_document: int = 4
    # the instruction phase (builder 5): every weight, loss on the house-style answers only
    instruct_steps: int = 300
    instruct_batch: int = 32
    instruct_lr: float = 1e-3
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

    def training_config(self, threads: int, parallel_tasks: int = 1) -> TrainingConfig:
        """The task LoRAs' recipe as a `TrainingConfig`: one worker of `threads` threads per task,
        one report, with the checkpoint, at the end (a build is not resumed, and each report costs
        a round trip to Ray Train's controller)."""
        return TrainingConfig(
            steps=self.lora_steps,
            batch_size=self.lora_batch,
            lr=self.lora_lr,
            lora_a_lr_factor=self.lora_a_lr_factor,
            workers=1,
            threads_per_worker=threads,
            parallel_tasks=parallel_tasks,
            use_gpu=False,
            checkpoint_every=self.lora_steps,
            report_every=self.lora_steps,
            max_failures=1,
        )

    def lora_spec(self, base_name: str, init_seed: int) -> LoraSpec:
        return LoraSpec(self.lora_rank, float(self.lora_alpha), tuple(self.lora_targets), base_name, init_seed)


def encode_documents(tokenizer, sentences: list[str], per_document: int, seed: int) -> list[list[int]]:
    """Pre-training documents: BOS + a few random sentences of the mixture + EOS."""
    rng = random.Random(f"{seed}:documents")
    order = list(range(len(sentences)))
    rng.shuffle(order)
    docs = [" ".join(sentences[i] for i in order[k : k + per_document]) for k in range(0, len(order), per_document)]
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(docs)["input_ids"]]


def _fit(
    model, params, items, steps: int, batch: int, lr: float, pad_id: int, seed: int, desc: str, progress: bool
) -> list[float]:
    """AdamW over shuffled epochs of `items` (`params`: tensors, or param groups with their own
    `lr`); returns the loss of every step."""
    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, max(1, steps // 10)))
    model.train()
    losses: list[float] = []
    order: list[int] = []
    line = ProgressLine(desc, steps, "steps", progress)
    for _ in range(steps):
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
        line.update(1, note=f"loss {losses[-1]:.3f}")
    line.close()
    model.eval()
    return losses


def _fit_base(model, tokenizer, items, steps: int, batch: int, lr: float, seed: int, desc: str, progress: bool):
    """`_fit` on every trainable weight of the base model, from torch seed `seed`."""
    import torch

    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    return _fit(model, params, items, steps, batch, lr, tokenizer.pad_token_id, seed, desc, progress)


def pretrain(
    model, tokenizer, sentences: list[str], settings: TrainSettings, seed: int, progress: bool = True
) -> list[float]:
    """Next-token pre-training of the base model on the generic mixture; returns step losses."""
    docs = encode_documents(tokenizer, sentences, settings.sentences_per_document, seed)
    items = [(ids, 1) for ids in docs]  # BOS is never a target
    s = settings
    return _fit_base(
        model, tokenizer, items, s.pretrain_steps, s.pretrain_batch, s.pretrain_lr, seed, "pre-train base", progress
    )


def instruct(
    model, tokenizer, rows: list[dict], settings: TrainSettings, seed: int, progress: bool = True
) -> list[float]:
    """The instruction phase of the base model (`lorabatch.demo.instruct`): next-token training
    of every weight on `rows`, the loss on the answer tokens and EOS only; returns step losses."""
    items = encode_examples(tokenizer, rows)
    s = settings
    return _fit_base(
        model, tokenizer, items, s.instruct_steps, s.instruct_batch, s.instruct_lr, seed, "instruct base", progress
    )


def lora_model(model, settings: TrainSettings, base_name: str):
    """Wrap `model` in a PEFT LoRA (q/k/v, no bias, no dropout) whose config names `base_name`."""

    return wrap(model, settings.lora_spec(base_name, init_seed=0))


def train_lora(
    peft_model,
    tokenizer,
    rows: list[dict],
    settings: TrainSettings,
    init_seed: int,
    seed: int,
    desc: str,
    progress: bool = True,
) -> list[float]:
    """Train the adapter of `peft_model` on one task's train rows in this process, from a fresh
    init drawn from `init_seed` (tasks sharing it start from one lora_A); `seed` orders the
    examples. The recipe of `lorabatch.training.worker` with one worker; returns the step losses."""
    import torch
    from tqdm.auto import tqdm

    reset_lora(peft_model, init_seed)
    if settings.lora_steps == 0:
        return []
    config = settings.training_config(threads=torch.get_num_threads())
    items = encode_examples(tokenizer, rows)
    optimizer = torch.optim.AdamW(
        lora_parameter_groups(peft_model, config.lr, config.lora_a_lr_factor), lr=config.lr, weight_decay=0.0
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    order = BatchOrder(len(items), config.batch_size, seed)
    peft_model.train()
    losses: list[float] = []
    for step in tqdm(range(config.steps), desc=desc, unit="step", leave=False, disable=not progress or None):
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(
                step, config.steps, config.warmup_steps(), config.min_lr_fraction
            )
        batch = [items[i] for i in order.next()]
        loss = peft_model(**collate(batch, tokenizer.pad_token_id), num_items_in_batch=answer_tokens(batch)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    peft_model.eval()
    return losses
