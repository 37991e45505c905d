"""Demo-bank provisioning: the embedded demo bank is built into `bank.root` before the bank stage
reads it, when the run config asks for one (`bank.demo`). The bank stage itself only reads banks."""

from __future__ import annotations

from lorabatch.demo.build import build_demo_bank
from lorabatch.demo.families import load_families


def ensure_demo_bank(bank_config) -> None:
    """Build the embedded demo bank into `bank.root` if the config asks for it and it is absent."""
    if bank_config.demo is None:
        return
    demo = bank_config.demo
    build_demo_bank(
        bank_config.root,
        size=demo.size,
        seed=demo.seed,
        threads=demo.threads,
        lora_init=demo.lora_init,
        shared_fraction=demo.shared_fraction,
        parallel=demo.parallel,
        base=demo.base,
        families=load_families(demo.families),
    )
