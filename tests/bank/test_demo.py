"""The embedded demo bank: layout, loadability with stock libraries, meaningfulness, determinism.

The 'small' bank is built once per session (`small_demo_bank` in tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lorabatch.demo.build import BASE_REPO, ORG, build_demo_bank, write_datasets
from lorabatch.demo.families import task_specs
from lorabatch.errors import LorabatchError

pytestmark = pytest.mark.slow

MARGIN = 0.3  # own adapter must beat the base model by at least this much Rouge-L, per task


@pytest.fixture(scope="module")
def info(small_demo_bank) -> dict:
    return json.loads((small_demo_bank / "demo_bank.json").read_text())


def _adapter_dir(root: Path, task_id: str) -> Path:
    return root / ORG / f"tiny-mistral-r8-{task_id}"


def _dataset_dir(root: Path, name: str) -> Path:
    return root / ORG / name


def test_manifest_describes_the_build(info):
    assert info["complete"] is True and info["size"] == "small" and info["seed"] == 0
    assert len(info["families"]) == 3 and len(info["tasks"]) == 9
    assert info["model"]["architecture"] == "MistralForCausalLM" and info["model"]["head_dim"] in (32, 64)
    assert info["training"]["lora_rank"] == 8 and info["training"]["lora_alpha"] == 16
    assert info["timings_s"]["total"] > 0
    assert info["threads"] == 2  # the fixture's fixed thread count, whatever the machine's load


def test_manifest_records_the_lora_init(info):
    from lorabatch.demo.lora_init import shared_init_seed, shared_init_tasks, task_seed

    assert info["builder_version"] == "5" and info["base"] == "instruct"
    assert (info["lora_init"], info["shared_fraction"]) == ("mixed", 0.38)  # the default
    numbers = [int(t["task_id"][4:]) for t in info["tasks"]]
    sharing = shared_init_tasks(numbers, 0, "mixed", 0.38)
    assert len(sharing) == 3 and info["shared_init_tasks"] == [f"task{n}" for n in sharing]
    for task in info["tasks"]:
        number = int(task["task_id"][4:])
        assert task["shared_init"] is (number in sharing)
        assert task["lora_init_seed"] == (shared_init_seed(0) if number in sharing else task_seed(0, number))
        assert 0 < task["train_seconds"] < info["timings_s"]["lora"]
    # Tasks train `parallel` at a time: their summed seconds may exceed the phase's wall time.
    assert sum(t["train_seconds"] for t in info["tasks"]) <= info["parallel"] * info["timings_s"]["lora"]


def _trained_a(root: Path, task_id: str) -> dict:
    from safetensors.torch import load_file

    return {
        k: v for k, v in load_file(_adapter_dir(root, task_id) / "adapter_model.safetensors").items() if ".lora_A." in k
    }


def _init_a(root: Path, info: dict, init_seed: int) -> dict:
    """lora_A of the builder's fresh init from `init_seed`, keyed like the saved adapter files."""
    from transformers import AutoModelForCausalLM

    from lorabatch.demo.build import SIZES
    from lorabatch.demo.train import lora_model, reset_lora

    model = lora_model(AutoModelForCausalLM.from_pretrained(root / BASE_REPO), SIZES[info["size"]].train, BASE_REPO)
    reset_lora(model, init_seed)
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}


def test_shared_init_tasks_were_trained_from_one_lora_a(small_demo_bank, info):
    """The sharers' saved A's differ (training moved them) yet all lie nearer the one shared init
    than any independently initialised task's A does."""
    import torch

    sharers = [t for t in info["tasks"] if t["shared_init"]]
    others = [t for t in info["tasks"] if not t["shared_init"]]
    assert len({t["lora_init_seed"] for t in sharers}) == 1
    init = _init_a(small_demo_bank, info, sharers[0]["lora_init_seed"])
    trained = {t["task_id"]: _trained_a(small_demo_bank, t["task_id"]) for t in info["tasks"]}
    assert init.keys() == trained[sharers[0]["task_id"]].keys() and len(init) == 6  # q/k/v x 2 layers

    def distance(a: dict, b: dict) -> float:
        return float(sum((a[k] - b[k]).pow(2).sum() for k in a).sqrt() / sum(b[k].pow(2).sum() for k in b).sqrt())

    for i, a in enumerate(sharers):
        for b in sharers[i + 1 :]:
            assert not all(torch.equal(trained[a["task_id"]][k], trained[b["task_id"]][k]) for k in init)
    near = max(distance(trained[t["task_id"]], init) for t in sharers)
    far = min(distance(trained[t["task_id"]], init) for t in others)
    assert near < far, (near, far)


