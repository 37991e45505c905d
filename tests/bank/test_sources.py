"""A hub-layout bank loads from a pre-populated Hugging Face cache with no network, through the
same loader as a local bank, and gives the same manifest."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from lorabatch.bank.config import BankConfig
from lorabatch.bank.manifest import inspect_bank, manifest_table
from lorabatch.bank.resolve import resolve_tasks
from lorabatch.bank.sources import HubSource, LocalSource
from lorabatch.errors import BankResolutionError, BankValidationError
from tests.helpers.synthetic_bank import build_tiny_bank


def cache_repo(cache: Path, local_repo: Path, repo_id: str, kind: str) -> None:
    """Lay a repo out the way huggingface_hub's cache stores a download of its `main` revision."""
    folder = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(local_repo, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    tiny = build_tiny_bank(tmp_path_factory.mktemp("local"), n_tasks=3)
    cache = tmp_path_factory.mktemp("hf-cache")
    org = tiny.root / tiny.org
    for repo in sorted(org.iterdir()):
        kind = "dataset" if repo.name.startswith("task") else "model"
        cache_repo(cache, repo, f"{tiny.org}/{repo.name}", kind)
    return tiny, cache


def test_offline_mode_is_on():
    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE


def test_hub_bank_from_cache_equals_local_bank(banks):
    tiny, cache = banks
    local = BankConfig(**tiny.bank_config())
    hub = BankConfig(**tiny.bank_config(source="hub", root=None, cache_dir=str(cache)))
    base_l, facts_l = inspect_bank(local, progress=False)
    base_h, facts_h = inspect_bank(hub, progress=False)
    table_l = manifest_table(facts_l, base_l, "local")
    table_h = manifest_table(facts_h, base_h, "hub")
    assert str(base_h).startswith(str(cache)) and "snapshots" in str(base_h)
    assert all(p.startswith(str(cache)) for p in table_h.column("adapter_path").to_pylist())
    same = [
        "task_id",
        "slug",
        "adapter_ref",
        "dataset_ref",
        "rank",
        "target_modules",
        "adapter_sha256",
        "dataset_sha256",
        "n_train",
        "n_test",
    ]
    assert table_h.select(same).equals(table_l.select(same))
    assert table_h.schema.metadata[b"lorabatch.manifest_hash"] == table_l.schema.metadata[b"lorabatch.manifest_hash"]


def test_slug_found_in_cache_for_bare_task_ids(banks):
    tiny, cache = banks
    refs = resolve_tasks(
        BankConfig(**tiny.bank_config(source="hub", root=None, cache_dir=str(cache), tasks=["task2", "task3"])),
        HubSource(cache_dir=cache),
    )
    assert [(r.task_id, r.dataset_repo) for r in refs] == [
        ("task2", "tiny-org/task2_tiny_2"),
        ("task3", "tiny-org/task3_tiny_3"),
    ]


def test_uncached_repo_is_a_clear_error(banks):
    _, cache = banks
    with pytest.raises(BankResolutionError, match=r"'tiny-org/not-there' is not in the Hugging Face cache"):
        HubSource(cache_dir=cache).repo_dir("tiny-org/not-there", "model")


def test_uncached_task_reported_with_its_id(banks):
    tiny, cache = banks
    cfg = BankConfig(
        **tiny.bank_config(source="hub", root=None, cache_dir=str(cache), tasks=["task1", "task7_missing_slug"])
    )
    with pytest.raises(BankValidationError) as info:
        inspect_bank(cfg, progress=False)
    assert [t for t, _ in info.value.problems] == ["task7", "task7"]
    assert "tiny-base-r8-task7' is not in the Hugging Face cache" in str(info.value)


def test_local_source_lists_and_rejects_missing_root(banks, tmp_path):
    tiny, _ = banks
    assert LocalSource(tiny.root).list_repos("tiny-org/task2_*", "dataset") == ["tiny-org/task2_tiny_2"]
    with pytest.raises(BankResolutionError, match="does not exist"):
        LocalSource(tmp_path / "nope")


def test_hub_bank_identity_follows_the_snapshot_revision(banks, tmp_path):
    """The bank stage's cache key names each repo's resolved snapshot: a new revision of one
    adapter (refs/main moved to another commit) changes it; an unchanged cache does not."""
    from lorabatch.bank.identity import bank_files_identity

    tiny, pristine = banks
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    hub = BankConfig(**tiny.bank_config(source="hub", root=None, cache_dir=str(cache)))
    before = bank_files_identity(hub)
    assert before == bank_files_identity(hub)
    assert all("/snapshots/" in a["dir"] for a in before["adapters"])
    folder = cache / f"models--{tiny.org}--tiny-base-r8-task2"
    old = (folder / "refs" / "main").read_text()
    shutil.copytree(folder / "snapshots" / old, folder / "snapshots" / ("f" * 40))
    (folder / "refs" / "main").write_text("f" * 40)
    after = bank_files_identity(hub)
    changed = [a["repo"] for a, b in zip(before["adapters"], after["adapters"]) if a != b]
    assert changed == [f"{tiny.org}/tiny-base-r8-task2"]
