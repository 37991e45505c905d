"""The quality goals on hand-made summaries: each goal flips when its condition does."""

import math

from lorabatch.scoring.goals import quality_goals


def _row(setting, rouge, gap, em=0.0, improved=1.0):
    return {"setting": setting, "rouge_l": rouge, "gap_closed": gap, "exact_match": em, "share_improved": improved}


def _summary(**changes):
    rows = {
        "base": _row("base", 0.2, 0.0),
        "JS-normalized": _row("JS-normalized", 0.6, 0.55),
        "KL-attentional": _row("KL-attentional", 0.3, 0.1),
        "uniform": _row("uniform", 0.45, 0.35),
        "nearest-JS": _row("nearest-JS", 0.5, 0.4),
        "icl": _row("icl", 0.4, 0.25),
        "refine": _row("refine", 0.85, 0.81, em=0.5, improved=0.95),
        "oracle": _row("oracle", 1.0, 1.0, em=0.9),
    }
    for name, values in changes.items():
        rows[name.replace("_", "-")] = {**rows[name.replace("_", "-")], **values}
    return list(rows.values())


def test_all_goals_met():
    g = quality_goals(_summary())
    assert g["best"] == "refine" and g["best_paper"] == "JS-normalized"
    assert all(v is True for v in g["goals"].values()), g


def test_each_goal_fails_on_its_own():
    cases = [
        ({"uniform": {"rouge_l": 0.65}}, "best paper setting beats uniform"),
        ({"JS_normalized": {"gap_closed": 0.49}}, "best paper setting closes >= 50% of the gap"),
        ({"refine": {"gap_closed": 0.7}}, "best closes >= 75% of the gap"),
        ({"refine": {"exact_match": 0.44}}, "best exact match >= 50% of the oracle's"),
        ({"refine": {"share_improved": 0.85}}, "best improves >= 90% of tasks"),
    ]
    for changes, goal in cases:
        goals = quality_goals(_summary(**changes))["goals"]
        assert goals[goal] is False, (goal, goals)
        assert sum(v is False for v in goals.values()) == 1, goals


def test_a_rival_above_the_best_is_impossible_but_icl_missing_is_not_checked():
    rows = [r for r in _summary() if r["setting"] != "icl"]
    goals = quality_goals(rows)["goals"]
    assert goals["best beats uniform, icl, every nearest and every paper setting"] is None
    # when the best is a paper setting, it must beat the other paper settings and the controls
    rows = _summary(refine={"rouge_l": math.nan})
    g = quality_goals(rows)
    assert g["best"] == "JS-normalized"
    assert g["goals"]["best beats uniform, icl, every nearest and every paper setting"] is True
