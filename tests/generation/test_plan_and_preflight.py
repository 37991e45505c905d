"""Work rows, resumability and the preflight checks (no Ray, no generation)."""

import json
import shutil

import pytest

from lorabatch.errors import ConfigError
from lorabatch.layout import RunLayout


def _manifest(run):
    import pyarrow.parquet as pq

    return pq.read_table(RunLayout(run).manifest)


def test_plan_rows_settings_and_order(pristine_run, gen):
    from lorabatch.generation.plan import discover_settings, plan_work

    assert discover_settings(pristine_run) == ["base", "oracle", gen.GOOD_SYNTH, gen.BROKEN_SYNTH]
    work = plan_work(pristine_run, _manifest(pristine_run), gen.config())
    # 3 tasks with 3 + 2 + 2 test examples, 4 settings.
    assert work.num_rows == 4 * 7
    rows = work.to_pylist()
    assert [r["setting"] for r in rows[:7]] == ["base"] * 7 and all(r["adapter_path"] is None for r in rows[:7])
    oracle = [r for r in rows if r["setting"] == "oracle"]
    assert {r["adapter_path"] for r in oracle if r["task_id"] == "task2"} == {
        gen.manifest_rows(pristine_run)["task2"]["adapter_path"]
    }
    synth = [r for r in rows if r["setting"] == gen.GOOD_SYNTH and r["task_id"] == "task3"]
    assert synth[0]["adapter_path"] == str(RunLayout(pristine_run).adapter(gen.GOOD_SYNTH, "task3").resolve())
    assert all(r["prompt"] and r["references"] for r in rows)

    sub = plan_work(
        pristine_run, _manifest(pristine_run), gen.config(tasks=["task2"], settings=["base"], examples_per_task=1)
    )
    assert sub.to_pylist()[0]["example_id"] == "task2-11" and sub.num_rows == 1


def test_unknown_task_and_config_errors(pristine_run, gen):
    from pydantic import ValidationError

    from lorabatch.generation.config import GenerationConfig
    from lorabatch.generation.plan import GenerationPlanError, plan_work

    with pytest.raises(GenerationPlanError, match="task99"):
        plan_work(pristine_run, _manifest(pristine_run), gen.config(tasks=["task99"]))
    with pytest.raises(ValidationError, match=r"registered: \['auto', 'hf', 'vllm'\]"):
        GenerationConfig(backend="tgi")
    with pytest.raises(ValidationError, match="enable_lora"):
        GenerationConfig(vllm={"engine_kwargs": {"enable_lora": False}})
    with pytest.raises(ValidationError, match="max_lora_rank"):
        GenerationConfig(vllm={"max_lora_rank": 12})
    with pytest.raises(ValidationError, match="max_cpu_loras"):
        GenerationConfig(vllm={"max_loras": 8, "max_cpu_loras": 4})


def test_whole_run_config_accepts_generation_and_scoring(tmp_path):
    from lorabatch.config import parse_config

    cfg = parse_config(
        {
            "run_dir": str(tmp_path),
            "bank": {"source": "local", "root": str(tmp_path), "base_model": "x/y"},
            "generation": {"backend": "hf", "max_new_tokens": 16},
            "scoring": {"reference": "max"},
        }
    )
    assert cfg.generation.max_new_tokens == 16 and cfg.scoring.reference == "max"
    with pytest.raises(ConfigError, match="generation.backend"):
        parse_config(
            {"run_dir": "r", "bank": {"source": "local", "base_model": "x"}, "generation": {"backend": "nope"}}
        )


def test_preflight_flags_bad_adapters_and_long_prompts(pristine_run, gen):
    from lorabatch.generation.plan import plan_work
    from lorabatch.generation.preflight import RunContext, base_model_modules, preflight

    base = gen.manifest_rows(pristine_run)["task1"]["base_model_path"]
    ctx = RunContext(
        run_dir=str(pristine_run),
        base_model_path=base,
        max_new_tokens=8,
        input_limit=gen.MAX_INPUT_TOKENS,
        max_positions=256,
        backend="hf",
        modules=base_model_modules(base),
    )
    table, max_rank = preflight(plan_work(pristine_run, _manifest(pristine_run), gen.config()), ctx)
    assert max_rank == 8 and ctx.lora_module.startswith("model.layers.")
    errors = {(r["task_id"], r["setting"], r["example_id"]): r["error"] for r in table.to_pylist()}
    assert "does not exist" in errors[("task1", gen.BROKEN_SYNTH, "task1-11")]
    assert "truncated" in errors[("task2", gen.BROKEN_SYNTH, "task2-11")]
    assert "targets no module of the base model" in errors[("task3", gen.BROKEN_SYNTH, "task3-11")]
    assert "prompt is 37 tokens long; the limit is 24" in errors[("task1", "base", gen.LONG_EXAMPLE)]
    ok = [k for k, e in errors.items() if e is None]
    assert len(ok) == 18 and all(s in ("base", "oracle", gen.GOOD_SYNTH) for _, s, _ in ok)
    assert all(ids[0] == 1 for ids in table.column("prompt_token_ids").to_pylist())  # BOS added


