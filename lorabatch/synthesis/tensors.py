"""The bank's adapters as flat parameter vectors θ_i, read and written in ranges without loading them.

Every adapter of a bank must hold the same tensors (names, shapes, dtype). θ_i is the concatenation
of its tensors in sorted-name order (lora_A and lora_B alike): P = Σ tensor sizes. A range
[start, stop) of θ maps to pieces of one or more tensors; those are read with `os.pread` at their
byte offsets in `adapter_model.safetensors` (no memory map, so resident memory stays bounded by
what a caller keeps), and written the same way into a pre-sized safetensors file whose header is
fixed up front (`SafetensorsLayout`). Values are handed around as float32 (bf16/f16 converted).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_safetensors_header
from lorabatch.bank.manifest import load_manifest, manifest_hash
from lorabatch.errors import BankValidationError

_NUMPY_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    offset: int  # first element of this tensor in θ

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 → the storage dtype (bf16 rounded to nearest even, as torch does)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        u = values.view(np.uint32)
        return ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return values.astype(_NUMPY_DTYPES[dtype], copy=False)


@dataclass
class BankLayout:
    """Where every tensor of every bank adapter lies, and the adapters' shared config."""

    task_ids: list[str]
    adapter_dirs: list[Path]
    tensors: list[TensorSpec]
    dtype: str  # safetensors dtype name shared by every tensor: F32, BF16, F16, F64
    adapter_config: dict  # the first adapter's adapter_config.json (all agree on r, alpha, targets)
    byte_offsets: list[dict[str, int]] = field(repr=False)  # per adapter: tensor -> absolute byte offset
    manifest_hash: str | None = None
    _starts: list[int] | None = field(default=None, repr=False, compare=False)

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)

    @property
    def n_params(self) -> int:
        last = self.tensors[-1]
        return last.offset + last.size

    @property
    def itemsize(self) -> int:
        return _NUMPY_DTYPES[self.dtype].itemsize

    def weights_path(self, i: int) -> Path:
        return self.adapter_dirs[i] / ADAPTER_WEIGHTS

    def pieces(self, start: int, stop: int):
        """(tensor, lo, hi) with [lo, hi) the part of the tensor (element offsets within it) in range."""
        if self._starts is None:
            self._starts = [t.offset for t in self.tensors]
        k = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while k < len(self.tensors) and self.tensors[k].offset < stop:
            t = self.tensors[k]
            lo, hi = max(start, t.offset), min(stop, t.offset + t.size)
            if lo < hi:
                yield t, lo - t.offset, hi - t.offset
            k += 1

    def chunks(self, chunk_size: int) -> list[tuple[int, int]]:
        return [(s, min(s + chunk_size, self.n_params)) for s in range(0, self.n_params, chunk_size)]

    def read_range(self, i: int, start: int, stop: int, fd: int | None = None) -> np.ndarray:
        """θ_i[start:stop] as float32."""
        own = fd is None
        if own:
            fd = os.open(self.weights_path(i), os.O_RDONLY)
        try:
            out = np.empty(stop - start, dtype=np.float32)
            pos = 0
            dt = _NUMPY_DTYPES[self.dtype]
            for t, lo, hi in self.pieces(start, stop):
                buf = os.pread(fd, (hi - lo) * dt.itemsize, self.byte_offsets[i][t.name] + lo * dt.itemsize)
                if len(buf) != (hi - lo) * dt.itemsize:
                    raise ValueError(f"{self.weights_path(i)}: truncated tensor {t.name}")
                out[pos : pos + hi - lo] = to_float32(np.frombuffer(buf, dtype=dt), self.dtype)
                pos += hi - lo
            return out
        finally:
            if own:
                os.close(fd)

    def read_tensor(self, i: int, name: str) -> np.ndarray:
        t = next(t for t in self.tensors if t.name == name)
        return self.read_range(i, t.offset, t.offset + t.size).reshape(t.shape)

    def read_flat(self, i: int) -> np.ndarray:
        return self.read_range(i, 0, self.n_params)


def scaling_of(adapter_config: dict) -> float:
    """PEFT's LoRA scaling: alpha / r, or alpha / √r with rsLoRA."""
    r, alpha = adapter_config["r"], adapter_config.get("lora_alpha", 8)
    return alpha / (r**0.5) if adapter_config.get("use_rslora") else alpha / r


# Fields of adapter_config.json that must agree for adapters to be mixed.
_MIXING_FIELDS = ("r", "lora_alpha", "use_rslora", "use_dora", "bias", "base_model_name_or_path")


