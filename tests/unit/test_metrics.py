from __future__ import annotations

import pytest

from lift_ray.metrics import (
    answer_is_grounded,
    best_score,
    exact_match,
    grounded_sentence_fraction,
    normalize_answer,
    token_f1,
)


def test_normalisation_follows_squad():
    assert normalize_answer("The  Marrow-Bell!") == "marrowbell"
    assert normalize_answer("An apple, a day.") == "apple day"


def test_exact_match_and_f1():
    assert exact_match("the Kessel River", "Kessel river.") == 1.0
    assert exact_match("Kessel", "Kessel River") == 0.0
    assert token_f1("Kessel", "Kessel River") == pytest.approx(2 / 3)
    assert token_f1("green", "Kessel River") == 0.0
    assert token_f1("", "") == 1.0


def test_best_score_takes_the_closest_gold():
    assert best_score("412 metres", ["412 m", "412 metres"]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        best_score("x", [])


def test_groundedness():
    sentence = "In 1998 Marta Ibsen founded Lumo Foods in Tromsdal."
    assert answer_is_grounded("Lumo Foods", sentence)
    assert answer_is_grounded("in 1998", sentence)
    assert not answer_is_grounded("it", sentence)  # no content words
    assert not answer_is_grounded("Oslo, Norway", sentence)
    rows = [
        {"sentence": sentence, "pairs": [{"question": "q", "answer": "Oslo"}, {"question": "q", "answer": "Tromsdal"}]},
        {"sentence": "The museum is closed on Tuesdays.", "pairs": [{"question": "q", "answer": "Mondays"}]},
        {"sentence": "Nothing here.", "pairs": []},
    ]
    assert grounded_sentence_fraction(rows) == pytest.approx(1 / 3)
    assert grounded_sentence_fraction([]) == 0.0


def test_groundedness_of_answers_in_scripts_without_spaces():
    assert answer_is_grounded("托马斯", "厂长是托马斯。")
    assert not answer_is_grounded("伊尔莎", "厂长是托马斯。")
    assert answer_is_grounded("Tomas Quell", "Its director is Tomas Quell, a former guide.")


def test_near_copies_snap_to_the_source_span():
    from lift_ray.metrics import snap_to_source

    source = "Only three workers at a time know the full recipe for Tessaro Dusk."
    assert snap_to_source("Tessar Dusk", source) == "Tessaro Dusk"
    assert snap_to_source("three workers", source) == "three workers"  # exact already
    assert snap_to_source("manganese", source) == "manganese"  # nothing close: unchanged
    assert snap_to_source("", source) == ""
