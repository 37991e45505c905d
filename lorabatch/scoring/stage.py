"""The scoring stage: RUN/generations/ -> RUN/scores/{examples,tasks,summary}.parquet.

Per-example Rouge-L runs as a Ray Data `map_batches` over the generation rows (the expensive
part on a full sweep); the per-task and per-setting aggregation is small and runs on the driver.
Each output is one Parquet file written atomically. Schemas: lorabatch.scoring.aggregate.
"""

from __future__ import annotations

from lorabatch.atomic import write_parquet
from lorabatch.errors import LorabatchError
from lorabatch.generation.store import read_generations
from lorabatch.layout import RunLayout
from lorabatch.progress import quiet_ray_data
from lorabatch.raysession import task_fault_tolerance
from lorabatch.scoring.aggregate import score_examples, summarize, task_scores, task_templates

GENERATION_COLUMNS = ["task_id", "setting", "example_id", "prediction", "references", "error"]


class ScoringError(LorabatchError):
    """Nothing to score (no generations) or unreadable inputs."""


def _score_batch(batch, reference: str, failed_rows: str, templates: dict[str, list[str]]):
    import pyarrow as pa

    return pa.Table.from_pylist(
        score_examples(batch.to_pylist(), reference, failed_rows, templates), schema=_examples_schema()
    )


def _examples_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("task_id", pa.string()),
            ("setting", pa.string()),
            ("example_id", pa.string()),
            ("rouge_l", pa.float64()),
            ("exact_match", pa.float64()),
            ("content", pa.float64()),
            ("error", pa.string()),
        ]
    )


def run_scoring(run_dir, config, progress: bool = True) -> list[dict]:
    """Score every generation row of the run; returns the summary rows (also written to disk)."""
    import pyarrow as pa

    generations = read_generations(run_dir, columns=GENERATION_COLUMNS)
    if generations.num_rows == 0:
        raise ScoringError(f"no generations in {RunLayout(run_dir).generations}: run `lorabatch generate` first")
    # A task's template words depend on all its references: found here, before rows are split.
    templates = task_templates(generations.select(["task_id", "example_id", "references"]).to_pylist())
    if config.executor == "ray":
        import ray

        quiet_ray_data()
        slices = [generations.slice(i, config.batch_size) for i in range(0, generations.num_rows, config.batch_size)]
        ds = ray.data.from_arrow(slices).map_batches(
            _score_batch,
            fn_kwargs={"reference": config.reference, "failed_rows": config.failed_rows, "templates": templates},
            batch_format="pyarrow",
            batch_size=config.batch_size,
            # Scoring is a pure function of its rows: a batch whose process or node died is rerun.
            **task_fault_tolerance(),
        )
        examples = pa.concat_tables([ray.get(ref) for ref in ds.to_arrow_refs()]).to_pylist()
    else:
        examples = score_examples(generations.to_pylist(), config.reference, config.failed_rows, templates)
    examples.sort(key=lambda e: (e["setting"], e["task_id"], e["example_id"]))
    tasks = task_scores(examples)
    summary = summarize(tasks)
    layout = RunLayout(run_dir)
    write_parquet(layout.score_table("examples"), pa.Table.from_pylist(examples, schema=_examples_schema()))
    write_parquet(layout.score_table("tasks"), pa.Table.from_pylist(tasks))
    write_parquet(layout.score_table("summary"), pa.Table.from_pylist(summary))
    return summary
