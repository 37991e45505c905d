"""What a generation row's output depends on, stored with the row as its `fingerprint`.

A row is keyed by (task, setting, example), but its output also depends on which adapter the
setting held when it ran, on the prompt, and on the decoding parameters. Re-running a sweep after
changing any of them (another synthesis temperature, a re-trained bank adapter, another
`max_new_tokens`) must regenerate the row instead of reusing the old output, so a row counts as
done only when its stored fingerprint equals the one planned now.

    fingerprint = sha256(adapter identity, prompt, output-affecting generation parameters)[:24]

Adapter identity, cheapest first:
    base                      "base"
    oracle (a bank adapter)   "sha256:<adapter_model.safetensors sha256>" from the bank manifest
    synthesized               "synth:<synthesis key>" from the adapter's provenance.json (or, for
                              just-in-time synthesis, the key the adapter will be written with)
    any other adapter dir     "files:<sha256 of adapter_config.json and the weights>"
    missing                   "missing": no directory, or one without adapter_model.safetensors
                              (the row fails in the preflight). Such a row never counts as done:
                              its fingerprint is `MISSING_PREFIX` + hash, which `pending_work`
                              always plans again, so a deleted adapter is never taken for the
                              results of the adapter that was there before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.bank.datasets import file_sha256
from lorabatch.synthesis.writer import read_provenance

BASE_IDENTITY = "base"
MISSING_IDENTITY = "missing"
MISSING_PREFIX = "missing:"


def generation_params(config) -> dict:
    """The GenerationConfig fields that change a row's output (the backend does not: both
    backends are held to the same greedy outputs)."""
    params = {
        "split": config.split,
        "max_new_tokens": config.max_new_tokens,
        "max_input_tokens": config.max_input_tokens,
        "chat_template": config.chat_template,
        "temperature": config.temperature,
    }
    if config.temperature > 0:
        params.update(top_p=config.top_p, seed=config.seed)
    return params


def adapter_identity(adapter_path: str | None, manifest_sha256: str | None = None) -> str:
    """Identity of the adapter a row runs with (see the module docstring)."""

    if adapter_path is None:
        return BASE_IDENTITY
    path = Path(adapter_path)
    if not (path / ADAPTER_WEIGHTS).is_file():
        return MISSING_IDENTITY
    if manifest_sha256:
        return f"sha256:{manifest_sha256}"
    key = (read_provenance(path) or {}).get("synthesis_key")
    if key:
        return f"synth:{key}"

    hashes = [file_sha256(f) if f.is_file() else "-" for f in (path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS)]
    return f"files:{hashlib.sha256(' '.join(hashes).encode()).hexdigest()}"


def row_fingerprint(adapter_id: str, prompt: str, params_json: str) -> str:
    digest = hashlib.sha256(f"{adapter_id}\n{params_json}\n{prompt}".encode()).hexdigest()
    return MISSING_PREFIX + digest[:16] if adapter_id == MISSING_IDENTITY else digest[:24]


def is_missing_adapter(fingerprint: str | None) -> bool:
    """True for the fingerprint of a row planned without its adapter (never done)."""
    return bool(fingerprint) and fingerprint.startswith(MISSING_PREFIX)


def params_json(config) -> str:
    return json.dumps(generation_params(config), sort_keys=True)
