"""Checks made before any row reaches a backend, so that a bad row fails alone and clearly.

* Adapters: the directory exists, `adapter_config.json` is a LoRA config, the weights are a
  complete safetensors file (no pickle is ever read), every LoRA tensor belongs to a module the
  base model has, with shapes that fit it (A [r, in], B [out, r]), and at least one module is
  adapted. An adapter that targets no module of the model is an error, never a silent base run.
* Prompts: tokenized once per (task, example) with the base model's tokenizer (BOS added, as the
  paper's raw prompts); a prompt longer than the input limit is an error for its rows.

Only safetensors headers are read here (a few KiB per file), not the tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SafetensorsHeaderError, read_safetensors_header
from lorabatch.errors import ConfigError


@dataclass
class RunContext:
    """What every backend needs to know about the run, resolved once on the driver."""

    run_dir: str
    base_model_path: str
    max_new_tokens: int
    input_limit: int
    max_positions: int | None
    backend: str
    max_lora_rank: int | None = None
    has_gpu: bool = False
    seed: int = 0
    # A base-model module that the run's usable adapters adapt (None: no row has a usable adapter).
    lora_module: str | None = None
    # bank.trust_remote_code: passed to transformers / vLLM when they load the base model.
    trust_remote_code: bool = False
    modules: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)


def base_model_modules(base_model_path: str | Path) -> dict[str, tuple[int, int]]:
    """{module path: (out_features, in_features)} of every 2-D `.weight` in the base checkpoint."""
    base = Path(base_model_path)
    index = base / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({base / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(base.glob("*.safetensors"))
    if not files:
        raise ConfigError([f"base model {base} has no safetensors weights"], str(base))
    modules = {}
    for f in files:
        for name, info in read_safetensors_header(f)[0].items():
            if name.endswith(".weight") and len(info["shape"]) == 2:
                modules[name[: -len(".weight")]] = tuple(int(x) for x in info["shape"])
    return modules


def _lora_module(tensor_name: str) -> tuple[str, str] | None:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> ('model.layers.0.self_attn.q_proj', 'A')."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in tensor_name:
            module = tensor_name.split(marker)[0]
            module = module.removeprefix("base_model.model.")
            return module, part[-1]
    return None


def check_adapter(
    path: str | None, modules: dict[str, tuple[int, int]], max_rank: int | None = None
) -> tuple[int | None, str | None]:
    """(rank, None) for a usable LoRA adapter directory, else (None, a message saying what is wrong)."""
    rank, error, _ = inspect_adapter(path, modules, max_rank)
    return rank, error


def inspect_adapter(path, modules, max_rank=None) -> tuple[int | None, str | None, list[str]]:
    """`check_adapter` plus the module paths a usable adapter adapts."""
    if path is None:
        return None, None, []
    d = Path(path)
    if not d.is_dir():
        return None, f"adapter directory does not exist: {d}", []
    cfg_path = d / ADAPTER_CONFIG
    if not cfg_path.is_file():
        return None, f"adapter {d} has no {ADAPTER_CONFIG}", []
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"adapter {d}: {ADAPTER_CONFIG} is not valid JSON ({err})", []
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        return (
            None,
            f"adapter {d}: not a LoRA adapter (peft_type={cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r})",
            [],
        )
    weights = d / ADAPTER_WEIGHTS
    if not weights.is_file():
        other = [p.name for p in d.glob("adapter_model.*")]
        hint = f" (found {other}: only safetensors weights are read)" if other else ""
        return None, f"adapter {d} has no {ADAPTER_WEIGHTS}{hint}", []
    try:
        header, _ = read_safetensors_header(weights)
    except (OSError, SafetensorsHeaderError) as err:
        return None, f"adapter {d}: {err}", []
    adapted: dict[str, dict[str, list[int]]] = {}
    for name, info in header.items():
        found = _lora_module(name)
        if found:
            adapted.setdefault(found[0], {})[found[1]] = info["shape"]
    if not adapted:
        return None, f"adapter {d} holds no LoRA weights (no lora_A / lora_B tensors)", []
    unknown = sorted(m for m in adapted if m not in modules)
    if len(unknown) == len(adapted):
        return (
            None,
            (
                f"adapter {d} targets no module of the base model (target_modules="
                f"{cfg.get('target_modules')!r}; e.g. {unknown[0]!r} does not exist)"
            ),
            [],
        )
    if unknown:
        return None, f"adapter {d} adapts modules the base model does not have: {unknown[:3]}", []
    rank = None
    for module, parts in adapted.items():
        if set(parts) != {"A", "B"}:
            return None, f"adapter {d}: module {module} has lora_{'A' if 'A' in parts else 'B'} only", []
        (r, n_in), (n_out, r_b) = parts["A"], parts["B"]
        out_features, in_features = modules[module]
        if r != r_b or n_in != in_features or n_out != out_features:
            return (
                None,
                (
                    f"adapter {d}: {module} has A {parts['A']} and B {parts['B']}, which do not fit "
                    f"the base model's [{out_features}, {in_features}] weight"
                ),
                [],
            )
        rank = max(rank or 0, r)
    if max_rank is not None and rank > max_rank:
        return None, f"adapter {d} has rank {rank} > max_lora_rank {max_rank}", []
    return rank, None, sorted(adapted)


def max_positions_of(base_model_path) -> int | None:
    cfg = json.loads((Path(base_model_path) / "config.json").read_text())
    for key in ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def input_limit(max_positions: int | None, max_new_tokens: int, max_input_tokens: int | None) -> int:
    """Longest allowed prompt: the configured limit, capped at the context length minus max_new_tokens."""
    room = math.inf if max_positions is None else max_positions - max_new_tokens
    if room < 1:
        raise ConfigError(
            [
                f"generation.max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's "
                f"{max_positions}-token context (got {max_new_tokens})"
            ]
        )
    limit = min(room, max_input_tokens if max_input_tokens is not None else math.inf)
    return int(limit) if limit != math.inf else 1 << 30


def tokenize_prompts(tokenizer, prompts: list[str], chat_template: bool) -> list[list[int]]:
    if chat_template:
        return [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True
                )
            )
            for p in prompts
        ]
    return [list(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]


def preflight(work, context: RunContext, chat_template: bool = False):
    """`work` plus `prompt_token_ids` (list<int32>) and `error` (null when the row may run).

    Also returns the largest rank among the usable adapters (None if there is none), and sets
    `context.lora_module` to a module those adapters adapt (None if no row has a usable adapter).
    """
    import pyarrow as pa
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(context.base_model_path, trust_remote_code=context.trust_remote_code)
    prompts = work.column("prompt").to_pylist()
    unique = list(dict.fromkeys(prompts))
    ids_of = dict(zip(unique, tokenize_prompts(tokenizer, unique, chat_template)))
    adapter_checks: dict[str | None, tuple[int | None, str | None]] = {}
    context.lora_module = None
    for path in dict.fromkeys(work.column("adapter_path").to_pylist()):
        rank, error, adapted = inspect_adapter(path, context.modules, context.max_lora_rank)
        adapter_checks[path] = (rank, error)
        if adapted and context.lora_module is None:
            context.lora_module = adapted[0]
    token_ids, errors = [], []
    for prompt, path in zip(prompts, work.column("adapter_path").to_pylist()):
        ids = ids_of[prompt]
        error = adapter_checks[path][1]
        if error is None and len(ids) > context.input_limit:
            error = f"prompt is {len(ids)} tokens long; the limit is {context.input_limit} (model context {context.max_positions}, max_new_tokens {context.max_new_tokens})"
        token_ids.append(ids)
        errors.append(error)
    ranks = [r for r, e in adapter_checks.values() if r is not None and e is None]
    table = work.append_column("prompt_token_ids", pa.array(token_ids, type=pa.list_(pa.int32())))
    table = table.append_column("error", pa.array(errors, type=pa.string()))
    return table, (max(ranks) if ranks else None)
