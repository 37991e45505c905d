"""Turn a `BankConfig` into concrete task references: task id, adapter repo, dataset repo.

Lots-of-LoRAs adapter repo names carry no slug (`...-task1342`) while dataset repos do
(`task1342_amazon_us_reviews_title`): a task given as `task<N>` gets its slug from the source's
listing (the local root, the HF cache, or the hub when online).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorabatch.bank.config import TASK_ID, BankConfig
from lorabatch.bank.sources import RepoSource
from lorabatch.errors import BankValidationError


@dataclass(frozen=True)
class TaskRef:
    task_id: str  # "task<N>"
    number: int
    slug: str
    adapter_repo: str
    dataset_repo: str


def _template_regex(template: str) -> re.Pattern:
    """Regex of a repo template with named groups for {number} and {slug}."""
    out, pos = "", 0
    for m in re.finditer(r"\{(number|slug)\}", template):
        out += re.escape(template[pos : m.start()])
        out += r"(?P<number>[1-9][0-9]*)" if m[1] == "number" else r"(?P<slug>[A-Za-z0-9_.-]+)"
        pos = m.end()
    return re.compile("^" + out + re.escape(template[pos:]) + "$")


def _glob(template: str, **values) -> str:
    return template.format(**{"number": "*", "slug": "*", **values})


def resolve_tasks(config: BankConfig, source: RepoSource) -> list[TaskRef]:
    """The bank's tasks, sorted by task number. All unresolvable tasks are reported together."""
    if config.tasks == "all":
        pattern = _template_regex(config.adapter_repo)
        numbers = sorted(
            {
                int(m["number"])
                for r in source.list_repos(_glob(config.adapter_repo), "model")
                if (m := pattern.match(r))
            }
        )
        if not numbers:
            raise BankValidationError(
                [("<bank>", f"no adapter repos matching '{_glob(config.adapter_repo)}' in the {source.name} source")]
            )
        wanted = [(n, None) for n in numbers]
    else:
        wanted = [(int(TASK_ID.match(t)["number"]), TASK_ID.match(t)["slug"]) for t in config.tasks]

    dataset_pattern = _template_regex(config.dataset_repo)
    refs, problems = [], []
    for number, slug in wanted:
        task_id = f"task{number}"
        if slug is None:
            matches = source.list_repos(_glob(config.dataset_repo, number=number), "dataset")
            slugs = sorted({m["slug"] for r in matches if (m := dataset_pattern.match(r))})
            if not slugs:
                problems.append(
                    (
                        task_id,
                        f"no dataset repo matching '{_glob(config.dataset_repo, number=number)}' "
                        f"in the {source.name} source; give the task as task{number}_<slug>",
                    )
                )
                continue
            if len(slugs) > 1:
                problems.append((task_id, f"several dataset repos match: {slugs}; give the task with its slug"))
                continue
            slug = slugs[0]
        refs.append(
            TaskRef(
                task_id=task_id,
                number=number,
                slug=slug,
                adapter_repo=config.adapter_repo.format(number=number),
                dataset_repo=config.dataset_repo.format(number=number, slug=slug),
            )
        )
    if problems:
        raise BankValidationError(problems)
    return sorted(refs, key=lambda r: r.number)
