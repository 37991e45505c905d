"""Cross-task checks: one base model, one rank, one set of targets and tensor shapes.

The reference for rank / targets / shapes is the value most tasks share, so a single odd adapter
is reported as the odd one rather than turning every other task into a problem.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from lorabatch.bank.inspect import TaskFacts

_LAYER = re.compile(r"\.layers\.(\d+)\.")
_MODULE = re.compile(r"\.([A-Za-z0-9_]+)\.lora_([AB])\.weight$")


def cross_task_problems(
    facts: list[TaskFacts], base_model_name: str, base_model_dir: Path | None
) -> list[tuple[str, str]]:
    """(task_id, message) for every inconsistency between tasks or with the base model."""
    ok = [f for f in facts if f.adapter_path is not None and f.rank is not None]
    problems: list[tuple[str, str]] = []
    for f in ok:
        if not _same_model(f.base_model, base_model_name):
            problems.append(
                (
                    f.ref.task_id,
                    f"adapter: trained on base model {f.base_model!r}, but the bank's base model is {base_model_name!r}",
                )
            )
    for what, key in (
        ("rank r", lambda f: f.rank),
        ("lora_alpha", lambda f: f.alpha),
        ("target_modules", lambda f: f.target_modules),
        ("tensor names and shapes", lambda f: tuple(sorted(f.tensor_shapes.items()))),
    ):
        problems += _odd_ones_out(ok, what, key)
    if base_model_dir is not None:
        expected = expected_lora_shapes(base_model_dir)
        if expected is not None:
            for f in ok:
                problems += [(f.ref.task_id, m) for m in _shape_mismatches(f, expected)]
    return problems


def _same_model(declared: str | None, expected: str) -> bool:
    if declared is None:
        return False
    return declared.rstrip("/") == expected.rstrip("/")


def _odd_ones_out(facts: list[TaskFacts], what: str, key) -> list[tuple[str, str]]:
    if not facts:
        return []
    counts = Counter(key(f) for f in facts)
    reference, n_ref = counts.most_common(1)[0]
    out = []
    for f in facts:
        value = key(f)
        if value != reference:
            if what == "tensor names and shapes":
                shown = _shape_diff(dict(value), dict(reference))
            else:
                shown = f"{value!r} differs from {reference!r}"
            out.append((f.ref.task_id, f"adapter: {what}: {shown} (the value of {n_ref} of {len(facts)} tasks)"))
    return out


def _shape_diff(value: dict, reference: dict) -> str:
    missing = sorted(set(reference) - set(value))
    extra = sorted(set(value) - set(reference))
    changed = [n for n in sorted(set(value) & set(reference)) if value[n] != reference[n]]
    parts = []
    if changed:
        n = changed[0]
        parts.append(f"{n} has shape {list(value[n])}, expected {list(reference[n])} ({len(changed)} tensor(s) differ)")
    if missing:
        parts.append(f"missing {len(missing)} tensor(s) such as {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected tensor(s) such as {extra[0]}")
    return "; ".join(parts)


def expected_lora_shapes(base_model_dir: Path) -> dict | None:
    """(in_features, out_features) of each projection of a Llama/Mistral-style base model.

    Returns None when config.json lacks the fields (the shape check is then skipped).
    """
    try:
        cfg = json.loads((Path(base_model_dir) / "config.json").read_text())
        hidden = cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads", heads)
        head_dim = cfg.get("head_dim") or hidden // heads
        inter = cfg.get("intermediate_size")
        layers = cfg["num_hidden_layers"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    io = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
    }
    if inter:
        io.update({"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)})
    return {"io": io, "layers": layers}


def _shape_mismatches(f: TaskFacts, expected: dict) -> list[str]:
    out = []
    for name, shape in f.tensor_shapes.items():
        layer = _LAYER.search(name)
        if layer and int(layer[1]) >= expected["layers"]:
            out.append(f"adapter: {name} addresses layer {layer[1]} but the base model has {expected['layers']} layers")
            break
        m = _MODULE.search(name)
        if not m or m[1] not in expected["io"] or len(shape) != 2:
            continue
        fan_in, fan_out = expected["io"][m[1]]
        want = (shape[0], fan_in) if m[2] == "A" else (fan_out, shape[1])
        if tuple(shape) != want:
            out.append(
                f"adapter: {name} has shape {list(shape)}, but the base model's {m[1]} needs {list(want)} "
                "(adapter trained on another base model?)"
            )
            break
    return out
