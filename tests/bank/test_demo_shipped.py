"""The shipped default demo bank: its files match their record, its recipe is the code's, and runs
get it as it is (checked, copied, kept, replaced when damaged) instead of building."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lorabatch.demo.shipped as shipped
from lorabatch.demo.build import MANIFEST
from lorabatch.demo.recipe import recipe, recipe_sha256
from lorabatch.demo.shipped import (
    SHIPPED_BANK,
    bank_differences,
    compare_with_shipped,
    file_hashes,
    provide_demo_bank,
    shipped_record,
)
from lorabatch.errors import LorabatchError


@pytest.fixture(scope="module")
def record():
    got = shipped_record()
    assert got is not None, "the package ships no demo bank (lorabatch/demo/shipped/record.json)"
    return got


def test_shipped_files_match_their_sha256(record):
    assert bank_differences(SHIPPED_BANK, record["files"]) == []
    assert record["bytes"] == sum((SHIPPED_BANK / p).stat().st_size for p in record["files"])


def test_shipped_bank_is_the_code_default_recipe(record):
    """Fails when the builder's recipe changes without the shipped bank being rebuilt
    (`lorabatch bank build-demo NEW` then `python -m lorabatch.demo.shipped NEW`)."""
    assert record["recipe"] == recipe(), "the demo builder's recipe changed: rebuild and re-ship the default bank"
    assert record["recipe_sha256"] == recipe_sha256(recipe())
    info = json.loads((SHIPPED_BANK / MANIFEST).read_text())
    assert info["recipe_sha256"] == record["recipe_sha256"] and info["complete"] is True
    assert info["acceptance"]["figures"]  # accepted or not, the acceptance rows are recorded


def test_provide_copies_then_keeps_the_shipped_bank(tmp_path, monkeypatch, record):
    def no_build(*args, **kwargs):
        raise AssertionError("the default recipe must not be built")

    monkeypatch.setattr(shipped, "build_demo_bank", no_build)
    out = tmp_path / "demo-bank"
    provide_demo_bank(out, progress=False)
    assert file_hashes(out) == record["files"]
    stamp = (out / MANIFEST).stat().st_mtime_ns
    provide_demo_bank(out, progress=False)
    assert (out / MANIFEST).stat().st_mtime_ns == stamp  # kept, not copied again

    adapter = next(p for p in record["files"] if p.endswith("adapter_model.safetensors"))
    (out / adapter).write_bytes(b"damaged")
    provide_demo_bank(out, progress=False)
    assert file_hashes(out) == record["files"]  # a damaged copy is replaced whole


def test_other_recipes_are_built_not_copied(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(shipped, "build_demo_bank", lambda out, **kw: calls.append(kw) or out)
    provide_demo_bank(tmp_path / "b", seed=1, progress=False)
    provide_demo_bank(tmp_path / "c", size="small", progress=False)
    assert [c["seed"] for c in calls] == [1, 0] and [c["size"] for c in calls] == ["default", "small"]
    assert not (tmp_path / "b").exists()


def test_refuses_to_replace_what_is_not_a_demo_bank(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(LorabatchError, match="is not a demo bank"):
        provide_demo_bank(out, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_damaged_shipped_bank_is_a_clear_error(tmp_path, monkeypatch, record):
    copy = tmp_path / "shipped"
    shutil.copytree(SHIPPED_BANK, copy)
    (copy / MANIFEST).write_text("{}")
    monkeypatch.setattr(shipped, "SHIPPED_BANK", copy)
    with pytest.raises(LorabatchError, match=f"does not match its record.*{MANIFEST}"):
        provide_demo_bank(tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_compare_says_where_a_rebuild_differs(tmp_path, record):
    from safetensors.numpy import load_file, save_file

    built = tmp_path / "built"
    shutil.copytree(SHIPPED_BANK, built)
    info = json.loads((built / MANIFEST).read_text())
    assert compare_with_shipped(built) == []
    info["timings_s"] = {"total": 1.0}
    info["tasks"][0]["train_seconds"] = 1.0
    (built / MANIFEST).write_text(json.dumps(info))
    assert bank_differences(built, record["files"]) != []  # other bytes…
    assert compare_with_shipped(built) == []  # …but only wall times: the same bank
    adapter = next(p for p in record["files"] if p.endswith("adapter_model.safetensors"))
    tensors = load_file(str(built / adapter))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(1e-3)
    save_file(tensors, str(built / adapter))
    info["tasks"][0]["rouge_l"] = {"own": 0.0}
    (built / MANIFEST).write_text(json.dumps(info))
    (built / "extra.txt").write_text("x")
    lines = compare_with_shipped(built)
    assert any(line.startswith(adapter) and name in line and "1 of" in line for line in lines), lines
    assert any(f"tasks[{info['tasks'][0]['task_id']}]: rouge_l" in line for line in lines), lines
    assert "extra.txt: not in the record" in lines
