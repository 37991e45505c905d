"""Teacher-forced few-shot loss of an adapter held in memory: forward passes only.

For k examples (x_e, y_e), with y_e = output[0] followed by EOS (what a trained adapter learns to
emit, so an answer in the wrong length or format costs loss) and the prompt x_e tokenized exactly
as generation sees it (raw input, BOS added):

    loss(θ) = (1/k) Σ_e (1/|y_e|) Σ_t −log p_θ(y_e,t | x_e, y_e,<t)

The base model is loaded once; an adapter is copied into a PEFT slot of its rank (one slot per
rank, created on first use, lora_alpha chosen so the scaling α/r equals the bank's) and the k
examples run in batches of `batch_size`. Every call counts its forward passes.
"""

from __future__ import annotations

import numpy as np

from lorabatch.examples import IGNORE, collate, encode_examples


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
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.peft = None
        self.slots: dict[int, str] = {}
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

    def _slot(self, rank: int) -> str:
        """The PEFT adapter holding rank-`rank` tensors (created on first use)."""
        if rank in self.slots:
            return self.slots[rank]
        from peft import LoraConfig, get_peft_model

        from lorabatch.synthesis.tensors import scaling_of

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
        name = f"r{rank}"
        if self.peft is None:
            self.peft = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        self.peft.eval()
        self.slots[rank] = name
        return name

    def load(self, tensors: dict[str, np.ndarray]) -> str:
        """Copy an adapter's tensors (names as in adapter_model.safetensors) into its rank's slot."""
        import torch
        from peft import set_peft_model_state_dict

        rank = next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight"))
        name = self._slot(int(rank))
        dtype = next(self.base.parameters()).dtype
        state = {k: torch.as_tensor(np.ascontiguousarray(v)).to(self.device, dtype) for k, v in tensors.items()}
        result = set_peft_model_state_dict(self.peft, state, adapter_name=name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise ValueError(f"adapter tensors do not fit the base model: unexpected {unexpected[:3]}")
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

        from lorabatch.scoring.rouge import rouge_l

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

    def _batch_losses(self, model, batch) -> np.ndarray:
        import torch.nn.functional as F

        batch = collate(batch, self.pad_id)
        input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        logits = model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        targets = labels[:, 1:].to(self.device)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        counts = (targets != IGNORE).sum(dim=1).clamp(min=1)
        return (nll.sum(dim=1) / counts).cpu().numpy().astype(np.float64)
