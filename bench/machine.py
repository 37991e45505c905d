"""The machine line every bench prints (and BENCHMARKS.md records) with its figures."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_line(*extra: str, torch_threads: bool = False, gpu: bool = False, ram: bool = False) -> str:
    """`platform | CPU model | N logical CPUs [| RAM] [| GPU] | python X [| torch V (T threads)] | extra… |
    load average L`: what decides a bench's figures besides the code. torch is imported only when
    its threads or the GPU are asked for."""
    parts = [platform.platform(), cpu_model(), f"{os.cpu_count()} logical CPUs"]
    if ram:
        import psutil

        parts.append(f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM")
    if gpu or torch_threads:
        import torch

        if gpu:
            parts.append(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    parts.append(f"python {platform.python_version()}")
    if torch_threads:
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    parts += list(extra)
    parts.append(f"load average {os.getloadavg()[0]:.1f}")
    return " | ".join(parts)
