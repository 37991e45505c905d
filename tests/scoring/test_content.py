"""The content score: the reference's content words in the prediction, whatever the form."""

from lorabatch.scoring.aggregate import score_examples, summarize, task_scores, task_templates
from lorabatch.scoring.content import content_match, content_words, template_words
from lorabatch.scoring.rouge import rouge_l

REFS = ["the answer is brazil", "the answer is italy", "the answer is japan", "the answer is egypt"]


def test_template_words_are_those_of_most_references():
    assert template_words(REFS) == {"the", "answer", "is"}
    assert template_words(["positive", "negative", "positive"]) == set()  # labels are content
    assert template_words(["it is blue", "it is red", "it is blue"]) == {"it", "is"}
    assert template_words([]) == set()


def test_right_content_in_another_form_counts():
    template = template_words(REFS)
    pred = "i think brazil . recife is a city in brazil ."
    assert content_match(pred, "the answer is brazil", template) == 1.0
    # Rouge-L rates the verbose right answer below a wrong one in the right form
    assert rouge_l(pred, ["the answer is brazil"]) < rouge_l("the answer is italy", ["the answer is brazil"])


def test_wrong_content_in_the_right_form_does_not():
    template = template_words(REFS)
    assert content_match("the answer is italy", "the answer is brazil", template) == 0.0
    assert content_match("the answer is", "the answer is brazil", template) == 0.0


def test_every_content_word_is_needed_and_stems_match():
    template = template_words(["tram is a vehicle", "dog is a animal", "pear is a fruit"])
    assert content_words("tram is a vehicle", template) == ["tram", "vehicl"]  # Porter stems
    assert content_match("the tram is a kind of vehicle", "tram is a vehicle", template) == 1.0
    assert content_match("it is a Vehicles.", "tram is a vehicle", template) == 0.0  # no "tram"
    assert content_match("Trams: VEHICLES", "tram is a vehicle", template) == 1.0


def test_a_reference_made_only_of_template_words_keeps_them_all():
    assert content_words("the answer is", frozenset({"the", "answer", "is"})) == ["the", "answer", "is"]


def test_content_through_examples_tasks_and_summary():
    def row(setting, i, pred, ref):
        return {
            "task_id": "t1",
            "setting": setting,
            "example_id": str(i),
            "prediction": pred,
            "references": [ref],
            "error": None,
        }

    refs = ["answer : carlos", "answer : maria", "answer : john"]
    rows = [
        row("base", i, f"i think {r.split()[-1]} . later {r.split()[-1]} went home .", r) for i, r in enumerate(refs)
    ]
    rows += [row("oracle", i, r, r) for i, r in enumerate(refs)]
    rows += [row("uniform", i, "answer : nora", r) for i, r in enumerate(refs)]
    assert task_templates(rows) == {"t1": ["answer"]}
    examples = score_examples(rows)
    by = {s: [e for e in examples if e["setting"] == s] for s in ("base", "oracle", "uniform")}
    assert [e["content"] for e in by["base"]] == [1.0, 1.0, 1.0]
    assert [e["exact_match"] for e in by["base"]] == [0.0, 0.0, 0.0]
    assert [e["content"] for e in by["uniform"]] == [0.0, 0.0, 0.0]
    summary = {r["setting"]: r for r in summarize(task_scores(examples))}
    assert summary["base"]["content"] == 1.0 and summary["oracle"]["content"] == 1.0
    assert summary["uniform"]["content"] == 0.0
    assert summary["uniform"]["rouge_l"] > summary["base"]["rouge_l"]  # form beats content under Rouge-L


def test_scoring_a_slice_with_the_whole_task_templates_agrees():
    """The Ray path scores slices of rows: with the templates of the whole run, a slice's scores
    equal the whole table's."""
    rows = [
        {"task_id": "t", "setting": "s", "example_id": str(i), "prediction": p, "references": [r], "error": None}
        for i, (p, r) in enumerate(
            [("it is red", "it is red"), ("blue", "it is blue"), ("it is", "it is green"), ("x", "it is red")]
        )
    ]
    whole = score_examples(rows)
    templates = task_templates(rows)
    assert score_examples(rows[1:2], templates=templates) == whole[1:2]
    assert whole[1]["content"] == 1.0 and whole[2]["content"] == 0.0
    # alone, the slice's one reference makes every word a template word, so all are asked for
    assert score_examples(rows[1:2])[0]["content"] == 0.0
