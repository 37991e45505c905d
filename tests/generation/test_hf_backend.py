"""The transformers + PEFT backend end to end on a tiny run (Ray in-process, one actor)."""

import logging

import pytest

from lorabatch.layout import RunLayout

PROGRESS: list[str] = []  # the progress lines of the hf_run fixture's generation


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def hf_run(pristine_run, tmp_path_factory, local_ray, gen):
    import shutil

    from lorabatch.generation import read_generations, run_generation

    run = tmp_path_factory.mktemp("hf") / "run"
    shutil.copytree(pristine_run, run)
    # batch_size 64 > row count: base, oracle and synthesized rows share one mixed-adapter batch.
    handler, logger = _Lines(), logging.getLogger("lorabatch.progress")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = run_generation(run, gen.config(backend="hf", batch_size=64), progress=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    PROGRESS[:] = handler.lines
    return run, result, {(r["task_id"], r["setting"], r["example_id"]): r for r in read_generations(run).to_pylist()}


def test_every_row_recorded_bad_rows_fail_alone(hf_run, gen):
    run, result, rows = hf_run
    assert result.planned == 28 and result.generated == 28 and result.failed == 10 == result.preflight_failed
    failed = {k for k, r in rows.items() if r["error"]}
    assert {k for k in failed if k[1] == gen.BROKEN_SYNTH} == {k for k in rows if k[1] == gen.BROKEN_SYNTH}
    assert {k for k in failed if k[1] != gen.BROKEN_SYNTH} == {
        ("task1", s, gen.LONG_EXAMPLE) for s in ("base", "oracle", gen.GOOD_SYNTH)
    }
    for k, r in rows.items():
        if not r["error"]:
            assert (
                r["backend"] == "hf"
                and r["prediction"] is not None
                and 0 < r["num_generated_tokens"] <= gen.MAX_NEW_TOKENS
            )
        else:
            assert r["prediction"] is None


def test_progress_is_one_line_of_rows_written(hf_run):
    """The stage reports the rows it wrote and their tokens/s (off a terminal: lines of the log)."""
    _, result, _ = hf_run
    assert PROGRESS, "generation said nothing"
    runnable = result.generated - result.preflight_failed
    assert PROGRESS[-1].startswith(f"generation (hf): {runnable}/{runnable} rows (100 %), ")
    assert "k tokens/s" in PROGRESS[-1]


def test_outputs_equal_unbatched_reference(hf_run, gen):
    """Base rows of the mixed batch equal base-alone outputs; adapter rows equal single-adapter PEFT."""
    run, _, rows = hf_run
    manifest = gen.manifest_rows(run)
    base = manifest["task1"]["base_model_path"]
    by_adapter: dict = {}
    for k, r in rows.items():
        if not r["error"]:
            by_adapter.setdefault(r["adapter_path"], []).append(r)
    assert None in by_adapter and len(by_adapter) == 7  # base + 3 oracle + 3 synthesized
    for adapter, rs in by_adapter.items():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base)
        ref = gen.reference_outputs(base, adapter, [tok(r["prompt"])["input_ids"] for r in rs])
        assert [r["generated_token_ids"] for r in rs] == ref, adapter


def test_different_adapters_give_different_outputs(hf_run):
    _, _, rows = hf_run
    outputs: dict = {}
    for (task, setting, ex), r in rows.items():
        if not r["error"]:
            outputs.setdefault((task, ex), {})[setting] = tuple(r["generated_token_ids"])
    for per_setting in outputs.values():
        assert per_setting["oracle"] != per_setting["base"]
        assert per_setting["JS-normalized"] != per_setting["oracle"]


def test_rerun_skips_done_rows(hf_run, gen):
    from lorabatch.generation import run_generation
    from lorabatch.generation.store import generation_files

    run, _, _ = hf_run
    files = generation_files(run)
    again = run_generation(run, gen.config(backend="hf"), progress=False)
    # Only the rows of the missing adapter (BROKEN_SYNTH/task1, 3 examples) are tried again: a
    # row without its adapter never counts as done. They fail again before generation.
    assert again.planned == 28 and again.skipped == 25 and again.generated == again.preflight_failed == 3
    new = [f for f in generation_files(run) if f not in files]
    assert len(new) == 1 and new[0].name.endswith("-preflight.parquet")


