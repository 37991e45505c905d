"""Run the stages of a config in order: bank -> features -> distances -> ... (what exists so far)."""

from __future__ import annotations

from lorabatch.config import LorabatchConfig


def run_sweep(config: LorabatchConfig, progress: bool = True) -> None:
    from lorabatch.bank.manifest import build_manifest

    manifest = build_manifest(config, progress=progress)
    print(f"bank: {manifest.num_rows} tasks validated -> {config.run_dir}/bank/manifest.parquet")
