"""The demo bank's LoRA initialisation structure (shared / independent / mixed), its config and
the builder's keep-or-rebuild rule, on a tiny model: fast, no bank is built."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lorabatch.config import parse_config
from lorabatch.demo.families import FAMILIES
from lorabatch.demo.lora_init import lora_init_seeds, shared_init_seed, shared_init_tasks, task_seed
from lorabatch.errors import ConfigError, LorabatchError

NUMBERS = [100 * f + v for f in range(1, 7) for v in range(1, 5)]  # the default bank's 24 task numbers


@pytest.fixture(scope="module")
def tiny():
    """(peft model, tokenizer, settings) of a 1-layer Mistral with a rank-4 q/k/v LoRA."""
    from lorabatch.demo.build import SIZES
    from lorabatch.demo.model import new_model
    from lorabatch.demo.tokenizer import train_tokenizer
    from lorabatch.demo.train import TrainSettings, lora_model

    words = "red green blue colour of the sky grass sea answer question output definition".split()
    tokenizer = train_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))])
    dims = SIZES["tiny"].dims
    settings = TrainSettings(lora_steps=4, lora_batch=4, lora_rank=4, lora_alpha=8)
    return lora_model(new_model(tokenizer, dims, seed=0), settings, "tiny"), tokenizer, settings


def _lora(peft_model, which: str) -> dict:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if f"lora_{which}" in n}


def _init(peft_model, seed: int) -> tuple[dict, dict]:
    from lorabatch.demo.train import reset_lora

    reset_lora(peft_model, seed)
    return _lora(peft_model, "A"), _lora(peft_model, "B")


def _equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rows(answer: str, n: int = 8) -> list[dict]:
    return [
        {"input": "Definition: the colour of the sky. Input: question Output:", "output": [answer]} for _ in range(n)
    ]


def test_shared_init_gives_identical_a_and_zero_b(tiny):
    model, _, _ = tiny
    seeds = lora_init_seeds(NUMBERS, seed=0, lora_init="shared")
    assert set(seeds.values()) == {shared_init_seed(0)}
    a1, b1 = _init(model, seeds[NUMBERS[0]])
    a2, b2 = _init(model, seeds[NUMBERS[-1]])
    assert len(a1) == 3 and _equal(a1, a2)  # q, k, v of the one layer
    assert all(bool((b == 0).all()) for b in (*b1.values(), *b2.values()))
    assert all(float(a.abs().max()) > 0 for a in a1.values())


def test_independent_init_gives_different_a(tiny):
    import torch

    model, _, _ = tiny
    seeds = lora_init_seeds(NUMBERS, seed=0, lora_init="independent")
    assert seeds == {n: task_seed(0, n) for n in NUMBERS} and len(set(seeds.values())) == len(NUMBERS)
    a1, _ = _init(model, seeds[NUMBERS[0]])
    a2, _ = _init(model, seeds[NUMBERS[1]])
    assert all(not torch.equal(a1[k], a2[k]) for k in a1)


def test_mixed_picks_a_seeded_fraction():
    picked = shared_init_tasks(NUMBERS, seed=0, lora_init="mixed", shared_fraction=0.38)
    assert len(picked) == round(0.38 * 24) == 9
    assert picked == sorted(picked) and set(picked) <= set(NUMBERS)
    assert shared_init_tasks(reversed(NUMBERS), 0, "mixed", 0.38) == picked  # the set, not its order, counts
    assert shared_init_tasks(NUMBERS, 1, "mixed", 0.38) != picked
    assert len(shared_init_tasks(range(1, 10), 0, "mixed", 0.38)) == 3  # the small bank's 9 tasks
    assert shared_init_tasks(NUMBERS, 0, "mixed", 0.0) == []
    assert shared_init_tasks(NUMBERS, 0, "mixed", 1.0) == NUMBERS
    seeds = lora_init_seeds(NUMBERS, 0, "mixed", 0.38)
    assert {n for n, s in seeds.items() if s == shared_init_seed(0)} == set(picked)
    others = [s for n, s in seeds.items() if n not in picked]
    assert len(set(others)) == len(others) == 15 and shared_init_seed(0) not in others


def test_mixed_choice_is_fixed_across_processes():
    """Not from Python's per-process hash seed: a fresh interpreter with another PYTHONHASHSEED agrees."""
    import os
    import subprocess
    import sys

    code = "from lorabatch.demo.lora_init import shared_init_tasks as s; print(s(range(1, 25), 3, 'mixed', 0.38))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(shared_init_tasks(range(1, 25), 3, "mixed", 0.38))


