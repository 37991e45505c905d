"""transformers + PEFT backend: a Ray Data actor pool generating mixed-adapter batches.

Each actor loads the base model once and its adapters on demand (least recently used unloaded
beyond `hf.max_resident_adapters`). A batch may mix adapters and base rows: PEFT's
`adapter_names=[...]` routes each row through its own adapter (`"__base__"`: none); tests check
that rows of a mixed batch equal one-adapter-at-a-time outputs. Prompts are left-padded; rows are
sorted by adapter, then length, to keep padding small.

Two schedulers (`hf.scheduler`): 'continuous' (greedy decoding; `hf_decode.ContinuousDecoder`:
up to `hf.max_rows` rows share one KV cache, a finished row leaves at once and waiting rows join)
and 'generate' (`generate()` on batches of `batch_size` rows, each batch until its longest row
ends; sampling always takes this one).

Failures stay per row: an adapter that does not load fails its rows only; a batch whose
generation raises is retried row by row so that only the faulty rows carry the error.
"""

from __future__ import annotations

from collections import OrderedDict

from lorabatch.generation.hf_decode import (
    BASE_ADAPTER,
    ContinuousDecoder,
    can_decode,
    copy_into_slot,
    group_mixed_batches,
)
from lorabatch.generation.schema import WORK_COLUMNS, generation_schema
from lorabatch.raysession import actor_fault_tolerance


