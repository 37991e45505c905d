"""select / refine on a tiny bank: the few-shot loss against a reference, choices that follow the
loss, no use of the test split, reproducibility, and the controls' adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lorabatch.layout import RunLayout

N_TASKS = 5


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _config(run: Path, bank, **fewshot):
    from lorabatch.config import parse_config

    return parse_config(
        {
            "run_dir": str(run),
            "bank": bank.bank_config(validate_weights=False),
            "distances": {"metrics": ["JS"]},
            "synthesis": {"models": ["attentional", "normalized"], "executor": "local"},
            "fewshot": {"examples": 6, "refine": {"top_k": 3, "budget": 12}, **fewshot},
        }
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run with manifest, seeded JS distances and every coefficient file (no adapters yet)."""
    from lorabatch.bank.manifest import build_manifest
    from lorabatch.synthesis.stage import compute_coefficients, compute_uniform_coefficients
    from tests.helpers.synthetic_bank import build_tiny_bank

    root = tmp_path_factory.mktemp("fewshot")
    bank = build_tiny_bank(root / "bank", n_tasks=N_TASKS, rank=8, rows=20)
    run = root / "run"
    config = _config(run, bank)
    manifest = build_manifest(config, progress=False)
    ids = manifest.column("task_id").to_pylist()
    d = np.random.default_rng(3).uniform(0.1, 2.0, size=(N_TASKS, N_TASKS))
    np.fill_diagonal(d, 0.0)
    _write_distances(run, "JS", ids, d)
    compute_coefficients(run, "JS", config.synthesis, progress=False)
    compute_uniform_coefficients(run)
    return run, bank, ids, d


def _write_distances(run: Path, metric: str, ids: list[str], d: np.ndarray) -> None:
    import pyarrow as pa

    from lorabatch.atomic import write_parquet

    rows = [{"target": t, "source": s, "d": float(d[i, j])} for i, t in enumerate(ids) for j, s in enumerate(ids)]
    write_parquet(RunLayout(run).distances(metric), pa.Table.from_pylist(rows))


def _copy(pristine, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(pristine[0], run)
    return run


def _run(run: Path, bank, **fewshot):
    from lorabatch.fewshot.stage import run_fewshot

    config = _config(run, bank, **fewshot)
    return run_fewshot(run, config.fewshot, config.synthesis, ["JS"], seed=0, progress=False)


def _tensors(adapter: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _reference_loss(base: str, adapter: Path | None, rows: list[dict]) -> float:
    """Mean per-example loss of output[0] + EOS given input, with stock PeftModel.from_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    losses = []
    with torch.no_grad():
        for r in rows:
            prompt = tok(r["input"])["input_ids"]
            answer = tok(r["output"][0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([prompt + answer])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return float(np.mean(losses))


def _reference_rouge(base: str, adapter: Path, rows: list[dict], max_new_tokens: int) -> float:
    """Mean Rouge-L of stock PEFT greedy generations, one unpadded prompt at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorabatch.scoring.rouge import rouge_l

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter)
    ).eval()
    scores = []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([tok(r["input"])["input_ids"]])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )[0, ids.shape[1] :].tolist()
            out = out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out
            scores.append(rouge_l(tok.decode(out, skip_special_tokens=True), [r["output"][0]]))
    return float(np.mean(scores))


def test_loss_of_an_adapter_in_a_slot_equals_peft_from_pretrained(pristine):
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.fewshot.loss import FewShotLoss
    from lorabatch.fewshot.stage import few_shot_examples
    from lorabatch.synthesis.tensors import layout_from_manifest

    run, _, ids, _ = pristine
    manifest = load_manifest(run).to_pylist()
    layout = layout_from_manifest(run)
    base = manifest[0]["base_model_path"]
    rows = few_shot_examples(manifest[0]["dataset_path"], "train", 5, 0, ids[0])
    evaluator = FewShotLoss(base, layout.adapter_config, "cpu", "float32", batch_size=2)
    evaluator.set_examples(rows)
    for k in (1, 2):
        adapter = Path(manifest[k]["adapter_path"])
        ours = evaluator.loss({name: np.asarray(v) for name, v in _tensors(adapter).items()})
        assert ours == pytest.approx(_reference_loss(base, adapter, rows), rel=1e-5)
    assert evaluator.loss(None) == pytest.approx(_reference_loss(base, None, rows), rel=1e-5)
    assert evaluator.forward_passes == 3 * 3  # 5 examples in batches of 2, three adapters
    # Few-shot Rouge-L: batched, left-padded greedy generations scored like the evaluation.
    adapter = Path(manifest[1]["adapter_path"])
    ours = evaluator.rouge({name: np.asarray(v) for name, v in _tensors(adapter).items()}, max_new_tokens=4)
    assert ours == pytest.approx(_reference_rouge(base, adapter, rows, 4), abs=1e-9)


