"""What a LoRA adapter on disk is, as every stage reads it: PEFT's file names, the safetensors
header, and the ranks vLLM can serve.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON header
({tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then the
data section, in which a tensor's bytes lie at [8 + n + begin, 8 + n + end).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from lorabatch.errors import LorabatchError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# The LoRA ranks vLLM accepts as max_lora_rank (an adapter of another rank is padded to the next).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

_MAX_HEADER = 100 << 20


class SafetensorsHeaderError(LorabatchError, ValueError):
    """A file is not a readable safetensors file (too short, bad header, truncated data)."""


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """(header without `__metadata__`, byte offset where the data section starts); checks that the
    file holds every byte its header declares."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise SafetensorsHeaderError(f"{path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise SafetensorsHeaderError(f"{path} is not a safetensors file (header length {n} > file size {size})")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SafetensorsHeaderError(f"{path} has an unreadable safetensors header: {err}") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path} has an unreadable safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    if 8 + n + end > size:
        raise SafetensorsHeaderError(f"{path} is truncated: {size} bytes, its header needs {8 + n + end}")
    return header, 8 + n
