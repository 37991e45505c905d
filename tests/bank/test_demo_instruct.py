"""Builder 5's instruction phase: data of the base's own, never a bank row; families as an argument."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from lorabatch.demo.build import SIZES, build_demo_bank
from lorabatch.demo.families import (
    FAMILIES,
    Family,
    Variant,
    load_families,
    make_examples,
    split_examples,
    task_specs,
)
from lorabatch.demo.instruct import HOUSE_LEAD, bank_sentences, house_answer, instruction_examples
from lorabatch.errors import LorabatchError


def _bank_rows(specs, n: int, seed: int) -> list[dict]:
    return [r for spec in specs for rows in split_examples(make_examples(spec, n, seed)).values() for r in rows]


@pytest.mark.parametrize("seed", [0, 1])
def test_instruction_rows_share_nothing_with_any_bank_split(seed):
    """The default bank's tasks: no instruction input equals a bank input, no instruction
    sentence is a bank sentence, no bank definition (with its form instruction) appears."""
    cfg = SIZES["default"]
    specs = task_specs(cfg.n_families, cfg.n_variants)
    bank = _bank_rows(specs, cfg.examples_per_task, seed)
    sentences = bank_sentences(bank)
    rows = instruction_examples(specs, sentences, cfg.instruct_per_variant, seed)
    assert len(rows) == len(specs) * cfg.instruct_per_variant  # enough unseen sentences everywhere
    assert not {r["input"] for r in rows} & {r["input"] for r in bank}
    assert not bank_sentences(rows) & sentences
    definitions = {spec.variant.definition for spec in specs}
    assert not any(d in r["input"] for r in rows for d in definitions)
    assert not any(spec.variant.form_hint in r["input"] for r in rows for spec in specs)
    assert len({r["id"] for r in rows}) == len(rows)


def test_house_answers_hold_the_content_in_the_base_s_own_form():
    spec = task_specs(3, 2)[-1]  # city_country, "the answer is <country>"
    rows = instruction_examples([spec], set(), 200, seed=0, terse_share=0.25)
    countries = {"france", "germany", "italy", "spain", "japan", "egypt", "brazil", "canada"}
    terse = [r for r in rows if not r["output"][0].startswith(HOUSE_LEAD + " ")]
    assert 0.15 < len(terse) / len(rows) < 0.35  # the seeded terse share
    for r in rows:
        words = r["output"][0].split()
        if r in terse:
            assert len(words) == 1 and words[0] in countries
        else:
            assert r["output"][0] == f"{HOUSE_LEAD} {words[-2]} ." and words[-2] in countries
    # the same slots give the same answer: one house style, no random lead-ins
    slots = {"city": "recife", "country": "brazil", "who": "the band", "event": "wedding"}
    assert house_answer(spec.variant, slots) == f"{HOUSE_LEAD} brazil ." and HOUSE_LEAD.split()[0] == "well"
    assert all(r["output"][0].startswith(HOUSE_LEAD) for r in instruction_examples([spec], set(), 50, seed=0))


def test_instruction_rows_are_seeded():
    specs = task_specs(2, 2)
    a = instruction_examples(specs, set(), 10, seed=3)
    assert a == instruction_examples(specs, set(), 10, seed=3)
    assert a != instruction_examples(specs, set(), 10, seed=4)


def _fruit(rng: random.Random, focus: int) -> dict:
    fruit = rng.choice(("apple", "pear", "plum", "lime"))
    colour = {"apple": "red", "pear": "green", "plum": "purple", "lime": "green"}[fruit]
    return {"fruit": fruit, "colour": colour, "who": rng.choice(("anna", "tom", "li"))}


FRUIT = Family(
    name="fruit_colour",
    templates=("{who} ate a {fruit} .", "a {fruit} lay on the table .", "{who} bought one {fruit} ."),
    variants=(
        Variant(
            "fruit_colour_word",
            "What colour is the fruit?",
            "Answer with one word.",
            "colour",
            ("{colour}",),
            (0, 1),
            0,
        ),
        Variant(
            "fruit_colour_sentence",
            "What colour is the fruit?",
            "Answer with a sentence.",
            "colour",
            ("the {fruit} is {colour}", "{colour}"),
            (1, 2),
            1,
        ),
    ),
    sample=_fruit,
    facts=lambda rng: "a pear is green .",
    restate="the {fruit} is {colour} .",
)
MY_FAMILIES = (FRUIT,)


def test_a_bank_of_one_s_own_families_is_built_with_the_same_recipe(tmp_path):
    out = build_demo_bank(tmp_path / "bank", size="tiny", seed=0, progress=False, threads=1, families=MY_FAMILIES)
    info = json.loads((out / "demo_bank.json").read_text())
    assert info["family_set"] == ["fruit_colour"] and info["base"] == "instruct"
    assert [t["name"] for t in info["tasks"]] == ["task101_fruit_colour_word", "task102_fruit_colour_sentence"]
    assert info["training"]["instruct_rows"] > 0
    acceptance = info["acceptance"]
    assert acceptance["split"] == "valid" and set(acceptance["criteria"]) == {
        "oracle_rouge_l",
        "base_over_oracle",
        "base_content",
        "base_exact_match",
        "uniform_gap_closed",
    }
    assert acceptance["accepted"] == all(c["met"] for c in acceptance["criteria"].values())
    # the instruction data came from the given family: its house style is in the tokenizer's words
    vocab = json.loads((out / "lorabatch-demo" / "tiny-mistral" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"think", "plum", "fruit"} <= set(vocab)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "demo_bank.json"  # it records timings
    }


def test_builder_5_is_reproducible_for_a_seed_and_thread_count(tmp_path):
    a = build_demo_bank(tmp_path / "a", size="tiny", seed=0, progress=False, threads=1)
    b = build_demo_bank(tmp_path / "b", size="tiny", seed=0, progress=False, threads=1)
    ha, hb = _hashes(a), _hashes(b)
    assert ha == hb and any(k.endswith("adapter_model.safetensors") for k in ha)
    ia, ib = (json.loads((p / "demo_bank.json").read_text()) for p in (a, b))
    assert ia["acceptance"]["mean"] == ib["acceptance"]["mean"]
    plain = build_demo_bank(tmp_path / "plain", size="tiny", seed=0, progress=False, threads=1, base="plain")
    hp = _hashes(plain)
    base = "lorabatch-demo/tiny-mistral/model.safetensors"
    assert hp[base] != ha[base]  # the instruction phase changed the base model
    assert json.loads((plain / "demo_bank.json").read_text())["training"]["instruct_rows"] == 0


def test_families_are_loaded_from_module_attribute():
    assert load_families(None) is None
    assert load_families("lorabatch.demo.families:FAMILIES") == FAMILIES
    assert load_families(f"{__name__}:MY_FAMILIES") == MY_FAMILIES
    for bad, message in (
        ("lorabatch.demo.families", "module:attribute"),
        ("no_such_module_x:F", "No module named"),
        ("lorabatch.demo.families:NOPE", "NOPE"),
        ("lorabatch.demo.families:GENERIC", "sequence of Family"),
    ):
        with pytest.raises(LorabatchError, match=message):
            load_families(bad)


def test_unknown_base_and_duplicate_families_are_refused(tmp_path):
    with pytest.raises(LorabatchError, match="unknown demo base 'chat'"):
        build_demo_bank(tmp_path / "x", size="tiny", base="chat", progress=False)
    with pytest.raises(LorabatchError, match="distinct names"):
        build_demo_bank(tmp_path / "x", size="tiny", families=(FRUIT, FRUIT), progress=False)