def test_few_shot_examples_are_seeded_and_never_from_test(pristine):
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.fewshot.stage import FewShotError, few_shot_examples

    run, _, ids, _ = pristine
    path = load_manifest(run).to_pylist()[0]["dataset_path"]
    a = few_shot_examples(path, "train", 4, 0, ids[0])
    assert a == few_shot_examples(path, "train", 4, 0, ids[0])
    assert [r["id"] for r in a] != [r["id"] for r in few_shot_examples(path, "train", 4, 1, ids[0])]
    with pytest.raises(FewShotError):
        few_shot_examples(path, "test", 4, 0, ids[0])


def test_select_and_refine_never_read_the_test_split(pristine, tmp_path, local_ray):
    run_a = _copy(pristine, tmp_path / "a")
    run_b = _copy(pristine, tmp_path / "b")
    bank = pristine[1]
    results_a = _run(run_a, bank)
    # Garbage in place of every test split: any read of it would fail the task.
    garbled = tmp_path / "garbled-bank"
    shutil.copytree(bank.root, garbled)
    for f in garbled.rglob("test-*.parquet"):
        f.write_bytes(b"not parquet at all")
    import pyarrow.parquet as pq

    from lorabatch.atomic import write_parquet

    manifest = pq.read_table(RunLayout(run_b).manifest)
    paths = [p.replace(str(bank.root), str(garbled)) for p in manifest.column("dataset_path").to_pylist()]
    manifest = manifest.set_column(
        manifest.schema.get_field_index("dataset_path"), "dataset_path", __import__("pyarrow").array(paths)
    )
    write_parquet(RunLayout(run_b).manifest, manifest)
    results_b = _run(run_b, bank)
    for method in ("select", "refine"):
        assert not any(r["error"] for r in results_b[method]), results_b[method]
        for a, b in zip(results_a[method], results_b[method]):
            assert (a["task_id"], a["choice"], a["loss"], a["start_loss"]) == (
                b["task_id"],
                b["choice"],
                b["loss"],
                b["start_loss"],
            )
        for task in pristine[2]:
            ta, tb = _tensors(RunLayout(run_a).adapter(method, task)), _tensors(RunLayout(run_b).adapter(method, task))
            assert all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_select_picks_the_lowest_loss_candidate_and_refine_never_worsens_its_start(pristine, tmp_path, local_ray):
    import json

    from lorabatch.bank.manifest import load_manifest
    from lorabatch.fewshot.stage import few_shot_examples

    run = _copy(pristine, tmp_path)
    results = _run(run, pristine[1])
    manifest = {r["task_id"]: r for r in load_manifest(run).to_pylist()}
    assert [r["error"] for m in ("select", "refine") for r in results[m]] == [None] * (2 * N_TASKS)
    for r in results["select"]:  # default criterion: the best few-shot Rouge-L, then the lowest loss
        details = json.loads(r["details"])
        losses, rouges = details["candidate_losses"], details["candidate_rouge_l"]
        assert len(losses) >= 5 and losses.keys() == rouges.keys()  # 2 paper settings, controls, grid, pool
        best = max(rouges.values())
        assert rouges[r["choice"]] == best
        assert losses[r["choice"]] == r["loss"] == min(v for n, v in losses.items() if rouges[n] == best)
    by_loss = _run(_copy(pristine, tmp_path / "loss"), pristine[1], methods=["select"], criterion="loss")
    for r in by_loss["select"]:
        losses = json.loads(r["details"])["candidate_losses"]
        assert r["loss"] == pytest.approx(min(losses.values())) and losses[r["choice"]] == r["loss"]
    selected = {r["task_id"]: r for r in results["select"]}
    for r in results["refine"]:  # default: refine starts from select's choice and searches on few-shot Rouge-L
        details = json.loads(r["details"])
        chosen = selected[r["task_id"]]
        assert r["choice"] == f"select:{chosen['choice']}"
        assert details["final_rouge_l"] >= details["start_rouge_l"]
        # select's candidates are counted in refine's cost, and the pool is not screened again
        assert chosen["evaluations"] < r["evaluations"] <= chosen["evaluations"] + 12
        pool = details["pool"]
        assert len(pool) == N_TASKS - 1 and r["task_id"] not in pool
        select_scores = json.loads(chosen["details"])
        for (
            task,
            score,
        ) in pool.items():  # read from select's record (the nearest task's adapter is named nearest-JS there)
            name = f"bank:{task}" if f"bank:{task}" in select_scores["candidate_losses"] else "nearest-JS"
            assert score == {
                "loss": select_scores["candidate_losses"][name],
                "rouge_l": select_scores["candidate_rouge_l"][name],
            }
    by_loss = _run(
        _copy(pristine, tmp_path / "refine-loss"),
        pristine[1],
        methods=["refine"],
        criterion="loss",
        refine={"top_k": 3, "budget": 12, "start": "JS-normalized"},
    )
    run = tmp_path / "refine-loss" / "run"
    for r in by_loss["refine"]:  # LoraHub's objective: the loss never ends above its start's
        assert r["loss"] <= r["start_loss"]
        assert r["evaluations"] <= 12 + (N_TASKS - 1)  # the budget, plus screening the pool (every other task here)
        pool = json.loads(r["details"])["pool"]
        assert len(pool) == N_TASKS - 1 and r["task_id"] not in pool
        sources = json.loads(r["details"])["sources"]
        best_first = sorted(pool, key=lambda t: (pool[t]["loss"], t))
        assert sources == best_first[:3]  # the 3 own adapters with the lowest few-shot loss
        assert r["choice"] == "JS-normalized"
    # The written refine adapter is the exact mixture the search evaluated: its loss, read back
    # from disk through stock PEFT, equals the recorded one.
    r = by_loss["refine"][0]
    task = manifest[r["task_id"]]
    rows = few_shot_examples(task["dataset_path"], "train", 6, 0, r["task_id"])
    ref = _reference_loss(task["base_model_path"], RunLayout(run).adapter("refine", r["task_id"]), rows)
    assert ref == pytest.approx(r["loss"], rel=1e-4)


