"""The adapter writer: a standard PEFT LoRA directory plus `provenance.json`, written atomically.

    <dir>/adapter_config.json        the bank's config with r / lora_alpha of the written tensors
    <dir>/adapter_model.safetensors  lora_A [r, in] and lora_B [out, r] per target module
    <dir>/provenance.json            setting, coefficients (or the top contributors), bank manifest
                                     hash, mixing details (exact: relative Frobenius error per
                                     module), lorabatch version, sha256 of the weights, synthesis key

The rank is one of vLLM's allowed ranks, bias is 'none', targets and base model are the bank's.
Non-finite weights are refused before anything is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from lorabatch import __version__
from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, VLLM_LORA_RANKS
from lorabatch.atomic import atomic_dir
from lorabatch.bank.datasets import file_sha256
from lorabatch.errors import LorabatchError
from lorabatch.synthesis.tensors import SafetensorsLayout, scaling_of

PROVENANCE = "provenance.json"
PROVENANCE_VERSION = "1"
# provenance.json lists every coefficient up to this many non-zero ones, else the top ones.
MAX_LISTED_COEFFICIENTS = 64


# An adapter directory lorabatch wrote holds exactly these files, and its provenance these keys.
ADAPTER_DIR_FILES = frozenset({ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROVENANCE})
PROVENANCE_KEYS = ("provenance_version", "lorabatch_version", "synthesis_key")


class NonFiniteWeightsError(LorabatchError, ValueError):
    """A synthesized tensor holds NaN or inf; nothing is written."""


class ForeignDirectoryError(LorabatchError):
    """The output directory holds something other than an adapter lorabatch wrote; it is kept."""


def not_replaceable(path: str | Path) -> str | None:
    """Why an adapter may not be written over `path` (None if it may: absent, an empty directory,
    or exactly a previous lorabatch adapter: the three files, provenance with lorabatch's keys)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_dir():
        return "it is not a directory"
    names = {p.name for p in path.iterdir()}
    if not names:
        return None
    extra = sorted(names - ADAPTER_DIR_FILES)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"it holds files other than a lorabatch adapter's ({shown})"
    if names != ADAPTER_DIR_FILES:
        return f"it is not a complete lorabatch adapter (lacks {', '.join(sorted(ADAPTER_DIR_FILES - names))})"
    prov = read_provenance(path)
    if not isinstance(prov, dict) or not all(k in prov for k in PROVENANCE_KEYS):
        return f"its {PROVENANCE} was not written by lorabatch"
    if any(not (path / n).is_file() for n in names):
        return "it holds something other than plain files"
    return None


def refuse_foreign_dir(path: Path) -> None:
    """Raise `ForeignDirectoryError` unless an adapter may be written over `path`."""
    reason = not_replaceable(path)
    if reason:
        raise ForeignDirectoryError(f"{path} exists and {reason}: refusing to replace it")


def output_adapter_config(bank_config: dict, rank: int, scaling: float | None = None) -> dict:
    """The bank's adapter_config.json with `r` = rank and lora_alpha giving `scaling` (default: the bank's)."""
    if rank not in VLLM_LORA_RANKS:
        raise ValueError(f"rank {rank} is not one of vLLM's LoRA ranks {list(VLLM_LORA_RANKS)}")
    cfg = json.loads(json.dumps(bank_config))
    scaling = scaling_of(bank_config) if scaling is None else scaling
    alpha = scaling * (math.sqrt(rank) if cfg.get("use_rslora") else rank)
    cfg["r"] = rank
    cfg["lora_alpha"] = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else float(alpha)
    cfg["bias"] = "none"
    cfg["peft_type"] = "LORA"
    # Per-module rank/alpha overrides would contradict the tensors we write.
    cfg["rank_pattern"] = {}
    cfg["alpha_pattern"] = {}
    cfg.setdefault("task_type", "CAUSAL_LM")
    return cfg


def contributors(
    task_ids: list[str], coefficients: np.ndarray, limit: int = MAX_LISTED_COEFFICIENTS
) -> list[tuple[str, float]]:
    """(task, weight) of the non-zero coefficients, largest magnitude first, at most `limit`
    (refined coefficients may be negative)."""
    c = np.asarray(coefficients, dtype=np.float64)
    order = np.argsort(-np.abs(c), kind="stable")
    return [(task_ids[j], float(c[j])) for j in order[:limit] if c[j] != 0]


def synthesis_key(manifest_hash: str | None, task_ids: list[str], coefficients: np.ndarray, mixing: dict) -> str:
    """Content hash of what determines an adapter: bank, coefficients (rounded to 1e-12), mixing."""
    h = hashlib.sha256()
    h.update(f"{manifest_hash}\n{json.dumps(mixing, sort_keys=True)}\n".encode())
    for t, c in zip(task_ids, np.asarray(coefficients, dtype=np.float64)):
        if c != 0:
            h.update(f"{t}:{c:.12e}\n".encode())
    return h.hexdigest()


def provenance_record(
    *,
    setting: str | None,
    target: str,
    task_ids: list[str],
    coefficients: np.ndarray,
    manifest_hash: str | None,
    mixing: dict,
    extra: dict | None = None,
) -> dict:

    nonzero = int(np.count_nonzero(coefficients))
    listed = contributors(task_ids, coefficients)
    record = {
        "provenance_version": PROVENANCE_VERSION,
        "lorabatch_version": __version__,
        "setting": setting,
        "target": target,
        "bank_manifest_hash": manifest_hash,
        "mixing": mixing,
        "n_nonzero_coefficients": nonzero,
        "coefficients_complete": nonzero <= len(listed),
        "coefficients" if nonzero <= len(listed) else "top_contributors": dict(listed),
        "synthesis_key": synthesis_key(manifest_hash, task_ids, coefficients, mixing),
    }
    record.update(extra or {})
    return record


def check_finite(name: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise NonFiniteWeightsError(f"synthesized tensor {name} holds non-finite values; adapter not written")


def write_adapter(
    target_dir: str | Path,
    tensors: dict[str, np.ndarray],
    adapter_config: dict,
    provenance: dict,
    dtype: str = "F32",
) -> Path:
    """Write one adapter held in memory as a PEFT directory, atomically; refuse non-finite weights."""
    for name, arr in tensors.items():
        check_finite(name, arr)
    _check_config_matches(adapter_config, tensors)
    layout = SafetensorsLayout({k: v.shape for k, v in tensors.items()}, dtype)
    target_dir = Path(target_dir)
    with atomic_dir(target_dir, check_replace=refuse_foreign_dir) as tmp:
        layout.write_tensors(tmp / ADAPTER_WEIGHTS, tensors)
        finish_adapter_dir(tmp, adapter_config, provenance)
    return target_dir


def finish_adapter_dir(tmp_dir: Path, adapter_config: dict, provenance: dict) -> None:
    """Write the config and provenance (with the weights' sha256) beside a complete weights file."""

    (tmp_dir / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    record = dict(provenance, adapter_sha256=file_sha256(tmp_dir / ADAPTER_WEIGHTS))
    (tmp_dir / PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _check_config_matches(adapter_config: dict, tensors: dict[str, np.ndarray]) -> None:
    r = adapter_config["r"]
    for name, arr in tensors.items():
        if ".lora_A." in name and arr.shape[0] != r:
            raise ValueError(f"{name} has rank {arr.shape[0]} but the adapter config says r={r}")
        if ".lora_B." in name and arr.shape[-1] != r:
            raise ValueError(f"{name} has rank {arr.shape[-1]} but the adapter config says r={r}")


def read_provenance(adapter_dir: str | Path) -> dict | None:
    path = Path(adapter_dir) / PROVENANCE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_current(adapter_dir: str | Path, key: str) -> bool:
    """True if `adapter_dir` is a complete adapter synthesized with this synthesis key."""
    prov = read_provenance(adapter_dir)
    return bool(prov) and prov.get("synthesis_key") == key and (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file()
