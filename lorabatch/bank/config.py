"""Where a bank lives and which of its tasks to use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from lorabatch.strict import RuntimeField, StrictModel

TASK_ID = re.compile(r"^task(?P<number>[1-9][0-9]*)(?:_(?P<slug>[A-Za-z0-9_.-]+))?$")

LOTS_OF_LORAS_ADAPTER = "Lots-of-LoRAs/Mistral-7B-Instruct-v0.2-4b-r16-task{number}"
LOTS_OF_LORAS_DATASET = "Lots-of-LoRAs/task{number}_{slug}"


class DemoBankConfig(StrictModel):
    """Build the embedded demo bank into `bank.root` when it is absent."""

    size: Literal["small", "default"] = Field(
        "default", description="'small' (for tests, < 3 min) or 'default' (< 10 min on 2 cores)."
    )
    seed: int = Field(0, description="Seed of every random choice of the builder.")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads of the build (None: a fixed 2, whatever the machine's load). Builds "
        "with different thread counts differ in floating-point rounding, so a bank is reproduced exactly "
        "only with the thread count it was built with.",
    )
    lora_init: Literal["shared", "independent", "mixed"] = Field(
        "mixed",
        description="lora_A initialisation of the task LoRAs: 'shared' (every task from one seed), "
        "'independent' (each task its own seed), 'mixed' (a seeded draw of round(shared_fraction x N) "
        "tasks share one seed, the rest independent: the structure of the real Lots-of-LoRAs bank).",
    )
    shared_fraction: float = Field(
        0.38,
        ge=0.0,
        le=1.0,
        description="Under lora_init 'mixed': the fraction of tasks that share one lora_A init "
        "(0.38 in the real Lots-of-LoRAs bank). Ignored by 'shared' and 'independent'.",
    )
    base: Literal["instruct", "plain"] = Field(
        "instruct",
        description="The base model's regime: 'instruct' (builder 5: after pre-training, an instruction "
        "phase on data of its own teaches it to answer the families' questions with the right content in a "
        "verbose house style, as Mistral-7B-Instruct does; the adapters teach each task's exact form) or "
        "'plain' (no instruction phase: a base that knows no task in the instruction format).",
    )
    families: str | None = Field(
        None,
        description="Task families to build from, as 'module:attribute' naming a tuple of "
        "lorabatch.demo.families.Family (None: the demo's six).",
    )
    parallel: Optional[int] = RuntimeField(
        None,
        ge=1,
        description="Task LoRAs trained at once (None: the cores over `threads`); above 1 on Ray Train (one "
        "worker of `threads` threads each), 1 in the building process. The bank is the same whatever this is.",
    )


class BankConfig(StrictModel):
    source: Literal["hub", "local"] = Field(
        ...,
        description="'hub': repo ids resolved with huggingface_hub (honours its cache and "
        "HF_HUB_OFFLINE); 'local': a directory holding <org>/<repo> folders in the same layout.",
    )
    root: Path | None = Field(
        None, description="For source 'local': the directory that holds the <org>/<repo> folders."
    )
    base_model: str = Field(
        ...,
        description="Repo id of the base model (resolved like the adapters), or a local directory. "
        "Every adapter's base_model_name_or_path must name it.",
    )
    base_model_revision: str | None = Field(None, description="Hub revision of the base model.")
    adapter_repo: str = Field(
        LOTS_OF_LORAS_ADAPTER,
        description="Repo id template of a task's adapter; {number} is the task number.",
    )
    dataset_repo: str = Field(
        LOTS_OF_LORAS_DATASET,
        description="Repo id template of a task's dataset; {number} and {slug} come from the task id.",
    )
    tasks: list[str] | Literal["all"] = Field(
        "all",
        description="Task ids 'task<N>_<slug>' (or 'task<N>': the slug is found in the cache / "
        "local root / hub listing), or 'all' for every adapter the source holds.",
    )
    base_model_name: str | None = Field(
        None,
        description="The name adapters declare as base_model_name_or_path, when it differs from "
        "`base_model` (e.g. base_model is a local copy of mistralai/Mistral-7B-Instruct-v0.2).",
    )
    revision: str | None = Field(None, description="Hub revision for every adapter and dataset repo.")
    cache_dir: Path | None = Field(
        None, description="Hugging Face cache directory for source 'hub' (default: HF_HUB_CACHE)."
    )
    trust_remote_code: bool = Field(
        False,
        description="Let the base model run its own code (transformers' auto_map): passed to every load of its "
        "tokenizer and weights (features, predict, generation with transformers or vLLM). Recorded in the manifest.",
    )
    demo: DemoBankConfig | None = Field(
        None, description="If set, the embedded demo bank is built into `root` when it is missing."
    )
    validate_weights: bool = Field(
        True, description="Read every adapter tensor to check it is finite (slower on big banks)."
    )

    @field_validator("tasks")
    @classmethod
    def _task_ids_well_formed(cls, tasks):
        if tasks == "all":
            return tasks
        bad = [t for t in tasks if not TASK_ID.match(t)]
        if bad:
            raise ValueError(f"task ids must look like 'task<N>' or 'task<N>_<slug>'; bad: {bad[:5]}")
        numbers = [TASK_ID.match(t)["number"] for t in tasks]
        dupes = sorted({n for n in numbers if numbers.count(n) > 1}, key=int)
        if dupes:
            raise ValueError(f"task numbers listed more than once: {dupes[:5]}")
        if not tasks:
            raise ValueError("the task list is empty")
        return tasks

    @field_validator("adapter_repo")
    @classmethod
    def _adapter_template(cls, value):
        fields = _template_fields(value)
        if fields.count("number") != 1 or "slug" in fields:
            raise ValueError(
                f"must contain '{{number}}' once and no '{{slug}}' (adapter repos carry no slug); got {value!r}"
            )
        return value

    @field_validator("dataset_repo")
    @classmethod
    def _dataset_template(cls, value):
        fields = _template_fields(value)
        if fields.count("number") != 1 or fields.count("slug") != 1:
            raise ValueError(f"must contain '{{number}}' and '{{slug}}' once each; got {value!r}")
        return value

    @model_validator(mode="after")
    def _local_needs_root(self):
        if self.source == "local" and self.root is None:
            raise ValueError("bank.source 'local' needs bank.root (the directory of <org>/<repo> folders)")
        if self.demo is not None and self.source != "local":
            raise ValueError("bank.demo builds a local bank: set bank.source to 'local'")
        return self


def _template_fields(template: str) -> list[str]:
    """The placeholders of a repo template, in order; only {number} and {slug} are allowed."""
    import string

    try:
        parts = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # an unmatched brace
        raise ValueError(f"is not a valid template ({err}); got {template!r}") from None
    if any(spec or conv for _, spec, conv in parts):
        raise ValueError(f"placeholders take no format spec or conversion ('{{number}}', '{{slug}}'); got {template!r}")
    fields = [name for name, _, _ in parts]
    unknown = [f for f in fields if f not in ("number", "slug")]
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {['{' + f + '}' for f in unknown]}: only {{number}} and {{slug}}; got {template!r}"
        )
    return fields
