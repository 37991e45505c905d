"""Exceptions a user can act on: each names the file, field, task or value at fault."""

from __future__ import annotations


class LorabatchError(Exception):
    """Base class of every error lorabatch raises on purpose."""


class ConfigError(LorabatchError):
    """A config file or flag is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} invalid config field(s){where}:\n{lines}")


class BankValidationError(LorabatchError):
    """The bank is inconsistent. `problems` holds (task_id, message) for every violation found."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {task}: {msg}" for task, msg in self.problems)
        super().__init__(f"bank validation failed with {len(self.problems)} problem(s):\n{lines}")


class BankResolutionError(LorabatchError):
    """A task's adapter or dataset could not be located (missing repo, file or cache entry)."""


class DatasetError(LorabatchError):
    """A dataset file is unreadable, empty or lacks required columns."""
