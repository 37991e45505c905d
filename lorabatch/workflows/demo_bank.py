"""Demo-bank provisioning: the embedded demo bank is put into `bank.root` before the bank stage
reads it, when the run config asks for one (`bank.demo`): the shipped default bank when the config
asks for its recipe, else one built (or kept) for the config. The bank stage itself only reads banks."""

from __future__ import annotations

from lorabatch.demo.families import load_families
from lorabatch.demo.shipped import provide_demo_bank


def ensure_demo_bank(bank_config) -> None:
    """Provide the embedded demo bank in `bank.root` if the config asks for it (see the module docstring)."""
    if bank_config.demo is None:
        return
    demo = bank_config.demo
    provide_demo_bank(
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