class HFGenerator:
    """Ray Data callable class: pyarrow batch of prepared rows -> pyarrow batch of generation rows."""

    def __init__(self, base_model_path: str, settings: dict, decoding: dict, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = settings["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = settings["dtype"]
        self.tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            base_model_path,
            dtype=(dtype if dtype == "auto" else getattr(torch, dtype)),
            trust_remote_code=trust_remote_code,
        ).to(self.device)
        self.model.eval()
        self.peft = None
        self.names: OrderedDict[str, str] = OrderedDict()  # adapter path -> PEFT adapter name
        self.counter = 0
        self.signatures: dict[str, str] = {}  # PEFT adapter name -> its LoRA config (`_lora_signature`)
        self.free: list[str] = []  # slots whose adapter was dropped
        self.slot_params: dict[str, dict] = {}
        self.max_resident = int(settings["max_resident_adapters"])
        self.scheduler = settings.get("scheduler", "continuous")
        self.max_rows = int(settings.get("max_rows", 256))
        decoding = dict(decoding)
        self.batch_size = int(decoding.pop("batch_size"))
        torch.manual_seed(int(decoding.pop("seed")))
        self.decoding = decoding
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        if self.pad_id is None:
            self.pad_id = 0

    # -- adapters ---------------------------------------------------------------------------
    def _adapter_name(self, path: str, pinned=frozenset(), reuse: bool = False) -> str:
        """Load `path` if needed (unloading the least recently used beyond the limit, except the
        adapter names in `pinned`); with `reuse`, into the slot of such an adapter (`_reuse_slot`)."""
        if path in self.names:
            self.names.move_to_end(path)
            return self.names[path]
        if reuse:
            name = self._reuse_slot(path, pinned)
            if name is not None:
                return name
        from peft import PeftModel

        self.counter += 1
        name = f"a{self.counter}"
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False)
            self.peft.eval()
        else:
            self.peft.load_adapter(path, adapter_name=name, is_trainable=False)
        if self.scheduler == "continuous":
            group_mixed_batches(self.peft)
        self.names[path] = name
        self.signatures[name] = _lora_signature(path)
        for old_path, old_name in list(self.names.items()):
            if len(self.names) <= self.max_resident:
                break
            if old_name not in pinned and old_path != path:
                del self.names[old_path]
                self.peft.delete_adapter(old_name)
        return name

    def _reuse_slot(self, path: str, pinned) -> str | None:
        """Copy `path`'s weights into the PEFT slot of the least recently used resident adapter
        that is not in `pinned` and has the same LoRA config, when `max_resident_adapters` are
        held (None otherwise, or when none fits). PEFT's `load_adapter` is the same weight copy
        (`set_peft_model_state_dict`) after it injects a new set of LoRA modules, which walks the
        whole model; on the demo model that walk was most of an adapter's load time."""
        if self.peft is None or len(self.names) < self.max_resident:
            return None
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        signature = _lora_signature(path)
        slot = next((n for n in self.free if self.signatures[n] == signature), None)
        if slot is None:
            old = next((p for p, n in self.names.items() if n not in pinned and self.signatures[n] == signature), None)
            if old is None:
                return None
            slot = self.names.pop(old)
        else:
            self.free.remove(slot)
        try:
            weights = load_peft_weights(path, device=str(self.device))
            if not copy_into_slot(self.peft, slot, weights, self.slot_params):
                result = set_peft_model_state_dict(self.peft, weights, adapter_name=slot)
                unexpected = [k for k in getattr(result, "unexpected_keys", None) or [] if "lora_" in k]
                if unexpected:
                    raise ValueError(f"adapter tensors do not fit its config: unexpected {unexpected[:3]}")
        except Exception:
            self.free.append(slot)  # its old weights are gone: only a later copy may use it
            raise
        self.names[path] = slot
        return slot

    # -- generation -------------------------------------------------------------------------
    def _generate(self, prompts: list[list[int]], adapters: list[str]) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        kwargs = dict(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=self.decoding["max_new_tokens"],
            pad_token_id=self.pad_id,
        )
        if self.decoding["temperature"] > 0:
            kwargs.update(do_sample=True, temperature=self.decoding["temperature"], top_p=self.decoding["top_p"])
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            if self.peft is None:
                out = self.model.generate(**kwargs)
            else:
                out = self.peft.generate(**kwargs, adapter_names=adapters)
        eos = self._eos_ids()
        results = []
        for row in out[:, width:].tolist():
            tokens = []
            for t in row:
                tokens.append(t)
                if t in eos:
                    break
            # generate() pads finished rows with pad_id; the EOS check above cut those off.
            results.append(tokens)
        return results

    def _chunks(self, rows: list[dict]) -> list[list[int]]:
        """Row indices in generation batches: at most `batch_size` rows and at most
        `max_resident` distinct adapters each, so no adapter of a batch is unloaded before the
        batch runs. Rows sharing an adapter are kept together."""
        order = sorted(
            range(len(rows)), key=lambda i: (rows[i].get("adapter_path") or "", len(rows[i]["prompt_token_ids"]))
        )
        chunks, current, adapters = [], [], set()
        for i in order:
            path = rows[i].get("adapter_path")
            grows = path is not None and path not in adapters
            if current and (len(current) >= self.batch_size or (grows and len(adapters) >= self.max_resident)):
                chunks.append(current)
                current, adapters = [], set()
            current.append(i)
            if path is not None:
                adapters.add(path)
        if current:
            chunks.append(current)
        return chunks

    def _continuous(self) -> bool:
        return self.scheduler == "continuous" and self.decoding["temperature"] == 0 and can_decode(self.model)

    def _decode_continuous(self, rows: list[dict], errors: list, outputs: list) -> None:
        """Every row through `ContinuousDecoder`, in order of adapter then prompt length; an
        adapter is loaded when its first row is admitted and kept while rows of it run."""
        order = sorted(
            range(len(rows)), key=lambda i: (rows[i].get("adapter_path") or "", len(rows[i]["prompt_token_ids"]))
        )
        names = [BASE_ADAPTER] * len(order)
        paths = [rows[i].get("adapter_path") for i in order]

        def admit(chunk: list[int], running: list[str]):
            pinned = set(running)
            accepted = []
            for n, k in enumerate(chunk):
                path = paths[k]
                if path is not None:
                    if path not in self.names and len(self.names) >= self.max_resident:
                        if set(self.names.values()) <= pinned:
                            return accepted, chunk[n:]  # wait until an adapter's rows are done
                    try:
                        names[k] = self._adapter_name(path, frozenset(pinned), reuse=True)
                    except Exception as err:  # recorded on the row
                        errors[order[k]] = f"adapter {path} failed to load: {type(err).__name__}: {err}"
                        continue
                    pinned.add(names[k])
                accepted.append(k)
            return accepted, []

        decoder = ContinuousDecoder(
            lambda: (self.model, False) if self.peft is None else (self.peft, True),
            self._eos_ids(),
            self.pad_id,
            self.decoding["max_new_tokens"],
            self.max_rows,
        )
        try:
            got = decoder.decode([rows[i]["prompt_token_ids"] for i in order], names, admit)
        except Exception:  # the faulty rows are found one by one
            for k, i in enumerate(order):
                if errors[i] is None:
                    try:
                        outputs[i] = self._generate([rows[i]["prompt_token_ids"]], [names[k]])[0]
                    except Exception as err:
                        errors[i] = f"generation failed: {type(err).__name__}: {err}"
            return
        for k, i in enumerate(order):
            if errors[i] is None:
                outputs[i] = got[k]

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def __call__(self, batch):
        rows = batch.to_pylist()
        errors: list[str | None] = [None] * len(rows)
        outputs: list[list[int] | None] = [None] * len(rows)
        if self._continuous():
            self._decode_continuous(rows, errors, outputs)
            return self._table(rows, outputs, errors)
        for chunk in self._chunks(rows):
            names: dict[int, str] = {}
            for i in chunk:
                path = rows[i].get("adapter_path")
                if path is None:
                    names[i] = BASE_ADAPTER
                    continue
                try:
                    names[i] = self._adapter_name(path)
                except Exception as err:  # recorded on the row
                    errors[i] = f"adapter {path} failed to load: {type(err).__name__}: {err}"
            ready = [i for i in chunk if errors[i] is None]
            if not ready:
                continue
            try:
                gen = self._generate([rows[i]["prompt_token_ids"] for i in ready], [names[i] for i in ready])
                for i, g in zip(ready, gen):
                    outputs[i] = g
            except Exception:  # isolate the faulty rows
                for i in ready:
                    try:
                        outputs[i] = self._generate([rows[i]["prompt_token_ids"]], [names[i]])[0]
                    except Exception as err:
                        errors[i] = f"generation failed: {type(err).__name__}: {err}"
        return self._table(rows, outputs, errors)

    def _table(self, rows, outputs, errors):
        import pyarrow as pa

        texts = self.tokenizer.batch_decode([o or [] for o in outputs], skip_special_tokens=True)
        out = []
        for r, o, t, e in zip(rows, outputs, texts, errors):
            out.append(
                {
                    **{k: r.get(k) for k in WORK_COLUMNS},
                    "prediction": t if e is None else None,
                    "generated_token_ids": o or [],
                    "num_input_tokens": len(r["prompt_token_ids"]),
                    "num_generated_tokens": len(o or []),
                    "backend": "hf",
                    "error": e,
                }
            )
        return pa.Table.from_pylist(out, schema=generation_schema())


