"""The layer order of `pyproject.toml` holds: `lint-imports` keeps every contract on the package,
breaks on a copy of it that gains one upward import (function-local, as a lazy import would be),
and the package-level import graph has no cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.import_graph import ROOT, layer_rank, package_graph, strongly_connected, upward_edges

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts on the `lorabatch` package found under `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.fixture()
def package_copy(tmp_path) -> Path:
    """A copy of the `lorabatch` package under tmp_path (the tree it is found in)."""
    shutil.copytree(ROOT / "lorabatch", tmp_path / "lorabatch", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_lint_imports_keeps_every_contract_on_the_package(package_copy):
    out = lint_imports(package_copy)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    "probe, broken",
    [
        # the bank reaching up to the demo builder (what `ensure_demo_bank` in bank/ did)
        ("bank/_probe.py", "The bank imports no stage"),
        # a stage importing a workflow (what `bank extend` inside bank/ amounted to)
        ("synthesis/_probe.py", "No stage imports a workflow"),
        # below the run config, importing it (what `lorabatch train` inside training/ did)
        ("training/_probe.py", "Only the command line, the sweep and the workflows import the run config"),
    ],
)
def test_an_upward_import_breaks_the_contracts(package_copy, probe, broken):
    target = {
        "bank/_probe.py": "lorabatch.demo.build",
        "synthesis/_probe.py": "lorabatch.workflows.predict",
        "training/_probe.py": "lorabatch.config",
    }[probe]
    (package_copy / "lorabatch" / probe).write_text(
        f'"""An upward import, inside a function."""\n\n\ndef probe():\n    import {target}\n\n    return {target}\n'
    )
    out = lint_imports(package_copy)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"{broken}" in out.stdout and "BROKEN" in out.stdout
    assert "Layers: command line > workflows > run config > stages > foundations BROKEN" in out.stdout
    assert f"lorabatch.{probe[:-3].replace('/', '.')} -> {target}" in out.stdout


def test_the_package_import_graph_has_no_cycle_and_no_upward_edge():
    edges, _, _ = package_graph(ROOT / "lorabatch")
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert cycles == []
    assert upward_edges(edges, layer_rank()) == []
    # every subpackage and top-level module has its place in the layer order
    assert set(edges) <= set(layer_rank())


def test_the_graph_finds_a_cycle_and_an_upward_edge_it_is_given(package_copy):
    (package_copy / "lorabatch" / "bank" / "_probe.py").write_text(
        "def probe():\n    from lorabatch.features import compute_bank_features\n\n    return compute_bank_features\n"
    )
    edges, _, _ = package_graph(package_copy / "lorabatch")
    assert ["bank", "features"] in [c for c in strongly_connected(edges) if len(c) > 1]
    assert ("bank", "features") in upward_edges(edges, layer_rank())
