"""`lorabatch predict` reports a bad input file or metric as such, before any features are computed."""

import pytest
from typer.testing import CliRunner

from lorabatch.cli import app
from lorabatch.errors import DatasetError
from lorabatch.synthesis.stage import SynthesisError


def predict(bank, data, out, *flags):
    return CliRunner().invoke(
        app, ["predict", "--bank", str(bank.run_dir), "--data", str(data), "--out", str(out), *flags]
    )


@pytest.mark.parametrize(
    "content, where",
    [
        ("input,output\nred cat,blue\ncafé,bleu\n".encode("latin-1"), "byte 0xe9 on line 3"),
        ("input,output\nred cat,blue\n".encode("utf-16"), "byte 0xff on line 1"),  # with its BOM
    ],
)
def test_csv_that_is_not_utf8_is_an_encoding_error(predict_bank, tmp_path, content, where):
    (tmp_path / "my.csv").write_bytes(content)
    res = predict(predict_bank, tmp_path / "my.csv", tmp_path / "out")
    assert isinstance(res.exception, DatasetError)
    assert f"not UTF-8 text ({where})" in str(res.exception) and "column" not in str(res.exception)
    assert predict_bank.calls == [] and not (tmp_path / "out").exists()


def test_utf8_csv_with_bom_is_read(predict_bank, tmp_path):
    (tmp_path / "my.csv").write_bytes("input,output\ncafé au lait,bleu\nred cat,blue\n".encode("utf-8-sig"))
    res = predict(predict_bank, tmp_path / "my.csv", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert predict_bank.calls == [("JS", 2)]


def test_unknown_metric_is_reported_before_any_features(predict_bank, tmp_path):
    (tmp_path / "my.jsonl").write_text('{"input": "red cat", "output": "blue"}\n')
    res = predict(predict_bank, tmp_path / "my.jsonl", tmp_path / "out", "--metric", "Hellinger")
    assert isinstance(res.exception, SynthesisError)
    assert str(res.exception) == (
        f"--metric: unknown metric 'Hellinger'; the bank at {predict_bank.run_dir} has features for KL, JS, WD, MMD "
        "(distance matrices computed: JS)"
    )
    # An embedding metric on a bank whose features hold no embeddings: also before any work.
    res = predict(predict_bank, tmp_path / "my.jsonl", tmp_path / "out", "--metric", "OT_SLICED")
    assert "needing embedding features the bank lacks: 'OT_SLICED'" in str(res.exception)
    assert predict_bank.calls == [] and not (tmp_path / "out").exists()


def test_bank_without_features_names_the_command(fresh_run, tmp_path):
    (tmp_path / "my.jsonl").write_text('{"input": "red cat", "output": "blue"}\n')
    res = predict(fresh_run, tmp_path / "my.jsonl", tmp_path / "out")
    assert isinstance(res.exception, SynthesisError) and "`lorabatch distances CONFIG`" in str(res.exception)
