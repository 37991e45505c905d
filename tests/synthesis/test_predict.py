"""`lorabatch predict`: input checks before any work, the adapter it writes, nothing left on failure.

The features and distances stages are replaced by a fixed distance row here (their own tests
cover them); everything after the distances is the real code.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from lorabatch.errors import DatasetError
from lorabatch.layout import RunLayout
from lorabatch.synthesis.coefficients import attentional_coefficients, normalized_coefficients
from lorabatch.synthesis.stage import SynthesisError
from lorabatch.workflows.predict import predict_adapter
from lorabatch.workflows.userdata import read_user_dataset

from .conftest import QUERY_D, load_tensors


@pytest.fixture()
def bank(predict_bank):
    return predict_bank


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"input": "red cat", "output": ["blue"]}, {"input": "one two", "output": "three"}]


def test_reads_jsonl_csv_parquet_and_dataset_dirs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lorabatch.bank.datasets import write_split

    t1 = read_user_dataset(write_jsonl(tmp_path / "a.jsonl", ROWS))
    (tmp_path / "b.csv").write_text("input,output,extra\nred cat,blue,x\none two,three,y\n")
    t2 = read_user_dataset(tmp_path / "b.csv")
    pq.write_table(pa.table({"input": ["red cat", "one two"], "output": [["blue"], ["three"]]}), tmp_path / "c.parquet")
    t3 = read_user_dataset(tmp_path / "c.parquet")
    write_split(
        tmp_path / "d",
        "train",
        [{"input": "red cat", "output": ["blue"], "id": "x"}, {"input": "one two", "output": ["three"], "id": "y"}],
    )
    t4 = read_user_dataset(tmp_path / "d")
    for t in (t1, t2, t3, t4):
        assert t.column("input").to_pylist() == ["red cat", "one two"]
        assert t.column("output").to_pylist() == [["blue"], ["three"]]
    assert json.loads(t2.schema.metadata[b"lorabatch.ignored_columns"]) == ["extra"]


def test_predict_writes_the_expected_adapter(bank, tmp_path):
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    out = tmp_path / "adapter"
    result = predict_adapter(bank.run_dir, data, out, metric="JS", model="normalized", progress=False)
    c = normalized_coefficients(QUERY_D[None, :], exclude_self=False)[0]
    assert np.abs(result.coefficients - c).max() <= 1e-12 and (c > 0).all()
    assert result.top[0] == ("task2", pytest.approx(c[1]))  # the nearest bank task leads
    banks = [load_tensors(d) for d in bank.adapter_dirs]
    got = load_tensors(out)
    for k in banks[0]:
        assert np.abs(got[k] - sum(c[j] * banks[j][k] for j in range(5))).max() <= 1e-6
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["setting"] == "JS-normalized" and prov["query"]["n_examples"] == 2
    assert bank.calls == [("JS", 2)]


def test_predict_leaves_excluded_tasks_out(bank, tmp_path):
    """`exclude`: the held-out task gets weight 0, the others the model's coefficients over them."""
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    result = predict_adapter(
        bank.run_dir, data, tmp_path / "loo", metric="JS", model="attentional", progress=False, exclude=["task2"]
    )
    kept = [0, 2, 3, 4]
    c = attentional_coefficients(QUERY_D[kept][None, :], exclude_self=False)[0]
    assert result.coefficients[1] == 0.0
    assert np.abs(result.coefficients[kept] - c).max() <= 1e-12
    assert json.loads((tmp_path / "loo" / "provenance.json").read_text())["excluded_tasks"] == ["task2"]
    with pytest.raises(SynthesisError, match="cannot leave tasks out"):
        predict_adapter(bank.run_dir, data, tmp_path / "neural", model="neural", progress=False, exclude=["task2"])
    with pytest.raises(SynthesisError, match="task999"):
        predict_adapter(bank.run_dir, data, tmp_path / "bad", progress=False, exclude=["task999"])
    assert not (tmp_path / "neural").exists() and not (tmp_path / "bad").exists()


