"""Teacher-forced few-shot loss of an adapter held in memory: forward passes only.

For k examples (x_e, y_e), with y_e = output[0] followed by EOS (what a trained adapter learns to
emit, so an answer in the wrong length or format costs loss) and the prompt x_e tokenized exactly
as generation sees it (raw input, BOS added):

    loss(θ) = (1/k) Σ_e (1/|y_e|) Σ_t −log p_θ(y_e,t | x_e, y_e,<t)

The base model is loaded once; an adapter is copied into a PEFT slot of its rank (created on
first use, lora_alpha chosen so the scaling α/r equals the bank's) and the k examples run in
batches of `batch_size`. Every call counts its forward passes.

`scores` evaluates C adapters at once (`candidates_per_pass`): each gets its own slot, and their
C·k rows run in one batch, PEFT's `adapter_names` routing row (c, e) through adapter c — the loss
as C·k rows of the same right-padded layout as one adapter's k, the greedy answers through the
generation backend's `ContinuousDecoder` (left-padded, as `generate()` serves them).
"""

from __future__ import annotations

import numpy as np

from lorabatch.examples import IGNORE, collate, encode_examples
from lorabatch.generation.hf_decode import (
    BASE_ADAPTER,
    ContinuousDecoder,
    can_decode,
    copy_into_slot,
    group_mixed_batches,
    routed,
)
from lorabatch.scoring.rouge import rouge_l
from lorabatch.synthesis.tensors import scaling_of