def test_refine_is_reproducible_with_a_seed(pristine, tmp_path, local_ray):
    a = _run(_copy(pristine, tmp_path / "a"), pristine[1], methods=["refine"])["refine"]
    b = _run(_copy(pristine, tmp_path / "b"), pristine[1], methods=["refine"])["refine"]
    c = _run(_copy(pristine, tmp_path / "c"), pristine[1], methods=["refine"], seed=7)["refine"]
    assert [(r["loss"], r["details"]) for r in a] == [(r["loss"], r["details"]) for r in b]
    assert [r["details"] for r in a] != [r["details"] for r in c]


def test_refine_start_must_be_a_paper_setting_of_the_sweep(pristine, tmp_path):
    from lorabatch.errors import ConfigError

    with pytest.raises(ConfigError, match="fewshot.refine.start"):
        _config(tmp_path / "run", pristine[1], refine={"start": "KL-normalized"})


def test_uniform_adapter_is_the_mean_and_nearest_is_the_nearest_tasks_adapter(pristine, tmp_path):
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.synthesis.stage import synthesize_setting

    run = _copy(pristine, tmp_path)
    config = _config(run, pristine[1])
    _, _, ids, d = pristine
    bank = {r["task_id"]: Path(r["adapter_path"]) for r in load_manifest(run).to_pylist()}
    synthesize_setting(run, "uniform", config.synthesis, progress=False)
    synthesize_setting(run, "nearest-JS", config.synthesis, progress=False)
    for i, task in enumerate(ids):
        others = [_tensors(bank[t]) for t in ids if t != task]
        uniform = _tensors(RunLayout(run).adapter("uniform", task))
        for name, value in uniform.items():
            expected = np.mean([o[name].astype(np.float64) for o in others], axis=0)
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)
        row = d[i].copy()
        row[i] = np.inf
        nearest = ids[int(np.argmin(row))]
        got, want = _tensors(RunLayout(run).adapter("nearest-JS", task)), _tensors(bank[nearest])
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in got)


