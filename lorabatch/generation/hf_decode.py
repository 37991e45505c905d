"""Continuous greedy decoding of mixed-adapter rows on one transformers model with PEFT adapters.

`generate()` decodes a batch until its longest row ends: on the demo bank most answers end within
a dozen tokens while a few rows run to `max_new_tokens`, so most of a batch's steps computed rows
that had already finished. Here a running batch of at most `max_rows` rows shares one KV cache;
every step

    logits [B, V] = model(last tokens [B, 1], cache, adapter_names [B]) ,  next = argmax logits

a row that emitted EOS (or reached `max_new_tokens`) leaves the batch (its cache rows are dropped),
and once fewer than half the rows are running, waiting rows are prefilled together and joined to
the batch: their cache and the running one are left-padded to one length (padding masked) and
concatenated along the batch. Each row is computed as `generate()` computes it — its own tokens,
its own positions (count of real tokens before it), padding masked, one logit per row — and PEFT's
`adapter_names` routes every row through its own adapter (`"__base__"`: none).

Greedy only, and only for models whose generation config asks for no logits processing (then
`generate()`'s greedy step is exactly the argmax of the last logits); `can_decode` says so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

BASE_ADAPTER = "__base__"

# Generation-config fields under which generate() changes the logits before its argmax.
_PROCESSING = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
}


def can_decode(model) -> bool:
    """True when `model`'s generation config adds no logits processing to greedy decoding and its
    attention sees every earlier token (no sliding window shorter than its context), the case
    `ContinuousDecoder` reproduces with a plain dynamic cache."""
    config = getattr(model, "generation_config", None)
    if config is not None and any(getattr(config, k, None) not in ok for k, ok in _PROCESSING.items()):
        return False
    window = getattr(model.config, "sliding_window", None)
    context = getattr(model.config, "max_position_embeddings", None)
    return window is None or (context is not None and window >= context)


@dataclass
class _Running:
    """The rows of the running batch, aligned with the cache's batch dimension."""

    rows: list[int] = field(default_factory=list)  # request indices
    names: list[str] = field(default_factory=list)  # PEFT adapter name of each row
    mask: object = None  # [B, T] attention mask (1: a real token), T = the cache's length
    last: object = None  # [B] the token each row feeds next
    cache: object = None


