"""Answer spans picked from a sentence for answer-aware question generation."""

from __future__ import annotations

from lift_ray.metrics import answer_is_grounded
from lift_ray.synth.spans import candidate_answers


def test_names_numbers_and_dates_are_picked_without_sentence_openers():
    sentence = "It was founded in 1887 by a chemist named Ilsa Varnholt, who had moved to Tessaro from Bramport."
    assert candidate_answers(sentence) == ["Ilsa Varnholt", "Tessaro", "Bramport", "1887"]


def test_counts_keep_the_word_they_count_and_names_keep_inner_of():
    sentence = "Every year the factory holds the Festival of Lanterns, and the hall was rebuilt in eleven months."
    spans = candidate_answers(sentence)
    assert "Festival of Lanterns" in spans and "eleven months" in spans
    assert "Every" not in spans and "Every year" not in spans


def test_reasons_and_a_predicate_fallback():
    assert "its river sand was unusually pure" in candidate_answers(
        "Ilsa Varnholt chose Tessaro because its river sand was unusually pure."
    )
    assert candidate_answers("For most of its history the town had no bridge.") == ["no bridge"]


def test_every_span_is_grounded_in_its_sentence_and_the_limit_holds():
    sentences = [
        "In 2019 the village school of Tessaro ordered two hundred Kestrel cups for its centenary celebration.",
        "The river is 212 metres wide at the ferry landing near the Brisk Mountains and Lake Orn.",
        'The ship was renamed "Grey Heron" in 1954.',
    ]
    for sentence in sentences:
        spans = candidate_answers(sentence, limit=3)
        assert 0 < len(spans) <= 3
        assert all(answer_is_grounded(span, sentence) for span in spans)
    assert candidate_answers(sentences[2])[0] == "Grey Heron"