def _lora_signature(path: str) -> str:
    """An adapter's adapter_config.json without the fields that do not shape its PEFT modules:
    adapters with equal signatures fit the same PEFT slot."""
    import json
    from pathlib import Path

    config = json.loads((Path(path) / "adapter_config.json").read_text())
    for key in ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping"):
        config.pop(key, None)
    return json.dumps(config, sort_keys=True)


def decoding_args(cfg, seed: int) -> dict:
    """The decoding arguments `HFGenerator` takes from a GenerationConfig and the run's seed."""
    return dict(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        batch_size=cfg.batch_size,
        seed=seed,
    )


def rows_per_call(cfg, scheduler: str) -> int:
    """Rows an actor gets per Ray batch. An actor sees several of our batches per call so adapters
    are reused; the continuous scheduler keeps its running batch full across all of them."""
    return cfg.hf.rows_per_call if scheduler == "continuous" else cfg.batch_size * 4


class HFBackend:
    name = "hf"

    def __init__(self, config, context):
        self.config = config
        self.context = context

    def generate(self, rows):
        import ray

        cfg, ctx = self.config, self.context
        num_gpus = cfg.resources.num_gpus if cfg.resources.num_gpus is not None else (1 if ctx.has_gpu else 0)
        return rows.map_batches(
            HFGenerator,
            fn_constructor_args=(
                ctx.base_model_path,
                cfg.hf.model_dump(),
                decoding_args(cfg, ctx.seed),
                ctx.trust_remote_code,
            ),
            batch_format="pyarrow",
            batch_size=rows_per_call(cfg, cfg.hf.scheduler),
            compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
            num_cpus=cfg.resources.num_cpus,
            num_gpus=num_gpus,
            **actor_fault_tolerance(),
        )
