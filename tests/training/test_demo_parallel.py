"""The demo builder trains its task LoRAs on Ray Train, several at once: the bank is the same
whatever the parallelism, and equal to the in-process recipe (`demo.train.train_lora`)."""

from __future__ import annotations

import json

import pytest


def _adapters(root) -> dict[str, dict]:
    from safetensors.torch import load_file

    from lorabatch.demo.build import ORG

    return {
        p.name: load_file(p / "adapter_model.safetensors") for p in sorted((root / ORG).glob("tiny-mistral-r*-task*"))
    }


@pytest.mark.slow
def test_same_bank_whatever_the_parallelism(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorabatch.bank.datasets import read_split
    from lorabatch.demo.build import BASE_REPO, ORG, SIZES, build_demo_bank
    from lorabatch.demo.lora_init import task_seed
    from lorabatch.demo.train import lora_model, train_lora

    one = build_demo_bank(tmp_path / "one", size="tiny", seed=0, progress=False, threads=2, parallel=1)
    two = build_demo_bank(tmp_path / "two", size="tiny", seed=0, progress=False, threads=2, parallel=2)
    a, b = _adapters(one), _adapters(two)
    assert len(a) == 2 and a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    info = json.loads((two / "demo_bank.json").read_text())
    assert info["parallel"] == 2

    # The Ray Train path computes exactly what the in-process recipe (builder 3's) computes.
    task = info["tasks"][0]
    number = int(task["task_id"][4:])
    settings = SIZES["tiny"].train
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = lora_model(AutoModelForCausalLM.from_pretrained(one / BASE_REPO), settings, BASE_REPO)
        rows = read_split(one / ORG / task["name"], "train").to_pylist()
        losses = train_lora(
            model,
            AutoTokenizer.from_pretrained(one / BASE_REPO),
            rows,
            settings,
            task["lora_init_seed"],
            task_seed(0, number),
            "t",
            progress=False,
        )
    finally:
        torch.set_num_threads(before)
    assert task["lora_loss"][0] == round(losses[0], 4)
    reference = {n.replace(".default", ""): p.detach() for n, p in model.named_parameters() if "lora_" in n}
    trained = a[f"tiny-mistral-r{settings.lora_rank}-{task['task_id']}"]
    assert reference.keys() == trained.keys()
    assert all(torch.equal(trained[k], expected) for k, expected in reference.items())