class ContinuousDecoder:
    """Greedy decoding of many prompts, each with its own adapter, `max_rows` at a time.

    `model()` returns the model to run and whether it is a `PeftModel` (holding the adapters rows
    name; it may change between steps, as adapters are loaded);
    `eos_ids` end a row (the EOS is kept), `pad_id` fills left padding.
    """

    def __init__(self, model, eos_ids, pad_id: int, max_new_tokens: int, max_rows: int):
        self.model = model  # a callable: () -> (the model to run, whether it is a PeftModel)
        self.eos = sorted({int(e) for e in eos_ids})
        self.pad_id = int(pad_id)
        self.max_new_tokens = int(max_new_tokens)
        self.max_rows = int(max_rows)
        self.steps = 0  # forward passes, prefills included

    def decode(self, prompts: list[list[int]], names: list[str], admit=None) -> list[list[int] | None]:
        """Generated ids of every prompt (up to and including EOS), in order. `names[i]`: the PEFT
        adapter of row i. `admit(rows, running)`, when given, is called with the request indices
        about to be prefilled and the adapter names of the running rows, and returns (accepted,
        deferred): deferred rows wait for a later prefill (e.g. until their adapter can be held),
        rows in neither list are dropped (e.g. their adapter failed to load) and get None."""
        import torch

        out: list[list[int] | None] = [None] * len(prompts)
        waiting = list(range(len(prompts)))
        run = _Running()
        with torch.inference_mode():
            while waiting or run.rows:
                joined = False
                if waiting and len(run.rows) <= self.max_rows // 2:
                    room = self.max_rows - len(run.rows)
                    chunk, waiting = waiting[:room], waiting[room:]
                    if admit is not None:
                        chunk, deferred = admit(chunk, list(run.names))
                        waiting = list(deferred) + waiting
                        if not chunk and not run.rows and deferred:
                            raise RuntimeError("no waiting row can be admitted while none is running")
                    if chunk:
                        for i in chunk:
                            out[i] = []
                        new = self._prefill(chunk, prompts, names)
                        self._collect(new, out)  # their first tokens (the running rows have theirs)
                        run = self._join(run, new)
                        joined = True
                if not joined and run.rows:
                    self._step(run)
                    self._collect(run, out)
        return out

    # -- steps ------------------------------------------------------------------------------
    def _forward(self, input_ids, mask, positions, cache, names):
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        model, peft = self.model()
        self.steps += 1
        if peft and is_routed(model):
            with routed(names):
                return model(**kwargs)
        if peft:
            kwargs["adapter_names"] = names
        return model(**kwargs)

    def _prefill(self, chunk: list[int], prompts, names) -> _Running:
        """The rows of `chunk` run through their prompts (left-padded): a batch of their own."""
        import torch
        from transformers import DynamicCache

        model, _ = self.model()
        device = next(model.parameters()).device
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        # As generate() builds them: count of real tokens before each one; padding gets 0.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        # Plain layers (no sliding window: `can_decode`), whose tensors `_collect` and `_join` edit.
        cache = DynamicCache()
        rnames = [names[i] for i in chunk]
        logits = self._forward(ids, mask, positions, cache, rnames).logits
        return _Running(list(chunk), rnames, mask, logits[:, -1].float().argmax(-1), cache)

    def _step(self, run: _Running) -> None:
        import torch

        run.mask = torch.cat([run.mask, run.mask.new_ones(len(run.rows), 1)], dim=1)
        positions = (run.mask.sum(-1, keepdim=True) - 1).long()
        logits = self._forward(run.last[:, None], run.mask, positions, run.cache, run.names).logits
        run.last = logits[:, -1].float().argmax(-1)

    def _collect(self, run: _Running, out) -> None:
        """Append each row's new token; rows that ended leave the batch (and the cache)."""
        import torch

        if not run.rows:
            return
        tokens = run.last.tolist()
        keep = []
        for b, (i, t) in enumerate(zip(run.rows, tokens)):
            out[i].append(t)
            if t not in self.eos and len(out[i]) < self.max_new_tokens:
                keep.append(b)
        if len(keep) == len(run.rows):
            return
        index = torch.tensor(keep, dtype=torch.long, device=run.last.device)
        run.rows = [run.rows[b] for b in keep]
        run.names = [run.names[b] for b in keep]
        run.last = run.last.index_select(0, index)
        run.mask = run.mask.index_select(0, index)
        if not keep:
            run.cache, run.mask = None, None
            return
        run.cache.batch_select_indices(index)
        # Columns that are padding for every row left are dropped from the cache.
        first = int(run.mask.any(0).long().argmax())
        if first:
            run.mask = run.mask[:, first:]
            for layer in run.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    @staticmethod
    def _join(run: _Running, new: _Running) -> _Running:
        """One batch of both: caches and masks left-padded to one length, then concatenated."""
        import torch
        import torch.nn.functional as F

        if not new.rows:
            return run
        if not run.rows:
            return new
        width = max(run.mask.shape[1], new.mask.shape[1])

        def pad(mask, cache):
            extra = width - mask.shape[1]
            if extra:
                mask = F.pad(mask, (extra, 0))
                for layer in cache.layers:
                    layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
                    layer.values = F.pad(layer.values, (0, 0, extra, 0))
            return mask

        run.mask, new.mask = pad(run.mask, run.cache), pad(new.mask, new.cache)
        for a, b in zip(run.cache.layers, new.cache.layers):
            a.keys = torch.cat([a.keys, b.keys], dim=0)
            a.values = torch.cat([a.values, b.values], dim=0)
        return _Running(
            run.rows + new.rows,
            run.names + new.names,
            torch.cat([run.mask, new.mask], dim=0),
            torch.cat([run.last, new.last], dim=0),
            run.cache,
        )


