"""NodeWatch: a node lost during a run is told once and recorded, also one that joined after the
run began (a replacement node); the sweep's closing fault line."""

from __future__ import annotations

import logging
from pathlib import Path

from lorabatch.raysession import NodeWatch
from lorabatch.sweep.run import faults_line


def _watch(monkeypatch, views: list[dict[str, str]]) -> NodeWatch:
    """A NodeWatch whose view of the alive nodes is each of `views` in turn (the last one after)."""
    seen = iter(views)
    last = {}

    def alive():
        nonlocal last
        last = next(seen, last)
        return dict(last)

    monkeypatch.setattr(NodeWatch, "_alive_nodes", staticmethod(alive))
    watch = NodeWatch()
    watch._alive = alive()
    return watch


def test_a_node_that_joined_and_was_lost_is_told_once(monkeypatch, caplog):
    a, b, c = "a" * 56, "b" * 56, "c" * 56
    watch = _watch(
        monkeypatch, [{a: "10.0.0.1", b: "10.0.0.2"}, {a: "10.0.0.1"}, {a: "10.0.0.1", c: "10.0.0.3"}, {a: "10.0.0.1"}]
    )
    with caplog.at_level(logging.WARNING, logger="lorabatch.raysession"):
        watch.stage = "features and distances"
        watch.check()  # b lost
        watch.check()  # c joined
        watch.stage = "generation"
        watch.check()  # c lost
        watch.check()
        watch.lost(c)  # Ray's own message about c arrives late: not told twice
    assert [(e["node_id"], e["address"], e["stage"]) for e in watch.events] == [
        (b, "10.0.0.2", "features and distances"),
        (c, "10.0.0.3", "generation"),
    ]
    told = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert told == [
        "node 10.0.0.2 (bbbbbbbb) was lost during features and distances: its work is retried on the remaining 1 node(s)",
        "node 10.0.0.3 (cccccccc) was lost during generation: its work is retried on the remaining 1 node(s)",
    ]


def test_the_fault_line_names_the_stages_and_retries():
    events = [{"node_id": "b" * 56, "stage": "fewshot"}, {"node_id": "c" * 56, "stage": "generation"}]
    line = faults_line(events, 3, Path("/runs/x/faults.json"))
    assert line == (
        "this sweep: 2 node(s) lost (during fewshot, generation), 3 task(s) retried by Ray; recorded in /runs/x/faults.json"
    )
    assert (
        faults_line([], 1, Path("f.json")) == "this sweep: 0 node(s) lost, 1 task(s) retried by Ray; recorded in f.json"
    )
