"""LIFT with the defaults as a user gets them: the generator writes the QA, not a test, and the adapter must know
facts of the document that the base model does not (measured on this CPU: see docs/evaluation.md)."""

from __future__ import annotations

import pytest

from lift_ray.cli import DEMO_QUESTIONS, SAMPLE_DOCUMENT
from lift_ray.config import RECITAL_TOKENS, RECITE_RECIPE, LiftConfig, ServeConfig
from lift_ray.documents import read_document_file
from lift_ray.eval.answerer import EvalChatModel
from lift_ray.eval.harness import Question, answer_by_reciting, answer_questions, contains_answer
from lift_ray.pipeline import lift_documents

pytestmark = pytest.mark.integration

# The sample document's five questions are worded away from its text ("Who runs the works now?" for "Its current
# director is Tomas Quell"). The default recipe (the 135M model writing its own QA, plain pairs) answered 1-2 of
# them; the base model none. The bar is the lowest measured count; the adapter is now trained with the recite
# recipe and asked by reciting, as the endpoint asks it.
AT_LEAST = 1


def test_generated_qa_teaches_facts_the_base_model_does_not_know(ray_cluster: None, lift_config: LiftConfig) -> None:
    config = lift_config.model_copy(deep=True)
    config.storage.namespace = "generated-qa"
    config.train = config.train.model_copy(update=RECITE_RECIPE)  # the default recipe, as a user gets it
    document = read_document_file(SAMPLE_DOCUMENT)
    [report] = lift_documents([document], config)
    assert report.status == "published", report.error
    assert report.qa_count >= report.sentences  # the generator wrote pairs, at least one per sentence on average
    assert report.quality is not None and report.quality["holdout_pairs"] >= 0

    questions = [
        Question(f"demo-{i}", document.doc_id, question, (answer,), "paraphrase")
        for i, (question, answer) in enumerate(DEMO_QUESTIONS)
    ]
    chat_model = EvalChatModel(ServeConfig(model=config.model, storage=config.storage, torch_threads=2))
    recite = config.recite_settings()  # the default recipe recites: asked the way the endpoint asks it
    assert recite is not None and recite["format"] == "answer_line"
    lifted = answer_by_reciting(chat_model, document.doc_id, questions, recite["prompt"], "self", RECITAL_TOKENS, 24)
    base = answer_questions(chat_model, None, questions, None, 24)
    learned = [
        (question.question, with_adapter["prediction"])
        for question, with_adapter, without in zip(questions, lifted, base, strict=True)
        if contains_answer(with_adapter["prediction"], question.answers)
        and not contains_answer(without["prediction"], question.answers)
    ]
    replies = [(q.question, row["prediction"]) for q, row in zip(questions, lifted, strict=True)]
    assert len(learned) >= AT_LEAST, f"adapter answers: {replies}"
