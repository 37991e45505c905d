"""Where bank repos come from: the Hugging Face Hub (and its cache) or a local directory.

Both sources answer the same three questions — the local directory of a model repo, of a dataset
repo, and which repo ids match a pattern — so everything downstream (manifest, validation,
features, synthesis, generation) runs the same code on a hub bank and on a local one.

Hub access goes through `huggingface_hub.snapshot_download`, which honours the cache
(`HF_HUB_CACHE` / `cache_dir`) and `HF_HUB_OFFLINE=1`; a token, if needed, is read by
huggingface_hub from `HF_TOKEN` in the environment and never handled here.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from lorabatch.adapter_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lorabatch.errors import BankResolutionError

RepoKind = Literal["model", "dataset"]

# Only these files are fetched: never pickled weights (*.bin, *.pt, *.pth).
ADAPTER_FILES = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"]
BASE_MODEL_CONFIG_FILES = ["*.json", "tokenizer.model", "*.txt", "*.jinja"]  # config + tokenizer
BASE_MODEL_FILES = BASE_MODEL_CONFIG_FILES + ["*.safetensors"]  # + weights, for generation
DATASET_FILES = ["data/*.parquet", "README.md", "*.json"]


class RepoSource(ABC):
    """Resolves repo ids to local directories."""

    name: str

    @abstractmethod
    def repo_dir(self, repo_id: str, kind: RepoKind, files: list[str] | None = None) -> Path:
        """Local directory holding the repo's files; `BankResolutionError` if it cannot be had."""

    @abstractmethod
    def list_repos(self, pattern: str, kind: RepoKind) -> list[str]:
        """Repo ids matching a glob pattern such as `Lots-of-LoRAs/task12_*`."""


class LocalSource(RepoSource):
    """A directory laid out like the hub: `<root>/<org>/<repo>/...`."""

    name = "local"

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise BankResolutionError(f"bank root {self.root} does not exist or is not a directory")

    def repo_dir(self, repo_id: str, kind: RepoKind, files: list[str] | None = None) -> Path:
        path = self.root / repo_id
        if not path.is_dir():
            raise BankResolutionError(f"{kind} repo '{repo_id}' not found: no directory {path}")
        return path

    def list_repos(self, pattern: str, kind: RepoKind) -> list[str]:
        org, _, name_pattern = pattern.partition("/")
        org_dir = self.root / org
        if not org_dir.is_dir():
            return []
        return sorted(
            f"{org}/{p.name}" for p in org_dir.iterdir() if p.is_dir() and fnmatch.fnmatchcase(p.name, name_pattern)
        )


class HubSource(RepoSource):
    """The Hugging Face Hub through huggingface_hub (cache and offline mode included)."""

    name = "hub"

    def __init__(self, revision: str | None = None, cache_dir: str | Path | None = None):
        self.revision = revision
        self.cache_dir = str(cache_dir) if cache_dir else None

    def repo_dir(self, repo_id: str, kind: RepoKind, files: list[str] | None = None) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            path = snapshot_download(
                repo_id,
                repo_type=kind,
                revision=self.revision,
                cache_dir=self.cache_dir,
                allow_patterns=files,
            )
        except LocalEntryNotFoundError:
            raise BankResolutionError(
                f"{kind} repo '{repo_id}' is not in the Hugging Face cache"
                f"{' ' + self.cache_dir if self.cache_dir else ''} and the hub cannot be reached "
                "(offline or HF_HUB_OFFLINE=1): download it once with network access"
            ) from None
        except GatedRepoError:
            raise BankResolutionError(
                f"{kind} repo '{repo_id}' is gated: accept its terms on the hub and set HF_TOKEN"
            ) from None
        except RepositoryNotFoundError:
            raise BankResolutionError(
                f"{kind} repo '{repo_id}' does not exist on the hub (or is private: set HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise BankResolutionError(f"{kind} repo '{repo_id}' has no revision '{self.revision}'") from None
        return Path(path)

    def list_repos(self, pattern: str, kind: RepoKind) -> list[str]:
        found = set(self._list_cached(pattern, kind))
        if not _hub_offline():
            found.update(self._list_remote(pattern, kind))
        return sorted(found)

    def _list_cached(self, pattern: str, kind: RepoKind) -> list[str]:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        try:
            info = scan_cache_dir(self.cache_dir)
        except CacheNotFound:
            return []
        return [r.repo_id for r in info.repos if r.repo_type == kind and fnmatch.fnmatchcase(r.repo_id, pattern)]

    def _list_remote(self, pattern: str, kind: RepoKind) -> list[str]:
        from huggingface_hub import HfApi

        org, _, name_pattern = pattern.partition("/")
        search = name_pattern.split("*", 1)[0] or None
        api = HfApi()
        listing = api.list_models if kind == "model" else api.list_datasets
        try:
            repos = listing(author=org, search=search)
            return [r.id for r in repos if fnmatch.fnmatchcase(r.id, pattern)]
        except Exception as err:  # any hub failure: say what was being listed
            raise BankResolutionError(f"cannot list {kind} repos matching '{pattern}' on the hub: {err}") from None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def make_source(bank_config) -> RepoSource:
    """The source named by a `BankConfig`."""
    if bank_config.source == "local":
        return LocalSource(bank_config.root)
    return HubSource(revision=bank_config.revision, cache_dir=bank_config.cache_dir)