def bank_layout(task_ids: list[str], adapter_dirs: list[str | Path], manifest_hash: str | None = None) -> BankLayout:
    """Read every adapter's header and config; raise `BankValidationError` listing each mismatch."""
    if not task_ids:
        raise BankValidationError([("<bank>", "the bank holds no tasks")])
    dirs = [Path(d) for d in adapter_dirs]
    problems: list[tuple[str, str]] = []
    ref_shapes: dict[str, tuple[int, ...]] | None = None
    ref_cfg: dict | None = None
    ref_dtype = None
    offsets: list[dict[str, int]] = []
    for task, d in zip(task_ids, dirs):
        try:
            cfg = json.loads((d / ADAPTER_CONFIG).read_text())
            header, data_start = read_safetensors_header(d / ADAPTER_WEIGHTS)
        except (OSError, ValueError) as err:
            problems.append((task, f"cannot read adapter in {d}: {err}"))
            offsets.append({})
            continue
        shapes = {k: tuple(v["shape"]) for k, v in header.items()}
        dtypes = {v["dtype"] for v in header.values()}
        offsets.append({k: data_start + v["data_offsets"][0] for k, v in header.items()})
        if len(dtypes) != 1 or next(iter(dtypes)) not in _NUMPY_DTYPES:
            problems.append(
                (task, f"tensors must share one float dtype of {sorted(_NUMPY_DTYPES)}, got {sorted(dtypes)}")
            )
            continue
        if ref_shapes is None:
            ref_shapes, ref_cfg, ref_dtype = shapes, cfg, next(iter(dtypes))
            continue
        if shapes != ref_shapes:
            diff = sorted(set(shapes.items()) ^ set(ref_shapes.items()))[:3]
            problems.append((task, f"tensors differ from {task_ids[0]}'s (e.g. {diff})"))
        if next(iter(dtypes)) != ref_dtype:
            problems.append((task, f"dtype {next(iter(dtypes))} differs from {task_ids[0]}'s {ref_dtype}"))
        for key in _MIXING_FIELDS:
            if cfg.get(key) != ref_cfg.get(key):
                problems.append(
                    (task, f"adapter_config {key}={cfg.get(key)!r} differs from {task_ids[0]}'s {ref_cfg.get(key)!r}")
                )
        if sorted(cfg.get("target_modules") or []) != sorted(ref_cfg.get("target_modules") or []):
            problems.append((task, f"target_modules {cfg.get('target_modules')} differ from {task_ids[0]}'s"))
    if problems:
        raise BankValidationError(problems)
    tensors, pos = [], 0
    for name in sorted(ref_shapes):
        tensors.append(TensorSpec(name, ref_shapes[name], pos))
        pos += tensors[-1].size
    return BankLayout(list(task_ids), dirs, tensors, ref_dtype, ref_cfg, offsets, manifest_hash)


def layout_from_manifest(run_dir: str | Path) -> BankLayout:
    """The layout of the bank whose manifest lies in `RUN/bank/manifest.parquet` (manifest order)."""

    table = load_manifest(run_dir)
    try:
        digest = manifest_hash(table)
    except (KeyError, TypeError):
        digest = None
    cols = table.select(["task_id", "adapter_path"]).to_pydict()
    return bank_layout(cols["task_id"], cols["adapter_path"], digest)


class SafetensorsLayout:
    """A safetensors file whose header is fixed up front, so ranges of θ can be written in any order.

    Tensors are laid out in sorted-name order (so element e of θ sits at byte data_start + e·itemsize);
    `allocate` creates the file at full size, `write_range` fills a range with `os.pwrite`.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: str, metadata: dict[str, str] | None = None):
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; one of {sorted(_NUMPY_DTYPES)}")
        self.dtype = dtype
        self.itemsize = _NUMPY_DTYPES[dtype].itemsize
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        pos = 0
        self.tensors: list[TensorSpec] = []
        for name in sorted(shapes):
            spec = TensorSpec(name, tuple(int(s) for s in shapes[name]), pos)
            nbytes = spec.size * self.itemsize
            header[name] = {
                "dtype": dtype,
                "shape": list(spec.shape),
                "data_offsets": [pos * self.itemsize, pos * self.itemsize + nbytes],
            }
            self.tensors.append(spec)
            pos += spec.size
        self.n_params = pos
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.header_bytes = struct.pack("<Q", len(raw)) + raw
        self.data_start = len(self.header_bytes)
        self.file_size = self.data_start + pos * self.itemsize

    def allocate(self, path: str | Path) -> None:
        with open(path, "wb") as fh:
            fh.write(self.header_bytes)
            fh.truncate(self.file_size)

    def write_range(self, fd: int, start: int, values: np.ndarray) -> None:
        data = from_float32(values, self.dtype).tobytes()
        written = os.pwrite(fd, data, self.data_start + start * self.itemsize)
        if written != len(data):
            raise OSError(f"short write ({written} of {len(data)} bytes)")

    def write_tensors(self, path: str | Path, tensors: dict[str, np.ndarray]) -> None:
        """Write a whole adapter held in memory (names and shapes must match the layout)."""
        missing = sorted({t.name for t in self.tensors} ^ set(tensors))
        if missing:
            raise ValueError(f"tensors do not match the layout: {missing[:5]}")
        self.allocate(path)
        fd = os.open(path, os.O_WRONLY)
        try:
            for t in self.tensors:
                arr = np.asarray(tensors[t.name])
                if arr.shape != t.shape:
                    raise ValueError(f"tensor {t.name} has shape {arr.shape}, layout says {t.shape}")
                self.write_range(fd, t.offset, arr.reshape(-1))
        finally:
            os.close(fd)