def test_adapter_checks_shape_rank_and_pickle(pristine_run, tmp_path, gen):
    import shutil

    from lorabatch.generation.preflight import base_model_modules, check_adapter, input_limit

    m = gen.manifest_rows(pristine_run)["task1"]
    modules = base_model_modules(m["base_model_path"])
    assert check_adapter(m["adapter_path"], modules) == (8, None)
    assert "rank 8 > max_lora_rank 1" in check_adapter(m["adapter_path"], modules, max_rank=1)[1]
    bad = tmp_path / "pickled"
    shutil.copytree(m["adapter_path"], bad)
    (bad / "adapter_model.safetensors").rename(bad / "adapter_model.bin")
    assert "only safetensors" in check_adapter(str(bad), modules)[1]
    (bad / "adapter_config.json").write_text("{not json")
    assert "not valid JSON" in check_adapter(str(bad), modules)[1]
    small = {k: (v[0], v[1] // 2) for k, v in modules.items()}
    assert "do not fit" in check_adapter(m["adapter_path"], small)[1]
    assert input_limit(256, 8, None) == 248 and input_limit(256, 8, 24) == 24
    with pytest.raises(ConfigError, match="max_new_tokens"):
        input_limit(256, 256, None)


def test_read_generations_dedup_and_resume(tmp_path):
    import pyarrow as pa

    from lorabatch.atomic import write_parquet
    from lorabatch.generation.plan import pending_work
    from lorabatch.generation.schema import conform, generation_schema, work_schema
    from lorabatch.generation.store import done_keys, read_generations

    def row(ex, pred, err=None, fp="f1"):
        return {
            "task_id": "task1",
            "setting": "base",
            "example_id": ex,
            "prompt": "p",
            "references": ["r"],
            "prediction": pred,
            "error": err,
            "fingerprint": fp,
        }

    def part(name, rows):
        write_parquet(RunLayout(tmp_path).generations / name, conform(pa.Table.from_pylist(rows), generation_schema()))

    part("part-a.parquet", [row("1", "x"), row("2", None, "boom"), row("3", "old", fp="f0"), row("4", "ok")])
    # Later: a failed retry of 1 (same fingerprint: the success stays), 2 now succeeds, 3 was
    # regenerated with another adapter (fingerprint f1 replaces f0), 4 failed with a new fingerprint.
    part(
        "part-b.parquet",
        [row("1", None, "late"), row("2", "y"), row("3", "new"), row("4", None, "new adapter broken", fp="f2")],
    )
    (RunLayout(tmp_path).generations / "part-c.parquet").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="part-c"):
        got = {r["example_id"]: (r["prediction"], r["error"]) for r in read_generations(tmp_path).to_pylist()}
    assert got == {"1": ("x", None), "2": ("y", None), "3": ("new", None), "4": (None, "new adapter broken")}
    with pytest.warns(UserWarning):
        done = done_keys(tmp_path)
    assert done == {("task1", "base", e): fp for e, fp in (("1", "f1"), ("2", "f1"), ("3", "f1"), ("4", "f2"))}
    with pytest.warns(UserWarning):
        assert set(done_keys(tmp_path, include_failed=False)) == {("task1", "base", e) for e in ("1", "2", "3")}

    def work(fps):
        rows = [{k: v for k, v in row(e, None, fp=fp).items() if k in work_schema().names} for e, fp in fps]
        return pa.Table.from_pylist(rows, schema=work_schema())

    # Pending: never generated (5), or generated with another fingerprint than planned now (2, and
    # 4 whose failed row came from the f2 adapter), or written before fingerprints existed.
    planned = work([("1", "f1"), ("2", "f9"), ("3", "f1"), ("4", "f1"), ("5", "f1")])
    assert pending_work(planned, done).column("example_id").to_pylist() == ["2", "4", "5"]
    assert pending_work(planned, {("task1", "base", "1"): None}).column("example_id").to_pylist() == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert json.dumps(generation_schema().names)  # schema is stable and serialisable


def test_rows_of_a_removed_adapter_are_never_done(fresh_run, gen):
    """A synthesized adapter (provenance with its synthesis key) generated once, then its weights
    removed: its rows are pending again, and stay pending while the weights are missing, even
    after a run recorded them as failed."""
    import pyarrow as pa

    from lorabatch.atomic import write_parquet
    from lorabatch.generation.plan import pending_work, plan_work
    from lorabatch.generation.schema import conform, generation_schema
    from lorabatch.generation.store import done_keys

    adapter = RunLayout(fresh_run).adapter(gen.GOOD_SYNTH, "task1")
    (adapter / "provenance.json").write_text(json.dumps({"synthesis_key": "k1", "setting": gen.GOOD_SYNTH}))
    config = gen.config(settings=[gen.GOOD_SYNTH], tasks=["task1"])

    def write_done(work, error=None):
        rows = work.append_column("prediction", pa.array(["x"] * work.num_rows, pa.string()))
        rows = rows.append_column("error", pa.array([error] * work.num_rows, pa.string()))
        write_parquet(
            RunLayout(fresh_run).generations / f"part-{error or 'ok'}.parquet", conform(rows, generation_schema())
        )

    work = plan_work(fresh_run, _manifest(fresh_run), config)
    write_done(work)
    assert pending_work(work, done_keys(fresh_run)).num_rows == 0

    (adapter / "adapter_model.safetensors").unlink()
    work = plan_work(fresh_run, _manifest(fresh_run), config)
    assert pending_work(work, done_keys(fresh_run)).num_rows == work.num_rows == 3
    write_done(work, error="missing adapter")
    assert pending_work(work, done_keys(fresh_run)).num_rows == 3
    shutil.rmtree(adapter)
    assert pending_work(plan_work(fresh_run, _manifest(fresh_run), config), done_keys(fresh_run)).num_rows == 3

    # The oracle: a bank adapter whose weights are gone is not the manifest's adapter any more.
    import pyarrow.compute as pc

    from lorabatch.bank.manifest import manifest_path

    manifest = _manifest(fresh_run)
    own = fresh_run / "own-task2"
    shutil.copytree(gen.manifest_rows(fresh_run)["task2"]["adapter_path"], own)
    paths = pc.if_else(pc.equal(manifest.column("task_id"), "task2"), str(own), manifest.column("adapter_path"))
    write_parquet(
        manifest_path(fresh_run),
        manifest.set_column(manifest.schema.get_field_index("adapter_path"), "adapter_path", paths),
    )
    oracle = gen.config(settings=["oracle"], tasks=["task2"])
    write_done(plan_work(fresh_run, _manifest(fresh_run), oracle))
    assert pending_work(plan_work(fresh_run, _manifest(fresh_run), oracle), done_keys(fresh_run)).num_rows == 0
    (own / "adapter_model.safetensors").unlink()
    assert pending_work(plan_work(fresh_run, _manifest(fresh_run), oracle), done_keys(fresh_run)).num_rows == 2


def test_failed_generation_run_keeps_the_previous_plan(fresh_run, gen, monkeypatch):
    """plan.json is written when generation starts: a run whose backend cannot start leaves the
    plan of the last run that did; a run with nothing left to do records its plan."""
    from lorabatch.generation import backends
    from lorabatch.generation.backends import BackendUnavailableError, require_backend
    from lorabatch.generation.stage import run_generation

    plan = RunLayout(fresh_run).generation_plan
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"rows_per_setting": {"base": 1}}))

    class Broken:
        def __init__(self, config, context):
            raise BackendUnavailableError("engine cannot start")

    monkeypatch.setattr(backends, "backend_class", lambda name: Broken)
    with pytest.raises(BackendUnavailableError, match="engine cannot start"):
        run_generation(fresh_run, gen.config(backend="hf", settings=["base"]), progress=False)
    assert json.loads(plan.read_text()) == {"rows_per_setting": {"base": 1}}
    assert not list(RunLayout(fresh_run).generations.glob("part-*"))

    # Only rows that fail before generation: nothing to start, the plan is recorded with them.
    result = run_generation(fresh_run, gen.config(backend="hf", settings=[gen.BROKEN_SYNTH]), progress=False)
    assert result.preflight_failed == result.planned == 7
    assert json.loads(plan.read_text()) == {"rows_per_setting": {gen.BROKEN_SYNTH: 7}}

    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(BackendUnavailableError, match="needs the vllm package"):
        require_backend("vllm", local=True)
    assert require_backend("vllm", local=False) == "vllm" and require_backend("auto", local=True) == "hf"