def test_generate_and_score_commands(hf_run, tmp_path):
    """`lorabatch score RUN` prints the results table from the generations above."""
    from typer.testing import CliRunner

    from lorabatch.cli import app

    run, _, _ = hf_run
    out = CliRunner().invoke(app, ["score", str(run), "--local"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:3] == ["setting", "Rouge-L", "Δ"]
    assert [ln.split()[0] for ln in lines[2:6]] == ["base", "JS-normalized", "XX-broken", "oracle"]
    assert RunLayout(run).score_table("summary").is_file()


def test_more_adapters_in_a_batch_than_an_actor_holds(pristine_run, tmp_path, local_ray, gen):
    """A batch with more distinct adapters than `max_resident_adapters` is generated in groups,
    so no adapter is unloaded before its rows run (and outputs equal the unbatched reference)."""
    import shutil

    from transformers import AutoTokenizer

    from lorabatch.generation import read_generations, run_generation

    run = tmp_path / "run"
    shutil.copytree(pristine_run, run)
    cfg = gen.config(backend="hf", batch_size=64, hf={"max_resident_adapters": 2})
    result = run_generation(run, cfg, progress=False)
    rows = read_generations(run).to_pylist()
    assert result.generated == result.planned
    good = [r for r in rows if not r["error"]]
    assert len({r["adapter_path"] for r in good}) == 7
    assert not [r for r in rows if r["error"] and "non-existing adapter" in r["error"]]
    base = gen.manifest_rows(run)["task1"]["base_model_path"]
    tok = AutoTokenizer.from_pretrained(base)
    for r in good[:6]:
        assert (
            r["generated_token_ids"]
            == gen.reference_outputs(base, r["adapter_path"], [tok(r["prompt"])["input_ids"]])[0]
        )


def test_changed_adapter_or_decoding_regenerates_only_what_changed(hf_run, tmp_path, local_ray, gen):
    """A row is done only while its fingerprint (adapter identity, prompt, decoding) is unchanged:
    swapping one synthesized adapter regenerates that task's rows alone; another max_new_tokens
    regenerates every row. Scoring then reads the new rows."""
    import shutil

    from lorabatch.generation import read_generations, run_generation

    run = tmp_path / "run"
    shutil.copytree(hf_run[0], run)
    before = {(r["task_id"], r["setting"], r["example_id"]): r for r in read_generations(run).to_pylist()}
    assert all(r["fingerprint"] for r in before.values())
    target = RunLayout(run).adapter(gen.GOOD_SYNTH, "task1")
    shutil.rmtree(target)
    shutil.copytree(gen.manifest_rows(run)["task1"]["adapter_path"], target)  # task1 now holds its own adapter

    again = run_generation(run, gen.config(backend="hf"), progress=False)
    rows = {(r["task_id"], r["setting"], r["example_id"]): r for r in read_generations(run).to_pylist()}
    changed = {k for k in rows if k[:2] == ("task1", gen.GOOD_SYNTH)}
    missing = {k for k in rows if k[:2] == ("task1", gen.BROKEN_SYNTH)}  # no adapter: tried on every run
    assert again.generated == len(changed | missing) > len(missing) and again.skipped == again.planned - len(
        changed | missing
    )
    for k in changed:
        if not rows[k]["error"]:
            assert rows[k]["fingerprint"] != before[k]["fingerprint"]
            assert rows[k]["generated_token_ids"] == rows[("task1", "oracle", k[2])]["generated_token_ids"]
    assert all(rows[k] == before[k] for k in rows if k not in changed | missing)

    longer = run_generation(run, gen.config(backend="hf", max_new_tokens=gen.MAX_NEW_TOKENS + 2), progress=False)
    assert longer.skipped == 0 and longer.generated == longer.planned
