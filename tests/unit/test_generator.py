"""QAGenerator's retry and grounding policy.

The engine here replays scripted replies: what an LLM writes is this code's input, and these tests
need exact inputs (a hallucinated answer, a malformed reply) that a real model gives only by chance.
The real engines behind the same interface are tested in test_engines.py and the integration tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lift_ray.config import GeneratorSettings
from lift_ray.engines import Conversation, Generation, SamplingSettings
from lift_ray.synth.generator import QAGenerator
from lift_ray.synth.prompts import VERIFY_INSTRUCTION

ROW = {
    "sentence_index": 0,
    "context": "The Orvella Glass Works stands in Tessaro.",
    "sentence": "It was founded in 1887 by Ilsa Varnholt.",
}


class ScriptedEngine:
    """Answers attempt k of every conversation with script(k, conversation); records what it was asked."""

    name = "scripted"

    def __init__(self, script: Callable[[int, Conversation], str]) -> None:
        self.script = script
        self.calls: list[tuple[list[Conversation], SamplingSettings]] = []

    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        attempt = len(self.calls)
        self.calls.append((conversations, sampling))
        return [Generation(self.script(attempt, c), 10) for c in conversations]


def qa(*pairs: tuple[str, str]) -> str:
    return json.dumps({"qa_list": [{"question": q, "answer": a} for q, a in pairs]})


def run(script: Callable[[int, Conversation], str], **settings: object) -> tuple[dict, ScriptedEngine]:
    """One generator over ROW; the answer-aware stage and the round-trip check are off unless a test turns
    them on."""
    engine = ScriptedEngine(script)
    settings = {"answer_aware": "off", "verify_answers": False, **settings}
    generator = QAGenerator(engine, GeneratorSettings(qa_per_sentence=3, **settings))  # type: ignore[arg-type]
    [result] = generator.generate([dict(ROW)])
    return result, engine


def pairs_of(result: dict) -> list[tuple[str, str]]:
    return [(p["question"], p["answer"]) for p in json.loads(result["qa_json"])]


def test_a_grounded_first_answer_is_kept_after_one_attempt():
    result, engine = run(lambda k, c: qa(("Who founded it?", "Ilsa Varnholt"), ("When?", "in 1887")))
    assert pairs_of(result) == [("Who founded it?", "Ilsa Varnholt"), ("When?", "in 1887")]
    assert result["attempts"] == 1 and result["retried"] is False and result["ungrounded"] == 0
    assert len(engine.calls) == 1 and "The Orvella Glass Works stands" in engine.calls[0][0][0][-1]["content"]


def test_hallucinated_answers_are_dropped_and_the_sentence_is_retried_alone():
    def script(attempt: int, conversation: Conversation) -> str:
        if attempt == 0:
            return qa(("Who founded it?", "Marco Polo"), ("Where is it?", "Tessaro"))
        return qa(("Who founded the works?", "Ilsa Varnholt"))

    result, engine = run(script)
    # "Marco Polo" is nowhere in the paragraph: dropped. "Tessaro" is in the paragraph (kept) but not in
    # the sentence, so the sentence is retried, without its paragraph.
    assert pairs_of(result) == [("Where is it?", "Tessaro"), ("Who founded the works?", "Ilsa Varnholt")]
    assert result["ungrounded"] == 1 and result["attempts"] == 2 and result["retried"] is True
    retry_prompt = engine.calls[1][0][0][-1]["content"]
    assert "Tessaro" not in retry_prompt and ROW["sentence"] in retry_prompt


def test_malformed_replies_are_retried_then_counted_never_raised():
    result, engine = run(lambda k, c: "I cannot help with that.", max_retries=2, samples_per_retry=2)
    # Attempts 0 and 1 are greedy (one reply each); attempt 2 samples two candidates.
    assert [len(conversations) for conversations, _ in engine.calls] == [1, 1, 2]
    assert pairs_of(result) == [] and result["malformed"] == 4 and result["attempts"] == 3


def test_retries_are_greedy_first_then_sampled_with_new_seeds():
    _, engine = run(lambda k, c: "nothing", max_retries=3, temperature=0.0, retry_temperature=0.7)
    assert [s.temperature for _, s in engine.calls] == [0.0, 0.0, 0.7, 0.7]
    assert len({s.seed for _, s in engine.calls}) == 4


def test_without_require_grounded_any_valid_pair_is_enough():
    result, engine = run(lambda k, c: qa(("Who founded it?", "Marco Polo")), require_grounded=False)
    assert pairs_of(result) == [("Who founded it?", "Marco Polo")] and len(engine.calls) == 1


def test_pairs_from_several_attempts_are_merged_without_duplicates_up_to_m():
    def script(attempt: int, conversation: Conversation) -> str:
        if attempt == 0:
            return qa(("Where is it?", "Tessaro"), ("What is it?", "Orvella Glass Works"))
        return qa(("Where is it?", "Tessaro"), ("Who founded it?", "Ilsa Varnholt"), ("When?", "1887"))

    result, _ = run(script)
    assert pairs_of(result) == [
        ("Where is it?", "Tessaro"),
        ("What is it?", "Orvella Glass Works"),
        ("Who founded it?", "Ilsa Varnholt"),
    ]
    assert result["dropped"] >= 2  # the duplicate and the pair over m


def test_sampled_retries_draw_several_candidates_and_keep_the_grounded_one():
    replies = iter(["no idea", "no idea", qa(("Who?", "Marco Polo")), qa(("Who founded it?", "Ilsa Varnholt"))])
    result, engine = run(lambda k, c: next(replies), max_retries=2, samples_per_retry=2)
    assert pairs_of(result) == [("Who founded it?", "Ilsa Varnholt")]
    assert result["ungrounded"] == 1 and result["attempts"] == 3


def test_misspelt_copies_are_repaired_to_the_sentence_spelling():
    result, _ = run(lambda k, c: qa(("Who founded it?", "Ilsa Varnhold")))
    assert pairs_of(result) == [("Who founded it?", "Ilsa Varnholt")] and result["repaired"] == 1


def aware_answer(conversation: Conversation) -> str:
    """The span an answer-aware request asks a question for (its last user turn ends with it)."""
    return conversation[-1]["content"].rsplit("Answer:\n", 1)[1]


def test_answer_aware_stage_asks_one_question_per_span_and_keeps_the_span_as_answer():
    def script(attempt: int, conversation: Conversation) -> str:
        if attempt < 2:
            return "no idea"
        span = aware_answer(conversation)
        if span == "1887":
            return qa(("In which year was the Orvella Glass Works founded?", "the year 1887"))
        return qa((f"Who is {span}?", span))  # gives its answer away: dropped

    result, engine = run(script, answer_aware="retry")
    assert [len(conversations) for conversations, _ in engine.calls][:3] == [1, 1, 2]
    asked = sorted(aware_answer(c) for c in engine.calls[2][0])
    assert asked == ["1887", "Ilsa Varnholt"]
    assert pairs_of(result) == [("In which year was the Orvella Glass Works founded?", "1887")]
    assert result["attempts"] == 3 and result["dropped"] >= 1
    # The sentence has a grounded pair now: no sampled stage after the aware one.
    assert len(engine.calls) == 3


def test_fill_asks_about_spans_no_pair_answers_yet_and_retry_does_not():
    def script(attempt: int, conversation: Conversation) -> str:
        if attempt == 0:
            return qa(("Who founded the Orvella Glass Works?", "Ilsa Varnholt"))
        return qa(("When was the Orvella Glass Works founded?", aware_answer(conversation)))

    filled, engine = run(script, answer_aware="fill")
    assert [aware_answer(c) for c in engine.calls[1][0]] == ["1887"]  # "alone" is skipped: already grounded
    assert pairs_of(filled) == [
        ("Who founded the Orvella Glass Works?", "Ilsa Varnholt"),
        ("When was the Orvella Glass Works founded?", "1887"),
    ]
    retried, engine = run(script, answer_aware="retry")
    assert len(engine.calls) == 1 and len(pairs_of(retried)) == 1


def test_spans_asks_about_every_open_span_on_top_of_m_free_form_pairs():
    # Three free-form pairs (m = 3), all answered from the paragraph: "fill" sees m pairs and asks nothing more.
    def script(attempt: int, conversation: Conversation) -> str:
        if attempt == 0:
            return qa(
                ("Where does the Orvella Glass Works stand?", "Tessaro"),
                ("What stands in Tessaro?", "The Orvella Glass Works"),
                ("Who founded the works?", "Ilsa Varnholt"),
            )
        return qa((f"Which detail of the founding is {len(aware_answer(conversation))} letters long?", "x"))

    spans, engine = run(script, answer_aware="spans")
    assert [aware_answer(c) for c in engine.calls[1][0]] == ["1887"]  # Ilsa Varnholt is answered already
    assert len(pairs_of(spans)) == 4 and pairs_of(spans)[-1][1] == "1887"  # the span, whatever the reply said
    filled, engine = run(script, answer_aware="fill")
    assert len(engine.calls) == 1 and len(pairs_of(filled)) == 3


def test_round_trip_check_keeps_only_pairs_whose_question_leads_back_to_their_answer():
    def script(attempt: int, conversation: Conversation) -> str:
        if conversation[0]["content"] == VERIFY_INSTRUCTION:
            question = conversation[-1]["content"].rsplit("Question:\n", 1)[1]
            return "Ilsa Varnholt" if question.startswith("Who") else f"{ROW['context']} {ROW['sentence']}"
        # The second question does not fit its answer; the third one does, but the reply recites the sentence.
        return qa(("Who founded it?", "Ilsa Varnholt"), ("Who was the chemist?", "1887"), ("When?", "in 1887"))

    result, engine = run(script, verify_answers=True, max_retries=0)
    assert pairs_of(result) == [("Who founded it?", "Ilsa Varnholt")]
    assert result["unverified"] == 2 and result["dropped"] >= 2
    verify_calls = [c for c, _ in engine.calls if c[0][0]["content"] == VERIFY_INSTRUCTION]
    assert len(verify_calls) == 1 and len(verify_calls[0]) == 3
    assert "Tessaro" in verify_calls[0][0][-1]["content"]  # the paragraph is shown to the verifier


def test_question_rewrites_are_sampled_and_only_questions_still_short_of_one_are_asked_again():
    def script(attempt: int, conversation: Conversation) -> str:
        asked = conversation[-1]["content"]
        if attempt == 0:
            return qa(("Who founded it?", "Ilsa Varnholt"), ("When was it founded?", "1887"))
        if "Who founded it?" in asked:
            return "Question: Which person set up the glass works?"  # usable at once
        # the other question: first its answer given away, then a good rewording
        return "In 1887, was it founded?" if attempt == 1 else "1. In which year did the works begin?\nAnswer: 1887"

    result, engine = run(script, question_rewrites=1)
    items = json.loads(result["qa_json"])
    assert [item["question"] for item in items] == ["Who founded it?", "When was it founded?"]
    assert items[0]["rewrites"] == ["Which person set up the glass works?"]
    assert items[1]["rewrites"] == ["In which year did the works begin?"]
    assert result["rewrites_dropped"] == 1
    rewrite_calls = engine.calls[1:]
    assert [len(conversations) for conversations, _ in rewrite_calls] == [2, 1]  # the second round: one question
    assert all(sampling.temperature == 1.0 for _, sampling in rewrite_calls)
    assert rewrite_calls[0][1].seed != rewrite_calls[1][1].seed


def test_a_question_the_generator_only_copies_gets_no_rewording_after_two_tries_per_rewording():
    def script(attempt: int, conversation: Conversation) -> str:
        return qa(("Who founded it?", "Ilsa Varnholt")) if attempt == 0 else "Who founded it?"

    result, engine = run(script, question_rewrites=2)
    assert "rewrites" not in json.loads(result["qa_json"])[0]
    assert len(engine.calls) == 1 + 4 and result["rewrites_dropped"] == 4


def test_without_question_rewrites_no_rewording_is_asked():
    result, engine = run(lambda k, c: qa(("Who founded it?", "Ilsa Varnholt")))
    assert "rewrites" not in json.loads(result["qa_json"])[0] and len(engine.calls) == 1
    assert result["rewrites_dropped"] == 0