def test_auto_backend_is_vllm_only_on_gpus(fresh_run, gen, monkeypatch):
    """'auto': batched PEFT on CPUs even where vllm(-cpu) is installed (it measured faster there),
    vLLM where the cluster has a GPU and vllm imports, hf without vllm; explicit names are kept."""
    from lorabatch.generation import backends
    from lorabatch.generation.stage import run_generation

    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    assert backends.resolve_backend_name("auto") == "hf"
    assert backends.resolve_backend_name("auto", has_gpu=True) == "vllm"
    assert backends.resolve_backend_name("vllm") == "vllm" and backends.resolve_backend_name("hf", has_gpu=True) == "hf"
    # Rows that fail before generation start no engine: the name reported is the stage's resolution.
    config = gen.config(backend="auto", settings=[gen.BROKEN_SYNTH], retry_failed=True)
    assert run_generation(fresh_run, config, progress=False).backend == "hf"
    monkeypatch.setattr(backends, "cluster_has_gpu", lambda: True)
    assert run_generation(fresh_run, config, progress=False).backend == "vllm"

    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    assert backends.resolve_backend_name("auto", has_gpu=True) == "hf"


def test_auto_backend_is_vllm_on_cpus_where_it_measured_faster(fresh_run, gen, monkeypatch, tmp_path):
    """On a cluster without GPU, 'auto' picks vLLM only for vLLM in bfloat16 on a CPU with AMX and a
    base model of at least CPU_VLLM_MIN_PARAMETERS, counted from the safetensors headers."""
    import torch
    from safetensors.torch import save_file

    from lorabatch.bank.manifest import load_manifest
    from lorabatch.generation import backends
    from lorabatch.generation.stage import run_generation

    shards = tmp_path / "model"
    shards.mkdir()
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5)}, str(shards / "model-1.safetensors"))
    save_file({"c": torch.zeros(2, 3, 7, dtype=torch.float16)}, str(shards / "model-2.safetensors"))
    assert backends.checkpoint_parameters(shards) == 12 + 5 + 42
    assert backends.checkpoint_parameters(tmp_path / "absent") == 0

    base = load_manifest(fresh_run).column("base_model_path")[0].as_py()
    n = backends.checkpoint_parameters(base)
    assert n > 0
    assert backends.vllm_compute_dtype(base, "auto") == "float32"  # the tiny bank's checkpoint
    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    monkeypatch.setattr(backends, "cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(backends, "CPU_VLLM_MIN_PARAMETERS", n)
    assert backends.cpu_favours_vllm(base, "bfloat16")
    assert not backends.cpu_favours_vllm(base, "auto")  # float32: batched PEFT measured faster
    monkeypatch.setattr(backends, "CPU_VLLM_MIN_PARAMETERS", n + 1)
    assert not backends.cpu_favours_vllm(base, "bfloat16")  # a smaller model than measured
    monkeypatch.setattr(backends, "CPU_VLLM_MIN_PARAMETERS", n)
    monkeypatch.setattr(backends, "cpu_has_amx_bf16", lambda: False)
    assert not backends.cpu_favours_vllm(base, "bfloat16")
    monkeypatch.setattr(backends, "cpu_has_amx_bf16", lambda: True)

    # Rows that fail before generation start no engine: the name reported is the stage's resolution.
    config = gen.config(backend="auto", settings=[gen.BROKEN_SYNTH], retry_failed=True, vllm={"dtype": "bfloat16"})
    assert run_generation(fresh_run, config, progress=False).backend == "vllm"
    fp32 = gen.config(backend="auto", settings=[gen.BROKEN_SYNTH], retry_failed=True)
    assert run_generation(fresh_run, fp32, progress=False).backend == "hf"
    assert run_generation(fresh_run, config.model_copy(update={"backend": "hf"}), progress=False).backend == "hf"