def test_train_lora_starts_from_init_seed_and_shuffles_with_seed(tiny):
    from lorabatch.demo.train import train_lora

    model, tokenizer, settings = tiny
    a_shared, _ = _init(model, shared_init_seed(0))
    # No step: the adapter is exactly the init drawn from init_seed, not from the shuffle seed.
    train_lora(
        model,
        tokenizer,
        _rows("red"),
        dataclasses.replace(settings, lora_steps=0),
        shared_init_seed(0),
        task_seed(0, 101),
        "t",
        False,
    )
    assert _equal(_lora(model, "A"), a_shared)

    trained = {}
    for number, answer in ((101, "red"), (102, "green")):
        train_lora(model, tokenizer, _rows(answer), settings, shared_init_seed(0), task_seed(0, number), "t", False)
        trained[number] = _lora(model, "A")
    # Equal init, but training moved both A's, differently.
    assert not _equal(trained[101], a_shared) and not _equal(trained[102], a_shared)
    assert not _equal(trained[101], trained[102])
    # Same data and init, other shuffle seed: another example order, other weights.
    answers = "red green blue sky grass sea answer question".split()  # distinct rows: order matters
    rows = [{**r, "output": [answers[i]]} for i, r in enumerate(_rows("red"))]
    train_lora(model, tokenizer, rows, dataclasses.replace(settings, lora_batch=3), shared_init_seed(0), 1, "t", False)
    first = _lora(model, "A")
    train_lora(model, tokenizer, rows, dataclasses.replace(settings, lora_batch=3), shared_init_seed(0), 2, "t", False)
    assert not _equal(first, _lora(model, "A"))


def _config(**demo) -> dict:
    return {"run_dir": "r", "bank": {"source": "local", "root": "b", "base_model": "m", "demo": demo}}


def test_config_defaults_mirror_the_real_bank():
    demo = parse_config(_config()).bank.demo
    assert (demo.lora_init, demo.shared_fraction, demo.threads) == ("mixed", 0.38, None)


@pytest.mark.parametrize(
    "demo, field, shown",
    [
        ({"lora_init": "random"}, "bank.demo.lora_init", "'random'"),
        ({"shared_fraction": 1.5}, "bank.demo.shared_fraction", "1.5"),
        ({"shared_fraction": -0.1}, "bank.demo.shared_fraction", "-0.1"),
        ({"shared_fraction": "nan"}, "bank.demo.shared_fraction", "nan"),
    ],
)
def test_config_rejects_bad_lora_init_fields(demo, field, shown):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(**demo))
    assert len(info.value.problems) == 1, info.value.problems
    assert field in str(info.value) and shown in str(info.value)