def group_mixed_batches(model) -> None:
    """Make the LoRA layers of `model` (a PeftModel) serve `adapter_names` batches run by run.

    PEFT's `_mixed_batch_forward` gathers each adapter's rows anew in every layer: a Python pass
    over all rows per adapter and a gathered copy of its sub-batch, which on the demo model took
    more time than the layers' matrix products. When a batch's rows come ordered by adapter (as
    both schedulers and the few-shot scorer order them), each adapter's rows are one slice
    [start, stop), found once per forward, and every layer computes, as PEFT does,

        result[start:stop] += s · B(A(x[start:stop]))      for each run of rows with adapter (A, B, s)

    on views of the slice. Adapters with a PEFT variant (DoRA, aLoRA, …) keep PEFT's own path.
    The rows' adapter names reach the layers through `routed(names)` around a forward (hooks
    registered here once) rather than through `adapter_names=`, for which PEFT registers and
    removes a hook on every layer in every forward (a walk of the whole model per step).
    Idempotent; call it again after loading adapters onto new modules."""
    import functools

    from peft.tuners.lora.layer import Linear

    for module in model.modules():
        if isinstance(module, Linear) and "_mixed_batch_forward" not in module.__dict__:
            module._mixed_batch_forward = functools.partial(_grouped_mixed_batch_forward, module)
            module.register_forward_pre_hook(_route, with_kwargs=True)
    model._lorabatch_routed = True


def is_routed(model) -> bool:
    """Whether `group_mixed_batches` prepared `model` (then `routed` gives its rows their adapters)."""
    return bool(getattr(model, "_lorabatch_routed", False))


_ROUTE: list = [None]  # the rows' adapter names of the forward in progress (this process runs one at a time)


@contextlib.contextmanager
def routed(names: list[str]):
    """Within: every LoRA layer prepared by `group_mixed_batches` runs row i with adapter names[i]."""
    _ROUTE[0] = names
    try:
        yield
    finally:
        _ROUTE[0] = None


def _route(module, args, kwargs):
    if _ROUTE[0] is not None:
        kwargs["adapter_names"] = _ROUTE[0]
    return args, kwargs


_LAST_RUNS: list = [None, None]  # the last adapter_names list seen (every layer gets the same one) and its runs


def _runs(names: list[str]) -> list[tuple[str, int, int]]:
    """(name, start, stop) of each run of equal names."""
    if _LAST_RUNS[0] is not names:
        runs, start = [], 0
        for i in range(1, len(names) + 1):
            if i == len(names) or names[i] != names[start]:
                runs.append((names[start], start, i))
                start = i
        _LAST_RUNS[:] = [names, runs]
    return _LAST_RUNS[1]


def _grouped_mixed_batch_forward(layer, x, *args, adapter_names, **kwargs):
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS

    if kwargs.get("alora_offsets") is not None or any(a in layer.lora_variant for a in set(adapter_names)):
        return type(layer)._mixed_batch_forward(layer, x, *args, adapter_names=adapter_names, **kwargs)
    for key in VARIANT_KWARG_KEYS:
        kwargs.pop(key, None)
    result = layer.base_layer(x, *args, **kwargs)
    for name, start, stop in _runs(adapter_names):
        if name == BASE_ADAPTER or name not in layer.lora_A:
            continue
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        sub = layer.lora_dropout[name](x[start:stop].to(lora_a.weight.dtype))
        result[start:stop] += (lora_b(lora_a(sub)) * layer.scaling[name]).to(result.dtype)
    return result


def copy_into_slot(model, slot: str, weights: dict, cache: dict) -> bool:
    """Copy an adapter's tensors (keys as in adapter_model.safetensors, torch tensors) into the
    parameters of PEFT adapter `slot` of `model`; False, copying nothing, unless the keys and shapes
    are exactly the slot's. PEFT names a parameter as the file does with the adapter's name
    inserted (`...lora_A.<slot>.weight`); `set_peft_model_state_dict` ends with the same copies
    after a walk of the whole model's state (on the demo model ~5x the copies' time).
    `cache` keeps each slot's {file key: parameter}."""
    import torch

    if slot not in cache:
        marker = f".{slot}."
        cache[slot] = {n.replace(marker, "."): p for n, p in model.named_parameters() if marker in n}
    params = cache[slot]
    if weights.keys() != params.keys() or any(tuple(weights[k].shape) != tuple(params[k].shape) for k in params):
        return False
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(weights[key])
    return True