class FewShotLoss:
    """The loss of in-memory adapters on a fixed set of examples, with the base model loaded once."""

    def __init__(
        self,
        base_model_path: str,
        adapter_config: dict,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
        trust_remote_code: bool = False,
        candidates_per_pass: int = 1,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            base_model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
        model = model.to(self.device)
        model.eval()
        self.base = model
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.adapter_config = dict(adapter_config)
        self.batch_size = int(batch_size)
        self.candidates_per_pass = int(candidates_per_pass)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.peft = None
        self.slots: dict[tuple[int, int], str] = {}
        self.slot_params: dict[str, dict] = {}
        self.items: list[tuple[list[int], int]] = []
        self.last_answers: list[str] = []
        self.forward_passes = 0

    def set_examples(self, rows: list[dict]) -> None:
        """The examples every following `loss` / `rouge` call is computed on."""
        if not rows:
            raise ValueError("few-shot loss needs at least one example")
        self.items = encode_examples(self.tokenizer, rows, self.max_positions)
        self.references = [r["output"][0] for r in rows]
        # Decoding past twice the longest answer only lengthens a wrong one (its Rouge-L precision
        # is already lost), so the few-shot generations stop there.
        self.decode_budget = 2 * max(len(ids) - n for ids, n in self.items) + 8

    def _slot(self, rank: int, index: int = 0) -> str:
        """The `index`-th PEFT adapter holding rank-`rank` tensors (created on first use)."""
        if (rank, index) in self.slots:
            return self.slots[(rank, index)]
        from peft import LoraConfig, get_peft_model

        cfg = self.adapter_config
        alpha = scaling_of(cfg) * (rank**0.5 if cfg.get("use_rslora") else rank)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=cfg.get("target_modules"),
            use_rslora=bool(cfg.get("use_rslora", False)),
            fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
            lora_dropout=0.0,
            bias="none",
            task_type=cfg.get("task_type", "CAUSAL_LM"),
        )
        name = f"r{rank}" if index == 0 else f"r{rank}-{index}"
        if self.peft is None:
            self.peft = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        self.peft.eval()
        group_mixed_batches(self.peft)
        self.slots[(rank, index)] = name
        return name

    def load(self, tensors: dict[str, np.ndarray], index: int = 0, activate: bool = True) -> str:
        """Copy an adapter's tensors (names as in adapter_model.safetensors) into its rank's
        `index`-th slot, made the active adapter (unless `activate` is False: rows then name it)."""
        import torch
        from peft import set_peft_model_state_dict

        rank = next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight"))
        name = self._slot(int(rank), index)
        dtype = next(self.base.parameters()).dtype
        state = {k: torch.as_tensor(np.ascontiguousarray(v)).to(self.device, dtype) for k, v in tensors.items()}
        if not copy_into_slot(self.peft, name, state, self.slot_params):
            result = set_peft_model_state_dict(self.peft, state, adapter_name=name)
            unexpected = getattr(result, "unexpected_keys", None) or []
            if unexpected:
                raise ValueError(f"adapter tensors do not fit the base model: unexpected {unexpected[:3]}")
        if activate:
            self.peft.set_adapter(name)
        return name

    def loss(self, tensors: dict[str, np.ndarray] | None) -> float:
        """Mean per-example answer loss with `tensors` as the adapter (None: the base model)."""
        if not self.items:
            raise ValueError("call set_examples first")
        losses = self.example_losses(tensors)
        return float(np.mean(losses))

    def rouge(self, tensors: dict[str, np.ndarray] | None, max_new_tokens: int) -> float:
        """Mean Rouge-L (stemmed, against output[0]) of greedy generations for the examples'
        prompts with `tensors` as the adapter — the evaluation's metric, on these examples — at
        most min(max_new_tokens, 2 × the longest answer + 8) tokens each. Every decoding step
        counts as a forward pass. The answers stay in `last_answers`."""
        import torch

        model, context = self._model_with(tensors)
        eos = self.tokenizer.eos_token_id
        scores, answers = [], []
        with torch.inference_mode(), context:
            for start in range(0, len(self.items), self.batch_size):
                batch = self.items[start : start + self.batch_size]
                prompts = [ids[:n] for ids, n in batch]
                width = max(len(p) for p in prompts)
                input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(prompts), width), dtype=torch.long)
                for row, p in enumerate(prompts):  # left-padded, as generation serves them
                    input_ids[row, width - len(p) :] = torch.tensor(p)
                    mask[row, width - len(p) :] = 1
                out = model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=min(max_new_tokens, self.decode_budget),
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.pad_id,
                )[:, width:].tolist()
                self.forward_passes += max((len(o) for o in out), default=0)
                for o, ref in zip(out, self.references[start : start + len(batch)]):
                    tokens = o[: o.index(eos) + 1] if eos in o else o
                    answers.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
                    scores.append(rouge_l(answers[-1], [ref]))
        self.last_answers = answers
        return float(np.mean(scores))

    def scores(self, adapters: list, criterion: str = "loss", max_new_tokens: int = 256) -> list[dict]:
        """{"loss", and for criterion 'rouge' "rouge_l", "answers"} of every adapter of `adapters`
        (tensors, or None for the base model), `candidates_per_pass` of them per batch: the
        values `loss` and `rouge` give one adapter at a time (the loss to float rounding, the
        greedy answers token for token)."""
        out = []
        for start in range(0, len(adapters), self.candidates_per_pass):
            out += self._scores_together(adapters[start : start + self.candidates_per_pass], criterion, max_new_tokens)
        return out

    def _scores_together(self, adapters: list, criterion: str, max_new_tokens: int) -> list[dict]:
        import torch

        if not self.items:
            raise ValueError("call set_examples first")
        names = [BASE_ADAPTER if t is None else self.load(t, index=c, activate=False) for c, t in enumerate(adapters)]
        k = len(self.items)
        rows = [(item, name) for name in names for item in self.items]
        model = self.base if self.peft is None else self.peft
        peft = self.peft is not None
        losses = []
        with torch.inference_mode():
            # Rows of one example batch stay together: the same right-padded layout as `loss`.
            for start in range(0, k, self.batch_size):
                batch = [(name, self.items[start : start + self.batch_size]) for name in names]
                items = [item for _, part in batch for item in part]
                row_names = [name for name, part in batch for _ in part]
                losses.append(self._batch_losses(model, items, row_names if peft else None).reshape(len(names), -1))
                self.forward_passes += 1
        losses = np.concatenate(losses, axis=1)  # [C, k]
        out = [{"loss": float(np.mean(row))} for row in losses]
        if criterion != "rouge":
            return out
        if not can_decode(self.base):
            for c, tensors in enumerate(adapters):
                out[c]["rouge_l"] = self.rouge(tensors, max_new_tokens)
                out[c]["answers"] = self.last_answers
            return out
        decoder = ContinuousDecoder(
            lambda: (model, peft),
            [self.tokenizer.eos_token_id],
            self.pad_id,
            min(max_new_tokens, self.decode_budget),
            len(rows),
        )
        got = decoder.decode([ids[:n] for (ids, n), _ in rows], [name for _, name in rows])
        self.forward_passes += decoder.steps
        for c in range(len(names)):
            answers = [self.tokenizer.decode(t, skip_special_tokens=True) for t in got[c * k : (c + 1) * k]]
            out[c]["answers"] = answers
            out[c]["rouge_l"] = float(np.mean([rouge_l(a, [r]) for a, r in zip(answers, self.references)]))
        return out

    def _model_with(self, tensors: dict[str, np.ndarray] | None):
        """(model, context) that runs with `tensors` as the adapter, or with none (base) inside the context."""
        import contextlib

        if tensors is not None:
            self.load(tensors)
            return self.peft, contextlib.nullcontext()
        if self.peft is None:
            return self.base, contextlib.nullcontext()
        return self.peft, self.peft.disable_adapter()

    def example_losses(self, tensors: dict[str, np.ndarray] | None) -> np.ndarray:
        import torch

        model, context = self._model_with(tensors)
        out = []
        with torch.inference_mode(), context:
            for start in range(0, len(self.items), self.batch_size):
                batch = self.items[start : start + self.batch_size]
                out.append(self._batch_losses(model, batch))
                self.forward_passes += 1
        return np.concatenate(out)

    def _batch_losses(self, model, batch, adapter_names=None) -> np.ndarray:
        import torch.nn.functional as F

        batch = collate(batch, self.pad_id)
        input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        inputs = dict(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
        if adapter_names is None:
            logits = model(**inputs).logits.float()
        else:
            with routed(adapter_names):
                logits = model(**inputs).logits.float()
        targets = labels[:, 1:].to(self.device)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        counts = (targets != IGNORE).sum(dim=1).clamp(min=1)
        return (nll.sum(dim=1) / counts).cpu().numpy().astype(np.float64)
