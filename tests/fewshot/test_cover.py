"""refine's `cover` sources: complementary adapters come before more of the same."""

from __future__ import annotations

from lorabatch.fewshot.methods import covering_order


def test_content_and_form_both_come_before_more_of_the_same_form():
    refs = ["the answer is red", "the answer is blue"]
    answers = {
        0: ["the answer is italy", "the answer is spain"],  # the form, not the content
        1: ["the answer is paris", "the answer is egypt"],  # the same form again
        2: ["red", "blue"],  # the content, not the form
        3: ["green", "blue"],  # part of the content
    }
    ranked = [0, 1, 3, 2]  # by few-shot Rouge-L: the form scores best
    assert covering_order(ranked, answers, refs, covered_by=[]) == [0, 2, 1, 3]
    # What the start already covers counts: with task 0's form covered, the content comes first.
    assert covering_order([1, 3, 2], answers, refs, covered_by=[0]) == [2, 1, 3]


def test_words_are_counted_per_example_and_stemmed():
    refs = ["dogs running", "cats"]
    answers = {
        0: ["cats", "dogs"],  # right words, wrong examples: covers nothing
        1: ["dog run", ""],  # stemmed: covers both words of the first example
    }
    assert covering_order([0, 1], answers, refs, covered_by=[]) == [1, 0]


def test_tasks_without_answers_keep_their_rank():
    refs = ["x y"]
    assert covering_order([5, 6, 7], {5: None, 6: ["y"], 7: None}, refs, covered_by=[]) == [6, 5, 7]
