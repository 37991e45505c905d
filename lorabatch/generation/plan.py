"""The work of the generation stage: one row per (task, setting, example), and what is left of it.

Settings: `base` (no adapter), `oracle` (the task's own bank adapter, from the manifest), `icl`
(no adapter, k training examples before each prompt: `generation.icl`) and every synthesized
setting `<metric>-<model>`, whose adapter for task t is `RUN/adapters/<setting>/<t>/`.
A synthesized adapter that does not exist is not skipped here: its rows go on and fail with a
clear error in the preflight, so a missing adapter is visible in the results.
"""

from __future__ import annotations

from pathlib import Path

from lorabatch.bank.datasets import read_split
from lorabatch.errors import LorabatchError
from lorabatch.generation.fingerprint import adapter_identity, is_missing_adapter, params_json, row_fingerprint
from lorabatch.generation.icl import in_context_prompts
from lorabatch.generation.schema import BASE_SETTING, KEY_COLUMNS, ORACLE_SETTING, work_schema
from lorabatch.layout import RunLayout
from lorabatch.settings import ICL


class GenerationPlanError(LorabatchError):
    """The requested work cannot be planned (unknown task, no manifest, nothing to evaluate)."""


def adapters_root(run_dir) -> Path:
    return RunLayout(run_dir).adapters


def discover_settings(run_dir) -> list[str]:
    """base, oracle, then every synthesized setting directory under RUN/adapters/ (sorted)."""
    root = adapters_root(run_dir)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    return [BASE_SETTING, ORACLE_SETTING, *[s for s in found if s not in (BASE_SETTING, ORACLE_SETTING)]]


def select_tasks(manifest, tasks) -> list[dict]:
    """Manifest rows (as dicts) of the requested tasks, in manifest order."""
    rows = manifest.select(["task_id", "adapter_path", "adapter_sha256", "dataset_path", "base_model_path"]).to_pylist()
    if tasks == "all":
        return rows
    known = {r["task_id"]: r for r in rows}
    # A task may be named 'task<N>' or 'task<N>_<slug>'; the manifest holds 'task<N>'.
    wanted = [t.split("_", 1)[0] for t in tasks]
    unknown = [t for t, w in zip(tasks, wanted) if w not in known]
    if unknown:
        raise GenerationPlanError(f"tasks not in the bank manifest: {unknown} (manifest has {sorted(known)[:10]}...)")
    order = {t: i for i, t in enumerate(dict.fromkeys(wanted))}
    return sorted((known[w] for w in order), key=lambda r: order[r["task_id"]])


def plan_work(
    run_dir, manifest, config, adapter_ids: dict | None = None, icl_shots: dict[str, list[dict]] | None = None
) -> "pa.Table":  # noqa: F821
    """The work rows of `config` (a GenerationConfig) as a pyarrow Table with `work_schema()`.

    Rows are ordered by setting, then task, then example, so consecutive rows share an adapter.
    Each row carries its `fingerprint` (`generation.fingerprint`); `adapter_ids` {(setting, task):
    identity} gives the identity of adapters that do not exist yet (just-in-time synthesis).
    `icl_shots` {task: rows} holds the in-context examples the `icl` setting needs.
    """
    import pyarrow as pa

    run_dir = Path(run_dir)
    tasks = select_tasks(manifest, config.tasks)
    if not tasks:
        raise GenerationPlanError("the bank manifest has no tasks")
    settings = list(config.settings) if config.settings is not None else discover_settings(run_dir)
    if ICL in settings and icl_shots is None:
        raise GenerationPlanError(
            "the 'icl' setting needs the tasks' in-context examples: run it through `lorabatch sweep` "
            "(fewshot.controls), which draws them"
        )
    examples = {}
    for task in tasks:
        table = read_split(task["dataset_path"], config.split, columns=["input", "output", "id"])
        if config.examples_per_task is not None:
            table = table.slice(0, config.examples_per_task)
        examples[task["task_id"]] = table.to_pylist()
    icl = in_context_prompts(manifest, config, icl_shots) if ICL in settings else None
    columns: dict[str, list] = {name: [] for name in work_schema().names}
    params = params_json(config)
    for setting in settings:
        for task in tasks:
            rows = examples[task["task_id"]]
            prefix = icl.prefix(task["task_id"], [ex["input"] for ex in rows]) if setting == ICL else ""
            adapter = adapter_for(run_dir, setting, task)
            identity = (adapter_ids or {}).get((setting, task["task_id"]))
            if identity is None:
                sha = task["adapter_sha256"] if setting == ORACLE_SETTING else None
                identity = adapter_identity(adapter, sha)
            for ex in rows:
                prompt = prefix + ex["input"]
                columns["task_id"].append(task["task_id"])
                columns["setting"].append(setting)
                columns["example_id"].append(str(ex["id"]))
                columns["prompt"].append(prompt)
                columns["references"].append(list(ex["output"] or []))
                columns["adapter_path"].append(adapter)
                columns["fingerprint"].append(row_fingerprint(identity, prompt, params))
    return pa.table(columns, schema=work_schema())


def adapter_for(run_dir: Path, setting: str, task: dict) -> str | None:
    if setting in (BASE_SETTING, ICL):
        return None
    if setting == ORACLE_SETTING:
        return str(Path(task["adapter_path"]).resolve())
    return str(RunLayout(run_dir).adapter(setting, task["task_id"]).resolve())


def rows_per_setting(work) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in work.column("setting").to_pylist():
        counts[s] = counts.get(s, 0) + 1
    return counts


def pending_work(work, done: dict[tuple[str, str, str], str | None]):
    """The rows of `work` not done yet: no row with their (task_id, setting, example_id) is in
    `done` ({key: fingerprint}, see `store.done_keys`), or that row's fingerprint differs from the
    one planned now (the adapter, prompt or decoding changed since; rows written before
    fingerprints existed count as stale). A row whose adapter is missing now is never done."""
    import pyarrow as pa

    if not done or work.num_rows == 0:
        return work
    keys = zip(*(work.column(c).to_pylist() for c in KEY_COLUMNS))
    prints = work.column("fingerprint").to_pylist()
    mask = pa.array([is_missing_adapter(fp) or done.get(k, "") != fp for k, fp in zip(keys, prints)], type=pa.bool_())
    return work.filter(mask)