def test_cli_prints_top_contributors(bank, tmp_path):
    from typer.testing import CliRunner

    from lorabatch.cli import app

    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--bank",
            str(bank.run_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "--model",
            "attentional",
            "--top-k",
            "2",
            "--top",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    c = attentional_coefficients(QUERY_D[None, :], exclude_self=False, top_k=2)[0]
    lines = [ln.split() for ln in res.output.splitlines() if ln.startswith("  task")]
    assert [(t, float(w)) for t, w in lines] == [
        ("task2", pytest.approx(c[1], abs=1e-4)),
        ("task4", pytest.approx(c[3], abs=1e-4)),
    ]
    assert "adapter written to" in res.output


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unknown_columns_are_named(bank, tmp_path):
    (tmp_path / "my.csv").write_text("prompt,completion\nhi,there\n")
    with pytest.raises(
        DatasetError, match=r"missing column\(s\) \['input', 'output'\].*unknown: \['prompt', 'completion'\]"
    ):
        predict_adapter(bank.run_dir, tmp_path / "my.csv", tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)
    assert bank.calls == []  # refused before any feature work


@pytest.mark.parametrize("content, message", [("", "the file is empty"), ("input,output\n", "has no rows")])
def test_empty_file_is_refused(bank, tmp_path, content, message):
    (tmp_path / "my.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        predict_adapter(bank.run_dir, tmp_path / "my.csv", tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_bank_without_features_is_refused(fresh_run, tmp_path):
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    with pytest.raises(SynthesisError, match="has no cached features"):
        predict_adapter(fresh_run.run_dir, data, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_neural_without_trained_model_is_refused(bank, tmp_path):
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    with pytest.raises(SynthesisError, match="no trained neural model for JS"):
        predict_adapter(bank.run_dir, data, tmp_path / "out", model="neural", progress=False)
    assert_nothing_written(tmp_path)


def test_dataset_with_another_tokenizer_is_refused(bank, tmp_path):
    from lorabatch.bank.datasets import write_split

    data = tmp_path / "mydata"
    write_split(data, "train", [{"input": "red cat", "output": ["blue"], "id": "1"}])
    (data / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}}}')
    with pytest.raises(SynthesisError, match="differs from the bank's base model tokenizer"):
        predict_adapter(bank.run_dir, data, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_bank_features_from_another_tokenizer_are_refused(bank, tmp_path):
    RunLayout(bank.run_dir).features_meta.write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    with pytest.raises(SynthesisError, match="another tokenizer"):
        predict_adapter(bank.run_dir, data, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_failure_during_synthesis_leaves_no_directory(bank, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("lorabatch.synthesis.writer.finish_adapter_dir", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        predict_adapter(bank.run_dir, data, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_refuses_to_replace_a_foreign_directory(bank, tmp_path):
    data = write_jsonl(tmp_path / "my.jsonl", ROWS)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(SynthesisError, match="refusing to replace"):
        predict_adapter(bank.run_dir, data, tmp_path / "home", progress=False)
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


FEW_ROWS = [{"input": f"red cat {w} dog", "output": [w]} for w in ("blue", "green", "one", "two", "big", "small")]


def test_fewshot_select_and_refine_for_a_new_dataset(bank, tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from lorabatch.cli import app
    from lorabatch.fewshot.loss import FewShotLoss
    from lorabatch.workflows.fewshot_predict import sample_rows
    from lorabatch.workflows.userdata import read_user_dataset

    data = write_jsonl(tmp_path / "d.jsonl", FEW_ROWS)
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--bank",
            str(bank.run_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "sel"),
            "--fewshot",
            "select",
            "--fewshot-examples",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "select:" in res.output and "forward passes" in res.output
    prov = _json.loads((tmp_path / "sel" / "provenance.json").read_text())
    assert prov["setting"] == "select" and prov["fewshot"]["examples"] == 4
    # The chosen adapter, loaded back from disk, has the recorded loss on the same sampled rows,
    # and no candidate (e.g. the nearest bank task's own adapter) has a lower one.
    rows = sample_rows(read_user_dataset(data), 4, 0, prov["query"]["data_sha256"])
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    manifest = pq.read_table(RunLayout(bank.run_dir).manifest).to_pylist()
    cfg = _json.loads((tmp_path / "sel" / "adapter_config.json").read_text())
    ev = FewShotLoss(str(bank.base_dir), cfg, "cpu")
    ev.set_examples(rows)
    chosen = ev.loss(load_file(str(tmp_path / "sel" / "adapter_model.safetensors")))
    assert chosen == pytest.approx(prov["fewshot"]["loss"], rel=1e-5)
    nearest = manifest[int(np.argmin(QUERY_D))]["adapter_path"]
    assert chosen <= ev.loss(load_file(str(Path(nearest) / "adapter_model.safetensors"))) + 1e-9

    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--bank",
            str(bank.run_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "ref"),
            "--fewshot",
            "refine",
            "--fewshot-examples",
            "4",
            "--refine-budget",
            "6",
            "--refine-top-k",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    selected = prov["fewshot"]
    prov = _json.loads((tmp_path / "ref" / "provenance.json").read_text())
    # refine starts from select's choice (select's candidates count in its cost, the pool's scores
    # come from them) and never ends below its start's few-shot Rouge-L
    assert prov["fewshot"]["choice"] == f"select:{selected['choice']}"
    assert selected["evaluations"] < prov["fewshot"]["evaluations"] <= selected["evaluations"] + 6
    assert prov["fewshot"]["rouge_l"] >= prov["fewshot"]["start_rouge_l"]
    if prov["fewshot"]["kept_select"]:  # select's dense choice did better than any exact top-2 mixture tried
        assert prov["fewshot"]["rouge_l"] == selected["rouge_l"] and prov["mixing"]["mode"] == "paper"
    else:
        assert prov["mixing"]["mode"] == "exact" and prov["n_nonzero_coefficients"] <= 2

    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--bank",
            str(bank.run_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "ref2"),
            "--fewshot",
            "refine",
            "--refine-from",
            "setting",
            "--refine-budget",
            "6",
            "--refine-top-k",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    prov = _json.loads((tmp_path / "ref2" / "provenance.json").read_text())
    assert (
        prov["fewshot"]["choice"] == "JS-normalized" and prov["fewshot"]["evaluations"] <= 6 + 5
    )  # budget + the pool (all 5 bank tasks)
    assert prov["fewshot"]["rouge_l"] >= prov["fewshot"]["start_rouge_l"] and not prov["fewshot"]["kept_select"]
    assert prov["mixing"]["mode"] == "exact" and prov["n_nonzero_coefficients"] <= 2

    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--bank",
            str(bank.run_dir),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
            "--fewshot",
            "bogus",
        ],
    )
    from lorabatch.errors import ConfigError

    assert (
        isinstance(res.exception, ConfigError) and "--fewshot" in str(res.exception) and not (tmp_path / "x").exists()
    )


def test_fewshot_predict_can_leave_bank_tasks_out(bank, tmp_path):
    """`exclude` (a leave-one-out evaluation's held-out task): no candidate, pool task or refine
    source gives it weight, and the provenance says it was left out."""
    import pyarrow.parquet as pq

    from lorabatch.fewshot.config import FewShotConfig
    from lorabatch.workflows.fewshot_predict import fewshot_predict

    ids = [r["task_id"] for r in pq.read_table(RunLayout(bank.run_dir).manifest).to_pylist()]
    nearest = ids[int(np.argmin(QUERY_D))]
    data = write_jsonl(tmp_path / "d.jsonl", FEW_ROWS)
    fewshot = FewShotConfig(examples=4, refine={"top_k": 2, "budget": 6})
    kept = [j for j, t in enumerate(ids) if t != nearest]
    for method in ("select", "refine"):
        out = tmp_path / method
        result, chosen = fewshot_predict(
            bank.run_dir, data, out, method=method, fewshot=fewshot, progress=False, exclude=[nearest]
        )
        assert result.coefficients[ids.index(nearest)] == 0.0 and np.abs(result.coefficients[kept]).sum() > 0
        prov = json.loads((out / "provenance.json").read_text())
        assert prov["excluded_tasks"] == [nearest]
        if method == "select":
            assert all(name != f"bank:{nearest}" for name in chosen.details["candidate_losses"])
        else:
            assert nearest not in chosen.details["pool"] and nearest not in chosen.details["sources"]
    with pytest.raises(SynthesisError, match="task999"):
        fewshot_predict(bank.run_dir, data, tmp_path / "bad", method="select", fewshot=fewshot, exclude=["task999"])
    assert not (tmp_path / "bad").exists()  # refused before any work