def test_builder_rejects_bad_lora_init_before_any_work(tmp_path):
    from lorabatch.demo.build import build_demo_bank

    with pytest.raises(LorabatchError, match="unknown lora_init 'random'"):
        build_demo_bank(tmp_path / "bank", size="small", lora_init="random", progress=False)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(LorabatchError, match="shared_fraction must lie in"):
            build_demo_bank(tmp_path / "bank", size="small", shared_fraction=bad, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def fake_build(monkeypatch):
    """Replace the real build by a recorder of its arguments and of the torch thread count."""
    import torch

    import lorabatch.demo.build as build

    calls = []

    def record(
        out, size, cfg, seed, progress, lora_init, shared_fraction, parallel, base, families, built_recipe, inputs
    ):
        calls.append(
            {
                "base": base,
                "families": [f.name for f in families],
                "size": size,
                "seed": seed,
                "lora_init": lora_init,
                "shared_fraction": shared_fraction,
                "threads": torch.get_num_threads(),
                "parallel": parallel,
            }
        )
        return out

    monkeypatch.setattr(build, "_build", record)
    return calls


def _fake_bank(root, **built_with):
    """A complete-looking demo bank manifest recording the small recipe built with `built_with`."""
    from lorabatch.demo.build import MANIFEST
    from lorabatch.demo.recipe import recipe, recipe_sha256

    root.mkdir()
    built = recipe("small", **built_with)
    info = {"builder_version": built["builder_version"], "complete": True, "size": "small", "seed": built["seed"]}
    (root / MANIFEST).write_text(json.dumps({**info, "recipe": built, "recipe_sha256": recipe_sha256(built)}))
    return root


@pytest.mark.parametrize(
    "kwargs, kept",
    [
        ({}, True),
        ({"threads": 2}, True),  # the default count, named
        ({"threads": 1}, False),  # another count rounds otherwise: another bank
        ({"lora_init": "independent"}, False),
        ({"lora_init": "shared"}, False),
        ({"shared_fraction": 0.5}, False),
        ({"seed": 1}, False),
        ({"force": True}, False),
        ({"base": "plain"}, False),
        ({"families": FAMILIES[:2]}, False),
    ],
)
def test_existing_bank_kept_only_if_its_recipe_matches(tmp_path, fake_build, kwargs, kept):
    from lorabatch.demo.build import build_demo_bank

    root = _fake_bank(tmp_path / "bank")
    build_demo_bank(root, size="small", progress=False, **kwargs)
    assert (fake_build == []) is kept


def test_shared_fraction_only_compared_under_mixed(tmp_path, fake_build):
    from lorabatch.demo.build import build_demo_bank

    root = _fake_bank(tmp_path / "bank", lora_init="independent")
    build_demo_bank(root, size="small", lora_init="independent", shared_fraction=0.9, progress=False)
    assert fake_build == []
    root = _fake_bank(tmp_path / "old")
    info = json.loads((root / "demo_bank.json").read_text())
    del info["recipe_sha256"]  # a bank of an earlier builder, which recorded no recipe
    (root / "demo_bank.json").write_text(json.dumps(info))
    build_demo_bank(root, size="small", progress=False)
    assert fake_build[0]["lora_init"] == "mixed" and fake_build[0]["shared_fraction"] == 0.38


def test_default_threads_fixed_whatever_the_load(tmp_path, fake_build, monkeypatch):
    import os

    import torch

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    before = torch.get_num_threads()
    from lorabatch.demo.build import DEFAULT_THREADS, build_demo_bank

    build_demo_bank(tmp_path / "a", size="small", progress=False)
    build_demo_bank(tmp_path / "b", size="small", progress=False, threads=3)
    assert DEFAULT_THREADS == 2 and [c["threads"] for c in fake_build] == [2, 3]
    assert torch.get_num_threads() == before


def test_recipe_follows_settings_and_generated_data(monkeypatch):
    """The recipe changes with any training setting and with the data a family generates, so a
    bank built before such a change is never kept (nor the shipped one used) in its place."""
    import dataclasses

    import lorabatch.demo.recipe as recipe_module
    from lorabatch.demo.families import FAMILIES
    from lorabatch.demo.recipe import recipe, recipe_sha256

    before = recipe_sha256(recipe("small"))
    assert recipe_sha256(recipe("small")) == before  # deterministic
    small = recipe_module.SIZES["small"]
    sizes = {
        **recipe_module.SIZES,
        "small": dataclasses.replace(small, train=dataclasses.replace(small.train, lora_lr=6e-3)),
    }
    monkeypatch.setattr(recipe_module, "SIZES", sizes)
    assert recipe_sha256(recipe("small")) != before
    monkeypatch.undo()

    first = FAMILIES[0]
    templates = (first.templates[0].replace(" ", "  ", 1),) + first.templates[1:]
    changed = (dataclasses.replace(first, templates=templates),) + FAMILIES[1:]
    assert recipe("small", families=changed)["data_sha256"] != recipe("small")["data_sha256"]
