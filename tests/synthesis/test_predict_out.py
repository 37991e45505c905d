"""`lorabatch predict --out` never deletes what it did not write: it writes into a new or empty
directory or over exactly a previous lorabatch adapter, and never inside the bank."""

import json

import pytest
from typer.testing import CliRunner

from lorabatch.cli import app
from lorabatch.layout import RunLayout

ROWS = [{"input": "red cat", "output": ["blue"]}, {"input": "one two", "output": "three"}]


@pytest.fixture()
def bank(predict_bank):
    return predict_bank


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "my.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def predict(bank, data, out):
    return CliRunner().invoke(app, ["predict", "--bank", str(bank.run_dir), "--data", str(data), "--out", str(out)])


def test_directory_with_provenance_and_user_files_is_kept(bank, data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "provenance.json").write_text(json.dumps({"note": "my own provenance"}))
    (out / "thesis.tex").write_text("keep me")
    res = predict(bank, data, out)
    assert res.exit_code != 0 and "refusing to replace it" in str(res.exception) and "thesis.tex" in str(res.exception)
    assert (out / "thesis.tex").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == [
        "provenance.json",
        "thesis.tex",
    ]


def test_adapter_files_with_foreign_provenance_are_kept(bank, data, tmp_path):
    out = tmp_path / "a"
    assert predict(bank, data, out).exit_code == 0
    (out / "provenance.json").write_text(json.dumps({"written_by": "someone else"}))
    res = predict(bank, data, out)
    assert res.exit_code != 0 and "was not written by lorabatch" in str(res.exception)
    assert json.loads((out / "provenance.json").read_text()) == {"written_by": "someone else"}


def test_new_empty_or_previous_adapter_directory_is_written(bank, data, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        res = predict(bank, data, out)
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in out.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "provenance.json",
        ]
    first = (tmp_path / "new" / "provenance.json").read_text()
    assert predict(bank, data, tmp_path / "new").exit_code == 0  # a previous lorabatch adapter is replaced
    assert (tmp_path / "new" / "provenance.json").read_text() == first


def test_out_inside_the_bank_is_refused(bank, data):
    for out in (
        RunLayout(bank.run_dir).adapters / "mine",
        bank.run_dir,
        bank.adapter_dirs[0],
        bank.adapter_dirs[1] / "sub",
    ):
        res = predict(bank, data, out)
        assert res.exit_code != 0 and "lies inside the bank" in str(res.exception), out
    assert not RunLayout(bank.run_dir).adapters.exists() and not (bank.adapter_dirs[1] / "sub").exists()


def test_cli_error_is_one_line_exit_2(bank, data, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorabatch.cli",
            "predict",
            "--bank",
            str(bank.run_dir),
            "--data",
            str(data),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {out} exists and it holds files other than a lorabatch adapter's (notes.txt): refusing to replace it; "
        "choose a new or empty directory"
    ]
    assert (out / "notes.txt").read_text() == "keep me"


def test_writer_keeps_a_directory_that_became_foreign(bank, data, tmp_path, monkeypatch):
    """The check is repeated right before the rename: files put into OUT while the adapter was
    being computed are not deleted either."""
    from lorabatch.synthesis import writer
    from lorabatch.synthesis.writer import ForeignDirectoryError

    out = tmp_path / "a"
    assert predict(bank, data, out).exit_code == 0
    real = writer.finish_adapter_dir

    def finish_then_user_writes(tmp_dir, *args):
        real(tmp_dir, *args)
        (out / "late.txt").write_text("written meanwhile")

    monkeypatch.setattr(writer, "finish_adapter_dir", finish_then_user_writes)
    res = predict(bank, data, out)
    assert isinstance(res.exception, ForeignDirectoryError) and "late.txt" in str(res.exception)
    assert (out / "late.txt").read_text() == "written meanwhile"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.")]