def test_layout(small_demo_bank, info):
    base = small_demo_bank / BASE_REPO
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (base / name).is_file(), name
    assert not list(base.glob("*.bin")) and not list(base.glob("*.pt"))
    for task in info["tasks"]:
        assert task["name"].startswith(task["task_id"] + "_")
        adapter = _adapter_dir(small_demo_bank, task["task_id"])
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
        for split in ("train", "valid", "test"):
            assert (_dataset_dir(small_demo_bank, task["name"]) / "data" / f"{split}-00000-of-00001.parquet").is_file()
    # the temporary build directory was renamed away
    assert [p.name for p in small_demo_bank.parent.iterdir()] == [small_demo_bank.name]


def test_tokenizer_loads_and_adds_bos(small_demo_bank, info):
    from transformers import AutoTokenizer

    from lorabatch.bank.datasets import read_split

    tok = AutoTokenizer.from_pretrained(small_demo_bank / BASE_REPO)
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    row = read_split(_dataset_dir(small_demo_bank, info["tasks"][0]["name"]), "train").slice(0, 1).to_pylist()[0]
    ids = tok(row["input"] + row["output"][0])["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.unk_token_id not in ids
    # concatenating input and answer without a space tokenizes like the two parts apart
    assert ids == tok(row["input"])["input_ids"] + tok(row["output"][0], add_special_tokens=False)["input_ids"]


def test_base_model_loads(small_demo_bank, info):
    from transformers import AutoModelForCausalLM, MistralForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_demo_bank / BASE_REPO)
    assert isinstance(model, MistralForCausalLM)
    assert (
        model.config.num_attention_heads * model.config.head_dim
        == info["model"]["num_attention_heads"] * info["model"]["head_dim"]
    )


def test_adapters_load_with_peft_and_change_logits(small_demo_bank, info):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = small_demo_bank / BASE_REPO
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits
    for task in info["tasks"]:
        adapter = _adapter_dir(small_demo_bank, task["task_id"])
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "lorabatch-demo/tiny-mistral"
        assert (config["r"], config["lora_alpha"], config["bias"]) == (8, 16, "none")
        assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
        with torch.no_grad():
            logits = model(ids).logits
        assert torch.isfinite(logits).all()
        assert (logits - base_logits).abs().max() > 1e-2, task["task_id"]


def test_datasets_schema_and_splits(small_demo_bank, info):
    import pyarrow as pa

    from lorabatch.bank.datasets import read_split

    for task in info["tasks"]:
        sizes = {}
        for split in ("train", "valid", "test"):
            table = read_split(_dataset_dir(small_demo_bank, task["name"]), split)
            assert table.schema.field("input").type == pa.string()
            assert table.schema.field("output").type == pa.list_(pa.string())
            assert table.schema.field("id").type == pa.string()
            assert table.num_rows > 0
            rows = table.to_pylist()
            assert all(r["output"] and all(o.strip() for o in r["output"]) for r in rows)
            assert all(r["input"].startswith("Definition: ") and r["input"].endswith("Output:") for r in rows)
            sizes[split] = table.num_rows
        assert sizes["train"] == pytest.approx(0.8 * sum(sizes.values()), abs=2)
        assert sizes == {k: task[f"n_{k}"] for k in sizes}


def test_own_adapter_beats_base_for_every_task(info):
    """The instruction-following base already answers some tasks' content in a bare word, so a
    task's own adapter may add little there; it is never worse, and adds MARGIN per family."""
    for task in info["tasks"]:
        r = task["rouge_l"]
        assert r["own"] >= max(r["base"], 0.9), (task["name"], r)
    for name, r in info["rouge_l"]["per_family"].items():
        assert r["own"] - r["base"] >= MARGIN, (name, r)