def test_refine_cover_orders_the_pool_by_what_its_answers_add(pristine, tmp_path, local_ray):
    """sources 'cover': after select's own task, the pool in the greedy covering order of the
    reference words, computed here again from select's recorded answers."""
    import json

    from lorabatch.bank.manifest import load_manifest
    from lorabatch.fewshot.methods import covering_order
    from lorabatch.fewshot.stage import few_shot_examples

    run = _copy(pristine, tmp_path)
    results = _run(run, pristine[1], refine={"top_k": 3, "budget": 12, "sources": "cover"})
    manifest = {r["task_id"]: r for r in load_manifest(run).to_pylist()}
    selected = {r["task_id"]: r for r in results["select"]}
    checked = 0
    for r in results["refine"]:
        assert r["error"] is None
        details, chosen = json.loads(r["details"]), selected[r["task_id"]]
        recorded = json.loads(chosen["details"])
        names = {
            t: f"bank:{t}" if f"bank:{t}" in recorded["candidate_answers"] else "nearest-JS" for t in details["pool"]
        }
        own = [t for t, name in names.items() if name == chosen["choice"]]
        if len(own) != 1:  # select chose a mixture: its own tasks come first, in its weights' order
            continue
        pool = details["pool"]
        ranked = sorted((t for t in pool if t not in own), key=lambda t: (-pool[t]["rouge_l"], pool[t]["loss"], t))
        answers = {t: recorded["candidate_answers"][names[t]] for t in pool}
        refs = [
            x["output"][0]
            for x in few_shot_examples(manifest[r["task_id"]]["dataset_path"], "train", 6, 0, r["task_id"])
        ]
        assert details["sources"] == (own + covering_order(ranked, answers, refs, own))[:3]
        checked += 1
    assert checked >= 2


def test_candidates_scored_together_equal_one_at_a_time(pristine):
    """`scores` on several adapters per batch (mixed-adapter rows) gives each adapter's loss to float
    rounding and its greedy answers token for token, as scoring it alone does."""
    from lorabatch.bank.manifest import load_manifest
    from lorabatch.fewshot.loss import FewShotLoss
    from lorabatch.fewshot.stage import few_shot_examples
    from lorabatch.synthesis.tensors import layout_from_manifest

    run, _, ids, _ = pristine
    manifest = load_manifest(run).to_pylist()
    layout = layout_from_manifest(run)
    base = manifest[0]["base_model_path"]
    rows = few_shot_examples(manifest[0]["dataset_path"], "train", 6, 0, ids[0])
    adapters = [{n: np.asarray(v) for n, v in _tensors(Path(m["adapter_path"])).items()} for m in manifest[1:]]
    adapters.insert(2, None)  # the base model among them
    together = FewShotLoss(base, layout.adapter_config, "cpu", "float32", batch_size=4, candidates_per_pass=3)
    together.set_examples(rows)
    found = together.scores(adapters, "rouge", max_new_tokens=6)
    # 5 adapters in passes of 3 and 2: 2 loss batches each (6 examples by 4), then the decoding steps.
    assert together.forward_passes < 5 * 2 + 5 * 6
    alone = FewShotLoss(base, layout.adapter_config, "cpu", "float32", batch_size=4)
    alone.set_examples(rows)
    for adapter, score in zip(adapters, found):
        assert score["loss"] == pytest.approx(alone.loss(adapter), rel=1e-6, abs=1e-7)
        assert score["rouge_l"] == alone.rouge(adapter, max_new_tokens=6)
        assert score["answers"] == alone.last_answers
    assert len({tuple(s["answers"]) for s in found}) > 1  # the adapters do change the answers


def test_select_and_refine_choose_the_same_with_candidates_scored_together(pristine, tmp_path, local_ray):
    import json

    one = _run(_copy(pristine, tmp_path / "one"), pristine[1], candidates_per_pass=1)
    many = _run(_copy(pristine, tmp_path / "many"), pristine[1], candidates_per_pass=8)
    for method in ("select", "refine"):
        assert [r["error"] for r in many[method]] == [None] * N_TASKS
        for a, b in zip(one[method], many[method]):
            da, db = json.loads(a["details"]), json.loads(b["details"])
            assert (a["task_id"], a["choice"], a["rouge_l"], a["evaluations"]) == (
                b["task_id"],
                b["choice"],
                b["rouge_l"],
                b["evaluations"],
            )
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
            if method == "select":
                assert da["candidate_rouge_l"] == db["candidate_rouge_l"]
                assert da["candidate_answers"] == db["candidate_answers"]
            else:
                assert (da["sources"], da.get("kept")) == (db["sources"], db.get("kept"))
                assert da["weights"] == pytest.approx(db["weights"], abs=1e-12)
                assert b["forward_passes"] < a["forward_passes"]