def test_own_vs_base_recomputed_independently(small_demo_bank, info):
    """Stock transformers + PEFT generation and rouge-score, without the builder's helpers."""
    import torch
    from peft import PeftModel
    from rouge_score import rouge_scorer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorabatch.bank.datasets import read_split

    task = info["tasks"][1]
    n = info["evaluation"]["examples_per_task"]
    rows = read_split(_dataset_dir(small_demo_bank, task["name"]), "valid").to_pylist()[:n]
    base_dir = small_demo_bank / BASE_REPO
    tok = AutoTokenizer.from_pretrained(base_dir)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def score(model) -> float:
        total = 0.0
        for row in rows:  # one prompt at a time: no padding involved
            enc = tok(row["input"], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=info["evaluation"]["max_new_tokens"],
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            total += scorer.score(row["output"][0], text)["rougeL"].fmeasure
        return total / len(rows)

    base = score(AutoModelForCausalLM.from_pretrained(base_dir))
    own = score(
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), _adapter_dir(small_demo_bank, task["task_id"])
        )
    )
    assert own - base >= MARGIN
    assert own == pytest.approx(task["rouge_l"]["own"], abs=0.1)
    assert base == pytest.approx(task["rouge_l"]["base"], abs=0.1)


def test_existing_bank_is_kept(small_demo_bank):
    manifest = small_demo_bank / "demo_bank.json"
    before = manifest.stat().st_mtime_ns
    assert build_demo_bank(small_demo_bank, size="small", seed=0, progress=False) == small_demo_bank
    assert manifest.stat().st_mtime_ns == before


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(LorabatchError, match="not a demo bank"):
        build_demo_bank(tmp_path, size="small", progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(LorabatchError, match="unknown demo bank size 'huge'"):
        build_demo_bank(tmp_path / "bank", size="huge", progress=False)


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import lorabatch.demo.train as train

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "pretrain", fail)
    with pytest.raises(KeyboardInterrupt):
        build_demo_bank(tmp_path / "bank", size="small", progress=False)
    assert list(tmp_path.iterdir()) == []


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_datasets_are_deterministic(tmp_path):
    specs = task_specs(2, 2)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        write_datasets(tmp_path / name, specs, 30, seed)
    a, b, c = (_tree_hashes(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 3 * len(specs)
    assert a != c and a.keys() == c.keys()


def test_answer_forms_recur_across_families():
    """Variant i < 3 of every family answers in the shared form i and says so in its definition;
    the fourth answers in a sentence of its own family (answer forms recur across NI categories)."""
    from lorabatch.demo.families import ANSWER_FORMS, FAMILIES, FORM_HINTS, make_examples

    specs = task_specs(len(FAMILIES), 4)
    own_forms = set()
    for spec in specs:
        position = spec.number % 100 - 1
        rows = make_examples(spec, 20, seed=3)
        assert {r["input"].split("\n")[0] for r in rows} == {f"Definition: {spec.variant.definition}"}
        first = [r["output"][0] for r in rows]
        if position < 3:
            assert spec.variant.definition.endswith(FORM_HINTS[position])
            lead = ANSWER_FORMS[position][0].split("{ans}")[0]
            assert all(a.startswith(lead) and len(a.split()) == len(lead.split()) + 1 for a in first), first
        else:
            own_forms.add(spec.variant.formats[0])
    assert len(own_forms) == len(FAMILIES)  # each family's sentence form is its own


def test_rouge_l_helper():
    from lorabatch.scoring.rouge import rouge_l

    assert rouge_l("the colour is red", ["the colour is red"]) == 1.0
    assert rouge_l("Running dogs", ["run dog"]) == 1.0  # stemmed, case-insensitive
    assert rouge_l("red", ["blue", "red"]) == 0.0
    assert rouge_l("red", ["blue", "red"], use_max=True) == 1.0
