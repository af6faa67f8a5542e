"""The evaluation harness: loading, scoring, truncated context, NIAH, judge parsing, results, heatmap, runner."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lift_ray import results as results_module
from lift_ray.config import DEFAULT_CACHE_DIR, OFF_DOCUMENT, SENTENCE_ANSWERS_PROMPT, LiftConfig
from lift_ray.documents import Document, validate_doc_id
from lift_ray.eval import niah
from lift_ray.eval.config import EvalConfig
from lift_ray.eval.harness import (
    CUT_MARKER,
    DOCQA_DIR,
    GENERAL_FILE,
    METHOD_NAMES,
    METHODS,
    RESULT_FIELDS,
    Question,
    answer_by_reciting,
    answer_questions,
    budgeted_context,
    build_messages,
    contains_answer,
    context_budget,
    eval_results,
    get_method,
    judge_answers,
    llm_judge_prompt,
    load_docqa,
    load_general,
    parse_judge_score,
    plot_niah_heatmap,
    results_table,
    score_answers,
    truncated_context,
    write_eval_results,
)
from lift_ray.eval.runner import Training, merge_eval_runs, method_config, niah_figures, run_eval, train_adapters
from lift_ray.pipeline import DocumentReport
from testkit.chat_stub import ChatStub


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer (the model is converted in the cache once; the tokenizer loads fast)."""
    from lift_ray.models import ensure_embedded_model, load_tokenizer

    return load_tokenizer(ensure_embedded_model(DEFAULT_CACHE_DIR))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def q(qid: str, answers: list[str], kind: str = "paraphrase", doc_id: str | None = "d") -> Question:
    return Question(qid, doc_id, f"question {qid}?", tuple(answers), kind)


# ---------------------------------------------------------------- loading


def write_set(folder: Path, rows: list[dict], documents: dict[str, str] | None = None) -> Path:
    for doc_id, text in (documents or {"doc-a": "Anna lives in Oslo."}).items():
        (folder / f"{doc_id}.txt").write_text(text)
    (folder / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_load_docqa_reads_documents_and_questions(tmp_path):
    row = {"id": "a1", "doc_id": "doc-a", "question": "Where does Anna live?", "answers": ["Oslo"], "kind": "direct"}
    documents, questions = load_docqa(write_set(tmp_path, [row]))
    assert list(documents) == ["doc-a"] and documents["doc-a"].text == "Anna lives in Oslo."
    assert questions == [Question("a1", "doc-a", "Where does Anna live?", ("Oslo",), "direct")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"doc_id": "doc-b"}, "not in"),
        ({"doc_id": "../etc"}, "not allowed"),
        ({"kind": "trick"}, "kind must be"),
        ({"answers": []}, "answers"),
        ({"answers": ["Oslo", " "]}, "answers"),
        ({"question": ""}, "question"),
    ],
)
def test_load_docqa_rejects_bad_rows(tmp_path, change, message):
    row = {"id": "a1", "doc_id": "doc-a", "question": "Where?", "answers": ["Oslo"], "kind": "direct", **change}
    with pytest.raises(ValueError, match=message):
        load_docqa(write_set(tmp_path, [row]))


def test_load_docqa_rejects_duplicate_ids(tmp_path):
    row = {"id": "a1", "doc_id": "doc-a", "question": "Where?", "answers": ["Oslo"], "kind": "direct"}
    with pytest.raises(ValueError, match="duplicate"):
        load_docqa(write_set(tmp_path, [row, row]))


# ---------------------------------------------------------------- scoring


def test_scores_average_the_best_gold_variant_per_question():
    questions = [
        q("1", ["Edda Pellworth"], "direct"),
        q("2", ["212 metres", "212 m"]),
        q("3", ["Quay Street"]),
        q("4", ["seven minutes", "7 minutes"]),
    ]
    predictions = ["edda pellworth.", "212 m", "Quay", "It was founded by the carpenter."]
    scores = score_answers(predictions, questions)
    assert [row["exact_match"] for row in scores["per_question"]] == [1.0, 1.0, 0.0, 0.0]
    assert [row["f1"] for row in scores["per_question"]] == pytest.approx([1.0, 1.0, 2 / 3, 0.0])
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert scores["count"] == 4
    assert scores["by_kind"]["direct"] == {"exact_match": 1.0, "f1": 1.0, "contains": 1.0, "count": 1}
    assert scores["by_kind"]["paraphrase"]["exact_match"] == pytest.approx(1 / 3)
    assert scores["per_question"][0]["prediction"] == "edda pellworth."


def test_contains_accepts_an_answer_inside_a_sentence_but_not_a_partial_word():
    assert contains_answer("The ferry was started by Edda Pellworth in 1871.", ["Edda Pellworth"]) == 1.0
    assert contains_answer("It is 2120 metres wide.", ["212"]) == 0.0
    assert contains_answer("I do not know.", ["Paris", "paris france"]) == 0.0
    scores = score_answers(["The answer is Tamsby, I think."], [q("1", ["Tamsby"])])
    assert (scores["exact_match"], scores["contains"]) == (0.0, 1.0)


def test_scoring_needs_one_prediction_per_question():
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        score_answers(["a", "b"], [q("1", ["a"])])


# ---------------------------------------------------------------- truncated context


def test_a_document_that_fits_is_not_truncated(tokenizer):
    text = "Anna lives in Oslo. She owns a red boat."
    assert truncated_context(text, tokenizer, 100) == text


def test_truncated_context_keeps_head_and_tail_within_budget(tokenizer):
    sentences = [f"Sentence number {i} talks about the harbour of Saltmere." for i in range(300)]
    text = " ".join(sentences)
    for budget in (64, 200, 1000):
        cut = truncated_context(text, tokenizer, budget)
        assert n_tokens(tokenizer, cut) <= budget
        assert n_tokens(tokenizer, cut) >= budget - 12  # the budget is used, not wasted
        head, tail = cut.split(CUT_MARKER)
        assert text.startswith(head) and text.endswith(tail)
        assert abs(n_tokens(tokenizer, head) - n_tokens(tokenizer, tail)) <= 4  # half the budget each
        assert "Sentence number 150 " not in cut  # the middle is gone


def test_truncated_context_refuses_a_budget_smaller_than_its_marker(tokenizer):
    with pytest.raises(ValueError, match="no room"):
        truncated_context("word " * 500, tokenizer, 5)


def test_a_context_share_gives_exactly_that_share_of_a_documents_tokens():
    tokenizer = WordTokenizer()
    text = " ".join(f"w{i}" for i in range(400))  # 400 tokens
    assert context_budget(400, 1024, 0.25) == 100
    assert context_budget(401, 1024, 0.25) == 100  # rounded down
    assert context_budget(400, 64, 0.25) == 64  # context_tokens still caps it
    assert context_budget(400, 1024) == 1024 and context_budget(100, 1024, 0.29) == 29  # no float slip to 28
    cut, document_tokens, read = budgeted_context(text, tokenizer, 1024, 0.25)
    assert (document_tokens, read) == (400, 100)
    assert len(cut.split()) == 100  # head + marker + tail: exactly the quarter
    head, tail = cut.split(CUT_MARKER)
    assert text.startswith(head) and text.endswith(tail)
    marker_tokens = len(CUT_MARKER.split())
    assert len(head.split()) + len(tail.split()) == 100 - marker_tokens
    assert budgeted_context(text, tokenizer, 1024, 1.0) == (text, 400, 400)  # the whole document
    assert budgeted_context(text, tokenizer, 1024) == (text, 400, 400)
    with pytest.raises(ValueError, match="share"):
        context_budget(400, 1024, 0.0)


def test_a_context_share_cuts_a_real_tokenizers_document_to_its_share(tokenizer):
    text = " ".join(f"Sentence number {i} talks about the harbour of Saltmere." for i in range(100))
    total = n_tokens(tokenizer, text)
    cut, document_tokens, read = budgeted_context(text, tokenizer, 10_000, 0.25)
    assert document_tokens == total and read == total // 4
    assert read - 12 <= n_tokens(tokenizer, cut) <= read


# ---------------------------------------------------------------- NIAH


@pytest.fixture(scope="module")
def essays() -> str:
    return niah.load_paul_graham_essays()


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_the_needle_goes_in_at_its_depth_at_a_sentence_boundary(tokenizer, essays, depth):
    haystack = niah.build_haystack(essays, 1024, depth, tokenizer)
    assert haystack.count(niah.NEEDLE) == 1
    assert 900 <= n_tokens(tokenizer, haystack) <= 1024
    assert niah.needle_depth(haystack, tokenizer) == pytest.approx(depth, abs=0.08)
    before, after = haystack.split(niah.NEEDLE)
    assert before == "" or before.rstrip()[-1] in ".!?\"')]"
    assert after == "" or after.startswith(" ")
    if depth == 0.0:
        assert haystack.startswith(niah.NEEDLE)
    if depth == 1.0:
        assert haystack.endswith(niah.NEEDLE)


def test_haystack_instances_differ_and_lengths_scale(tokenizer, essays):
    first = niah.build_haystack(essays, 512, 0.5, tokenizer)
    other = niah.build_haystack(essays, 512, 0.5, tokenizer, offset_chars=len(essays) // 2)
    assert first.replace(niah.NEEDLE, "")[:200] != other.replace(niah.NEEDLE, "")[:200]
    assert n_tokens(tokenizer, niah.build_haystack(essays, 4096, 0.5, tokenizer)) > 3800
    with pytest.raises(ValueError, match="depth"):
        niah.build_haystack(essays, 512, 1.5, tokenizer)
    with pytest.raises(ValueError, match="no room"):
        niah.build_haystack(essays, 10, 0.5, tokenizer)


def test_niah_correctness_needs_every_keyword():
    assert niah.niah_correct("Eat a SANDWICH and sit in Dolores  Park on a sunny day.")
    assert niah.niah_correct(niah.NEEDLE)
    assert not niah.niah_correct("Eat a sandwich in Dolores Park.")  # not "sunny"
    assert not niah.niah_correct("Sit in the park on a sunny day with a sandwich.")  # not "Dolores Park"
    assert not niah.niah_correct("")


def test_niah_figures_keep_each_needle_apart():
    grids = {"sandwich": {(128, 0.0): 1.0, (128, 1.0): 1.0}, "boats": {(128, 0.0): 0.0, (128, 1.0): 1.0}}
    figures = niah_figures(grids)
    assert figures["niah_grid"] == {"128@0.0": 0.5, "128@1.0": 1.0}
    assert figures["niah_accuracy"] == 0.75
    assert figures["niah_needles"]["boats"] == {
        "accuracy": 0.5,
        "cells_at_least_95": 0.5,
        "grid": {"128@0.0": 0.0, "128@1.0": 1.0},
    }
    assert figures["niah_needles"]["sandwich"]["cells_at_least_95"] == 1.0


def test_niah_ids_and_accuracy():
    assert niah.niah_doc_id(1024, 0.25, 3) == "niah-L1024-d025-i3"
    assert validate_doc_id(niah.niah_doc_id(128000, 1.0, 4))
    accuracy = niah.niah_accuracy({(512, 0.0): [True, False, True, True], (512, 1.0): [False]})
    assert accuracy == {(512, 0.0): 0.75, (512, 1.0): 0.0}


# ---------------------------------------------------------------- judge


def test_the_judge_prompt_holds_question_gold_and_prediction():
    prompt = llm_judge_prompt("Who founded it?", ["Edda Pellworth", "Edda"], "A carpenter called Edda.")
    assert "Who founded it?" in prompt and "Edda Pellworth / Edda" in prompt and "A carpenter called Edda." in prompt
    assert "True" in prompt and "False" in prompt
    assert llm_judge_prompt("Q?", "Oslo", "oslo").count("Oslo") == 1


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("True", 1),
        ("false", 0),
        ("**True**", 1),
        ("'False'.", 0),
        ("False. It is not true that the two agree.", 0),
        ("Yes", 1),
        ("The answers agree, so: True", 1),
        ("Verdict: false", 0),
        ("I cannot tell.", None),
        ("", None),
        ("It could be true or false.", None),
        ("untrue", None),
    ],
)
def test_judge_replies_are_parsed(reply, score):
    assert parse_judge_score(reply) == score


# ---------------------------------------------------------------- methods


def test_the_methods_and_what_they_need():
    assert METHOD_NAMES == (
        "base",
        "icl",
        "finetune_raw",
        "lift",
        "lift_distill",
        "lift_sft_distill",
        "lift_sentences",
        "lift_recite",
        "lift_recite_base",
        "lift_recite_answer",
        "lift_recite_rewrites",
        "lift_recite_offdoc",
        "lift_10qa",
        "lift_recite_answer_10qa",
        "lift_icl",
    )
    needs = {m.name: (m.adapter is not None, m.context) for m in METHODS}
    assert needs == {
        "base": (False, False),
        "icl": (False, True),
        "finetune_raw": (True, False),
        "lift": (True, False),
        "lift_distill": (True, False),
        "lift_sft_distill": (True, False),
        "lift_sentences": (True, False),
        "lift_recite": (True, False),
        "lift_recite_base": (True, False),
        "lift_recite_answer": (True, False),
        "lift_recite_rewrites": (True, False),
        "lift_recite_offdoc": (True, False),
        "lift_10qa": (True, False),
        "lift_recite_answer_10qa": (True, False),
        "lift_icl": (True, True),
    }
    with pytest.raises(ValueError, match="unknown method"):
        get_method("rag")


def test_method_configs_train_the_right_variants_in_their_own_namespaces():
    configs = {m.name: method_config(m, overrides=["train.epochs=2"]) for m in METHODS}
    assert all(isinstance(c, LiftConfig) and c.train.epochs == 2 for c in configs.values())
    assert configs["finetune_raw"].train.variant == "finetune_raw"
    assert configs["lift"].generator.qa_per_sentence == 5
    assert configs["lift_10qa"].generator.qa_per_sentence == 10
    ten = configs["lift_recite_answer_10qa"]
    assert ten.generator.qa_per_sentence == 10 and ten.storage.qa_namespace == configs["lift_10qa"].storage.qa_namespace
    assert ten.recite_settings() == configs["lift_recite_answer"].recite_settings()
    assert configs["lift_recite_offdoc"].train.off_document_examples == 16
    rewrites = configs["lift_recite_rewrites"]
    assert rewrites.generator.question_rewrites == 1 and configs["lift_recite_answer"].generator.question_rewrites == 0
    assert rewrites.recite_settings() == configs["lift_recite_answer"].recite_settings()
    assert rewrites.storage.qa_namespace not in {configs[n].storage.qa_namespace for n in ("lift", "lift_10qa")}
    assert configs["lift_icl"].adapter_hash() == configs["lift"].adapter_hash()
    assert configs["lift_icl"].storage.namespace == configs["lift"].storage.namespace == "eval-lift"
    trained = {configs[n].adapter_hash() for n in ("finetune_raw", "lift", "lift_10qa")}
    assert len(trained) == 3
    namespaces = {configs[n].storage.namespace for n in ("finetune_raw", "lift", "lift_10qa")}
    assert namespaces == {"eval-finetune_raw", "eval-lift", "eval-lift_10qa"}
    sentences = configs["lift_sentences"]
    assert sentences.train.sentence_answers and sentences.train.sentence_answers_prompt == SENTENCE_ANSWERS_PROMPT
    assert sentences.storage.qa_namespace == "eval-lift"  # the same cached QA as `lift`
    assert {m.recite for m in METHODS if m.recite} == {"adapter", "base", "self"}
    assert {m.adapter for m in METHODS if m.recite in ("adapter", "base")} == {"lift_sentences"}
    with_answer = configs["lift_recite_answer"]
    assert with_answer.train.sentence_answers_with_answer and with_answer.train.sentence_answers_prompt
    assert with_answer.storage.namespace == "eval-lift_recite_answer"
    assert configs["lift_recite"].adapter_hash() == sentences.adapter_hash() != configs["lift"].adapter_hash()


# ---------------------------------------------------------------- results and heatmap


def test_results_have_every_method_and_field(tmp_path, monkeypatch):
    monkeypatch.setattr(results_module, "RESULTS_DIR", tmp_path)
    path = write_eval_results({"lift": {"exact_match": 0.41666666, "f1": 0.5, "contains": 0.7}, "base": {"f1": 0.1}})
    assert path == tmp_path / "eval.json"
    data = json.loads(path.read_text())
    assert list(data) == sorted(METHOD_NAMES)
    for entry in data.values():
        assert set(RESULT_FIELDS) <= set(entry)
    assert data["lift"]["exact_match"] == 0.4167 and data["lift"]["contains"] == 0.7
    assert data["lift"]["niah_accuracy"] is None and data["icl"]["f1"] is None
    with pytest.raises(ValueError, match="unknown methods"):
        eval_results({"rag": {}})
    assert "| lift | 0.4167 | 0.5 | - |" in results_table({"lift": {"exact_match": 0.41666666, "f1": 0.5}})


def test_the_niah_heatmap_is_written(tmp_path):
    import matplotlib.image

    grid = {(length, depth): (length + depth) % 2 / 1.0 for length in (256, 512, 1024) for depth in (0.0, 0.5, 1.0)}
    del grid[(1024, 0.5)]
    out = plot_niah_heatmap(grid, tmp_path / "plots" / "niah.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height > 100
    with pytest.raises(ValueError, match="empty"):
        plot_niah_heatmap({}, tmp_path / "none.png")


def test_niah_grids_of_several_methods_share_one_figure_and_round_trip_through_the_results_file(tmp_path):
    import matplotlib.image

    from lift_ray.eval.harness import plot_niah_grids
    from lift_ray.eval.runner import niah_cells

    stored = {"1024@0.0": 1.0, "1024@0.5": 0.0, "2048@1.0": 0.5}
    cells = niah_cells(stored)
    assert cells == {(1024, 0.0): 1.0, (1024, 0.5): 0.0, (2048, 1.0): 0.5}
    one = plot_niah_grids({"lift": cells}, tmp_path / "one.png")
    two = plot_niah_grids({"lift": cells, "finetune_raw": cells}, tmp_path / "two.png")
    assert matplotlib.image.imread(two).shape[1] > 1.5 * matplotlib.image.imread(one).shape[1]


def test_the_score_chart_names_each_run_method_with_its_cost(tmp_path):
    import matplotlib.image

    from lift_ray.eval.harness import plot_scores

    results = {
        "base": {"exact_match": 0.0, "f1": 0.1, "contains": 0.0, "seconds_per_document": 2.0},
        "lift": {"exact_match": 0.3, "f1": 0.5, "contains": 0.6, "seconds_per_document": 300.0},
        "icl": {"exact_match": None, "f1": None},
    }
    out = plot_scores(results, tmp_path / "scores.png")
    assert matplotlib.image.imread(out).shape[0] > 100
    with pytest.raises(ValueError, match="no method"):
        plot_scores({"icl": {"f1": None}}, tmp_path / "none.png")


# ---------------------------------------------------------------- answering and the runner, with fakes


@dataclass
class FakeAnswer:
    text: str
    prompt_tokens: int = 3
    completion_tokens: int = 2


class WordTokenizer:
    """Whitespace tokens, enough for truncation and haystacks without a model."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.ids: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._ids(text)}

    def _ids(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
            ids.append(self.ids[word])
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(self.words[i] for i in ids)


class FakeChatModel:
    """Answers right with an adapter (knows every gold answer and the needle), 'I do not know' without one."""

    def __init__(self, gold: dict[str, str], calls: list) -> None:
        self.gold, self.calls, self.loaded = gold, calls, set()
        self.tokenizer = WordTokenizer()

    def load_adapter(self, doc_id: str) -> float:
        self.loaded.add(doc_id)
        return 0.0

    def chat(self, messages, doc_id, max_new_tokens, temperature=0.0):
        self.calls.append((doc_id, messages[-1]["content"], max_new_tokens, temperature))
        question = messages[-1]["content"].rsplit("Question: ", 1)[-1]
        if doc_id is not None or "Here is a document." in messages[-1]["content"]:
            return FakeAnswer(f"The answer is {self.gold.get(question, niah.NEEDLE)}.")
        return FakeAnswer("I do not know.")


def test_answer_questions_loads_the_adapter_and_puts_the_context_in_the_prompt():
    calls: list = []
    model = FakeChatModel({"question 1?": "Oslo"}, calls)
    rows = answer_questions(model, "doc-a", [q("1", ["Oslo"])], "Anna lives in Oslo.", 16)
    assert model.loaded == {"doc-a"}
    assert rows[0]["id"] == "1" and rows[0]["prediction"] == "The answer is Oslo."
    assert rows[0]["prompt_tokens"] == 3 and rows[0]["completion_tokens"] == 2
    assert calls == [("doc-a", build_messages("question 1?", "Anna lives in Oslo.")[0]["content"], 16, 0.0)]
    assert "Anna lives in Oslo." in calls[0][1] and calls[0][1].endswith("Question: question 1?")
    assert build_messages("Who?", None) == [{"role": "user", "content": "Who?"}]


def test_run_eval_trains_each_variant_once_and_scores_every_method(tmp_path):
    documents, questions = load_docqa()
    gold = {question.question: question.answers[0] for question in questions}
    lifted: list[tuple[str, str, int]] = []
    calls: list = []

    def fake_lift(docs, config):
        lifted.append((config.storage.namespace, config.generator.preset, len(docs)))
        return [DocumentReport(d.doc_id, "published") for d in docs]

    gold.update({needle.question: needle.text for needle in niah.NEEDLES})
    config = EvalConfig(lift={"train": {"epochs": 1}}, niah={"lengths": [128], "depths": [0.0, 1.0]})
    results = run_eval(
        config,
        lift_fn=fake_lift,
        chat_model_factory=lambda serve_config: FakeChatModel(gold, calls),
    )
    docqa_runs = [run for run in lifted if run[2] == len(documents)]
    assert sorted(run[0] for run in docqa_runs) == [
        "eval-finetune_raw",
        "eval-lift",
        "eval-lift_10qa",
        "eval-lift_distill",
        "eval-lift_recite_answer",
        "eval-lift_recite_answer_10qa",
        "eval-lift_recite_offdoc",
        "eval-lift_recite_rewrites",
        "eval-lift_sentences",
        "eval-lift_sft_distill",
    ]
    haystacks = 2 * len(niah.NEEDLES)  # 2 cells for each needle
    assert sorted(run[1] for run in lifted if run[2] == haystacks) == ["niah"] * 10
    assert results["base"]["exact_match"] == 0.0 and results["base"]["niah_accuracy"] == 0.0
    for name in ("icl", "finetune_raw", "lift", "lift_10qa", "lift_icl"):
        assert results[name]["contains"] == 1.0, name
        assert results[name]["niah_accuracy"] == 1.0, name
    assert results["lift"]["train_seconds_per_document"] is not None
    assert results["icl"]["train_seconds_per_document"] is None and results["icl"]["seconds_per_document"] > 0
    assert results["lift"]["general_contains"] == 0.0  # the fake answers the document, not the general question
    lift_settings = {
        "train.epochs": 1,
        "storage.namespace": "eval-lift",
        "storage.qa_namespace": "eval-lift",
        # the paper's training: the default recipe's sentence answers off
        "train.sentence_answers": False,
        "train.sentence_answers_prompt": "",
        "train.sentence_answers_with_answer": False,
    }
    assert results["lift"]["lift_settings"] == lift_settings
    assert "train.sentence_answers" not in results["lift_recite_answer"]["lift_settings"]  # the default recipe
    assert results["lift_10qa"]["lift_settings"]["generator.qa_per_sentence"] == 10
    assert "lift_settings" not in results["icl"]
    assert results["lift"]["niah_grid"] == {"128@0.0": 1.0, "128@1.0": 1.0}
    assert set(results["lift"]["niah_needles"]) == set(niah.NEEDLE_NAMES)
    assert all(figures["cells_at_least_95"] == 1.0 for figures in results["lift"]["niah_needles"].values())
    icl_prompts = [content for doc_id, content, *_ in calls if "Here is a document." in content]
    assert icl_prompts and all(content.count(niah.NEEDLE) <= 1 for content in icl_prompts)
    assert set(eval_results(results)) == set(METHOD_NAMES)


class RecitingChatModel(FakeChatModel):
    """Under the sentence-answer prompt an adapter says the gold answer's sentence (`OFF_DOCUMENT` for a question
    it has no answer for); a reader finds the answer only in the text it is given; a plain question gets the
    base model's answer from `base_gold` without an adapter, else 'I do not know.'."""

    def __init__(self, gold: dict[str, str], calls: list, base_gold: dict[str, str] | None = None) -> None:
        super().__init__(gold, calls)
        self.base_gold = base_gold or {}

    def chat(self, messages, doc_id, max_new_tokens, temperature=0.0):
        self.calls.append((doc_id, messages, max_new_tokens))
        content = messages[-1]["content"]
        if messages[0]["role"] == "system" and messages[0]["content"] == SENTENCE_ANSWERS_PROMPT:
            if not doc_id:
                return FakeAnswer("No idea.", 5, 4)
            return FakeAnswer(
                f"The sentence says {self.gold[content]}." if content in self.gold else OFF_DOCUMENT, 5, 4
            )
        if doc_id is None and content in self.base_gold:
            return FakeAnswer(f"It is {self.base_gold[content]}.")
        if "Here is a document." in content:
            question = content.rsplit("Question: ", 1)[-1]
            found = self.gold[question] if self.gold.get(question, "\0") in content else "nothing"
            return FakeAnswer(f"It is {found}.")
        return FakeAnswer("I do not know.")


def test_answer_by_reciting_recites_under_the_sentence_prompt_then_reads_what_was_recited():
    calls: list = []
    model = RecitingChatModel({"question 1?": "Oslo"}, calls)
    [row] = answer_by_reciting(model, "doc-a", [q("1", ["Oslo"])], SENTENCE_ANSWERS_PROMPT, "base", 40, 16)
    assert model.loaded == {"doc-a"}
    assert (row["recited"], row["prediction"]) == ("The sentence says Oslo.", "It is Oslo.")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5 + 3, 4 + 2)  # both passes counted
    (recite_adapter, recite_messages, recite_tokens), (read_adapter, read_messages, read_tokens) = calls
    assert (recite_adapter, recite_tokens, read_adapter, read_tokens) == ("doc-a", 40, None, 16)  # base reads
    assert recite_messages == [
        {"role": "system", "content": SENTENCE_ANSWERS_PROMPT},
        {"role": "user", "content": "question 1?"},
    ]
    assert read_messages == build_messages("question 1?", "The sentence says Oslo.")
    calls.clear()
    answer_by_reciting(model, "doc-a", [q("1", ["Oslo"])], SENTENCE_ANSWERS_PROMPT, "adapter", 40, 16)
    assert calls[1][0] == "doc-a"  # the adapter reads its own recital
    calls.clear()
    model.chat = lambda messages, doc_id, tokens, temperature=0.0: (
        calls.append((doc_id, messages, tokens)) or FakeAnswer("Anna lives in Oslo.\nAnswer: Oslo", 5, 9)
    )
    [row] = answer_by_reciting(model, "doc-a", [q("1", ["Oslo"])], SENTENCE_ANSWERS_PROMPT, "self", 40, 16)
    assert (row["recited"], row["prediction"], row["completion_tokens"]) == ("Anna lives in Oslo.", "Oslo", 9)
    assert [(doc_id, tokens) for doc_id, _, tokens in calls] == [("doc-a", 56)]  # one pass, room for both
    with pytest.raises(ValueError, match="sentence_answers_prompt"):
        answer_by_reciting(model, "doc-a", [q("1", ["Oslo"])], "", "base", 40, 16)
    with pytest.raises(ValueError, match="reader"):
        answer_by_reciting(model, "doc-a", [q("1", ["Oslo"])], SENTENCE_ANSWERS_PROMPT, "judge", 40, 16)


def test_answer_by_reciting_hands_off_document_recitals_to_the_base_model_asked_plainly():
    calls: list = []
    model = RecitingChatModel({"question 1?": "Oslo"}, calls, base_gold={"question 2?": "Paris"})
    questions = [q("1", ["Oslo"]), q("2", ["Paris"])]
    first, second = answer_by_reciting(model, "doc-a", questions, SENTENCE_ANSWERS_PROMPT, "self", 40, 16, True)
    assert (first["prediction"], second["recited"]) == ("The sentence says Oslo.", OFF_DOCUMENT)
    assert second["prediction"] == "It is Paris."
    assert calls[-1] == (None, build_messages("question 2?", None), 16)  # the base model, the bare question
    assert [doc_id for doc_id, *_ in calls] == ["doc-a", "doc-a", None]  # only the off-document one went on
    calls.clear()
    _, second = answer_by_reciting(model, "doc-a", questions, SENTENCE_ANSWERS_PROMPT, "self", 40, 16, False)
    assert second["prediction"] == OFF_DOCUMENT and len(calls) == 2  # an adapter not trained to say it: as said


def test_run_eval_recite_methods_share_the_sentence_adapter_and_ask_general_questions_as_they_ask():
    documents, questions = load_docqa()
    gold = {question.question: question.answers[0] for question in questions}
    lifted: list[tuple[str, bool, str]] = []
    calls: list = []

    def fake_lift(docs, config):
        lifted.append((config.storage.namespace, config.train.sentence_answers, config.train.sentence_answers_prompt))
        return [DocumentReport(d.doc_id, "published") for d in docs]

    config = EvalConfig(methods=["lift_recite", "lift_sentences", "lift_recite_base"])
    results = run_eval(config, lift_fn=fake_lift, chat_model_factory=lambda _: RecitingChatModel(gold, calls))
    assert lifted == [("eval-lift_sentences", True, SENTENCE_ANSWERS_PROMPT)]  # trained once, for all three
    assert results["lift_sentences"]["contains"] == 0.0  # asked plainly, the fake knows nothing
    for name in ("lift_recite", "lift_recite_base"):
        assert results[name]["contains"] == 1.0, name
        assert all(row["recited"].startswith("The sentence says") for row in results[name]["per_question"])
    assert "recited" not in results["lift_sentences"]["per_question"][0]
    general = {question.question for question in load_general(DOCQA_DIR / GENERAL_FILE)}
    general_calls = [messages for _, messages, _ in calls if messages[-1]["content"] in general]
    recited = [messages for messages in general_calls if messages[0]["content"] == SENTENCE_ANSWERS_PROMPT]
    plain = [messages for messages in general_calls if messages[0]["role"] == "user"]
    assert recited and plain  # lift_sentences asks plainly, the reciting methods recite (as the endpoint does)
    assert results["lift_recite"]["general_contains"] == results["lift_sentences"]["general_contains"] == 0.0


def test_run_eval_off_document_recitals_keep_general_questions_for_the_base_model():
    documents, questions = load_docqa()
    gold = {question.question: question.answers[0] for question in questions}
    del gold[questions[0].question]  # one document question the adapters cannot place: it recites OFF_DOCUMENT
    general = load_general(DOCQA_DIR / GENERAL_FILE)
    base_gold = {question.question: question.answers[0] for question in general}
    lifted: list = []

    def fake_lift(docs, config):
        lifted.append((config.storage.namespace, config.train.off_document_examples, config.recite_settings()))
        return [DocumentReport(d.doc_id, "published") for d in docs]

    config = EvalConfig(methods=["base", "lift_recite_answer", "lift_recite_offdoc"])
    results = run_eval(config, lift_fn=fake_lift, chat_model_factory=lambda _: RecitingChatModel(gold, [], base_gold))
    assert [entry[:2] for entry in lifted] == [("eval-lift_recite_answer", 0), ("eval-lift_recite_offdoc", 16)]
    assert "off_document" not in lifted[0][2] and lifted[1][2]["off_document"] == OFF_DOCUMENT
    assert results["base"]["general_contains"] == 1.0
    assert results["lift_recite_answer"]["general_contains"] == 0.0  # says the document does not say, and stops
    assert results["lift_recite_offdoc"]["general_contains"] == 1.0  # the base model answers those
    assert results["lift_recite_offdoc"]["off_document_recitals"] == 1  # counted among the document questions


def test_run_eval_reports_documents_that_failed_to_lift():
    def failing_lift(docs, config):
        return [DocumentReport(d.doc_id, status="failed", error="no valid QA pairs") for d in docs]

    with pytest.raises(RuntimeError, match="no valid QA pairs"):
        run_eval(
            EvalConfig(methods=["lift"], general=False),
            lift_fn=failing_lift,
            chat_model_factory=lambda serve_config: FakeChatModel({}, []),
        )


def test_run_eval_with_a_context_share_gives_icl_that_share_and_says_so():
    documents, questions = load_docqa()
    gold = {question.question: question.answers[0] for question in questions}
    calls: list = []
    config = EvalConfig(methods=["base", "icl", "lift_icl"], context_share=0.25, general=False)
    results = run_eval(
        config,
        lift_fn=lambda docs, config: [DocumentReport(d.doc_id, "published") for d in docs],
        chat_model_factory=lambda serve_config: FakeChatModel(gold, calls),
    )
    prompts = [content for _, content, *_ in calls if "Here is a document." in content]
    assert len(prompts) == 2 * len(questions)
    quarters = {len(d.text.split()) // 4 for d in documents.values()}
    for content in prompts:
        document = content.split("Here is a document.\n\n", 1)[1].split("\n\nAnswer the question", 1)[0]
        assert CUT_MARKER in document and len(document.split()) in quarters  # word tokens: exactly a quarter
    total = sum(len(d.text.split()) for d in documents.values())
    for name in ("icl", "lift_icl"):
        assert results[name]["context_share"] == 0.25 and results[name]["context_tokens"] == 1024
        assert results[name]["context_read_share"] == round(
            sum(len(d.text.split()) // 4 for d in documents.values()) / total, 4
        )
    assert "context_share" not in results["base"]
    table = eval_results(results)
    assert table["icl"]["context_share"] == 0.25 and table["icl"]["context_read_share"] < 0.26
    header, *rows = results_table(results).splitlines()
    assert header.rstrip(" |").endswith("context_read_share")
    assert any(
        row.startswith("| icl |") and row.rstrip(" |").endswith(str(results["icl"]["context_read_share"]))
        for row in rows
    )
    assert "context_read_share" not in results_table({"base": {"f1": 0.1}})


def test_run_eval_says_when_adapters_were_reused_from_an_earlier_run():
    documents, questions = load_docqa()
    gold = {question.question: question.answers[0] for question in questions}

    def partly_published(docs, config):  # the first document was already published with this config
        return [DocumentReport(d.doc_id, "skipped" if i == 0 else "published") for i, d in enumerate(docs)]

    def all_published(docs, config):
        return [DocumentReport(d.doc_id, "skipped") for d in docs]

    def run(lift_fn):
        niah_settings = {"lengths": [64], "depths": [0.5], "needles": ["sandwich"]}
        config = EvalConfig(methods=["lift", "lift_icl"], general=False, niah=niah_settings)
        return run_eval(config, lift_fn=lift_fn, chat_model_factory=lambda serve_config: FakeChatModel(gold, []))

    partly = run(partly_published)["lift"]
    assert partly["adapters_reused"] is True
    assert (partly["adapters_reused_count"], partly["adapters_trained_count"]) == (1, len(documents) - 1)
    assert partly["train_seconds_per_document"] is not None
    assert (partly["niah_adapters_reused_count"], partly["niah_adapters_trained_count"]) == (1, 0)  # 1 haystack
    reused = run(all_published)
    for name in ("lift", "lift_icl"):
        entry = reused[name]
        assert entry["adapters_reused"] is True and entry["adapters_trained_count"] == 0, name
        assert entry["adapters_reused_count"] == len(documents)
        assert entry["train_seconds_per_document"] is None and entry["seconds_per_document"] is None
        assert entry["niah_adapters_reused"] is True and entry["niah_train_seconds_per_document"] is None


def eval_parser():
    """`lift-ray eval` as cli.py wires it: the eval options, --config/--set included."""
    import argparse

    from lift_ray.eval.runner import add_eval_arguments

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser


def test_eval_command_parses_and_rejects_bad_methods_and_settings_before_training(capsys):
    from lift_ray.eval.runner import eval_command, eval_config_from_args

    args = eval_parser().parse_args(["--methods", "base", "lift", "--niah-lengths", "256", "512", "--set", "seed=3"])
    config = eval_config_from_args(args)
    assert config.methods == ["base", "lift"] and config.niah.lengths == [256, 512] and config.lift.seed == 3
    assert eval_config_from_args(eval_parser().parse_args([])).methods == list(METHOD_NAMES)
    assert eval_command(eval_parser().parse_args(["--methods", "rag"])) == 2
    assert "unknown method 'rag'" in capsys.readouterr().out
    assert eval_command(eval_parser().parse_args(["--set", "train.epochs=0"])) == 2
    assert "train.epochs" in capsys.readouterr().out
    assert eval_command(eval_parser().parse_args(["--context-share", "1.5"])) == 2
    assert "context_share" in capsys.readouterr().out
    assert (
        eval_command(eval_parser().parse_args(["--methods", "lift", "--niah-lengths", "64", "--niah-set", "x=1"])) == 2
    )
    assert "extra" in capsys.readouterr().out.lower()  # a bad haystack setting fails before training, too


def test_the_plan_counts_generator_prompts_per_trained_variant_and_task(embedded_model_dir):
    from lift_ray.eval.runner import eval_plan

    methods = [get_method(name) for name in ("base", "finetune_raw", "lift", "lift_icl")]
    config = EvalConfig(
        methods=[m.name for m in methods],
        niah={"lengths": [256], "depths": [0, 0.5, 1], "methods": ["lift"], "needles": ["sandwich"]},
    )
    plan = eval_plan(config)
    rows = {(row["variant"], row["task"]): row for row in plan}
    assert set(rows) == {("finetune_raw", "docqa"), ("lift", "docqa"), ("lift", "niah")}  # base trains nothing
    assert rows[("lift", "docqa")]["documents"] == 5 and rows[("lift", "docqa")]["sentences"] > 5 * 10
    assert rows[("finetune_raw", "docqa")]["sentences"] == 0  # raw segments: no generator prompts
    niah_row = rows[("lift", "niah")]
    assert niah_row["documents"] == 3 and 0 < niah_row["tokens"] <= 3 * 256
    # the three haystacks share all but the needle and the sentences whose paragraph shows it
    assert niah_row["sentences"] / 3 < niah_row["unique_sentences"] < niah_row["sentences"]
    assert rows[("lift", "docqa")]["unique_sentences"] == rows[("lift", "docqa")]["sentences"]


def judge_rule(prompt: str) -> str:
    """A judge on loopback HTTP: True when the prediction holds the ground truth, no verdict for '???'."""
    gold = prompt.split("Ground truth: ")[1].split("\n")[0].split(" / ")
    prediction = prompt.split("Predicted answer: ")[1]
    if "???" in prediction:
        return "I cannot tell."
    return "True" if any(g.lower() in prediction.lower() for g in gold) else "False."


def test_run_eval_asks_an_openai_compatible_judge_about_every_answer(serve_fake_llm):
    from lift_ray.eval.runner import judge_engine

    behaviour = ChatStub(reply=judge_rule)
    judge = judge_engine(serve_fake_llm(behaviour), "judge-model")
    documents, questions = load_docqa()
    gold = {question.question: question.answers[0] for question in questions}
    results = run_eval(
        EvalConfig(methods=["base", "icl"], general=False),
        judge=judge,
        chat_model_factory=lambda serve_config: FakeChatModel(gold, []),
    )
    assert len(behaviour.bodies) == 2 * len(questions)
    assert {body["model"] for body in behaviour.bodies} == {"judge-model"}
    assert "Ground truth:" in behaviour.bodies[0]["messages"][0]["content"]
    assert results["base"]["judge_score"] == 0.0 and results["icl"]["judge_score"] == 1.0
    assert results["icl"]["judge_unparsed"] == 0
    assert {row["judge"] for row in results["icl"]["per_question"]} == {1}

    rows = [{"question": "Q?", "answers": ["Oslo"], "prediction": p} for p in ("Oslo.", "Bergen", "???")]
    assert judge_answers(rows, judge) == {"judge_score": 0.5, "judge_unparsed": 1}
    assert [row["judge"] for row in rows] == [1, 0, None]


def test_merged_runs_keep_docqa_from_one_run_and_niah_cells_from_later_runs():
    docqa = {
        "lift": {"f1": 0.3, "niah_grid": {"1024@0.0": 0.0}, "niah_accuracy": 0.0, "note": "x"},
        "base": {"f1": 0.0},
    }
    niah_runs = {
        "run1k": {"lift": {"niah_grid": {"1024@0.0": 1.0, "1024@1.0": 0.0}, "niah_train_seconds_per_document": 9.0}},
        "run2k": {"lift": {"niah_grid": {"1024@1.0": 1.0, "2048@0.0": 0.0}}, "icl": {"niah_grid": {"2048@0.0": 1.0}}},
    }
    merged = merge_eval_runs(docqa, niah_runs, "docqa5")
    assert merged["lift"]["f1"] == 0.3
    assert merged["lift"]["niah_grid"] == {"1024@0.0": 1.0, "1024@1.0": 1.0, "2048@0.0": 0.0}
    assert merged["lift"]["niah_accuracy"] == round(2 / 3, 4)
    assert merged["lift"]["niah_train_seconds_per_document"] == 9.0
    assert merged["lift"]["note"].startswith("document QA from run docqa5 (x)") and "run2k" in merged["lift"]["note"]
    assert "niah_grid" not in merged["base"]
    assert merged["icl"]["note"].startswith("document QA not run") and "f1" not in merged["icl"]
    assert set(merged) == {"lift", "base", "icl"}


def test_merged_runs_pass_through_where_adapters_came_from_and_what_icl_read():
    docqa = {
        "lift": {"f1": 0.3, "train_seconds_per_document": None, "adapters_reused": True, "adapters_reused_count": 5},
        "icl": {"f1": 0.2, "context_tokens": 1024, "context_share": 0.25, "context_read_share": 0.2497},
    }
    origin = {"niah_adapters_reused": True, "niah_adapters_reused_count": 3, "niah_adapters_trained_count": 0}
    niah_runs = {
        "run1k": {"lift": {"niah_grid": {"1024@0.0": 1.0}, **origin}},
        "run2k": {
            "lift": {"niah_grid": {"2048@0.0": 1.0}, **origin, "niah_adapters_trained_count": 2},
            "icl": {"niah_grid": {"2048@0.0": 0.0}, "niah_context_share": 0.25},
        },
        "old": {"lift": {"niah_grid": {"4096@0.0": 1.0}}},
    }
    merged = merge_eval_runs(docqa, {name: niah_runs[name] for name in ("run1k", "run2k")}, "docqa")
    lift = merged["lift"]
    assert lift["adapters_reused"] is True and lift["adapters_reused_count"] == 5
    assert lift["train_seconds_per_document"] is None
    assert (lift["niah_adapters_reused"], lift["niah_adapters_reused_count"], lift["niah_adapters_trained_count"]) == (
        True,
        6,
        2,
    )
    assert lift["niah_runs"]["run2k"]["niah_adapters_trained_count"] == 2
    assert merged["icl"]["context_share"] == 0.25 and merged["icl"]["context_read_share"] == 0.2497
    assert (
        merged["icl"]["niah_runs"] == {"run2k": {"niah_context_share": 0.25}}
        and "niah_adapters_reused" not in merged["icl"]
    )
    with_old = merge_eval_runs(docqa, niah_runs, "docqa")["lift"]  # a run from before the counts: unknown
    assert with_old["niah_adapters_reused_count"] is None and with_old["niah_adapters_reused"] is None


def test_training_time_is_per_document_trained_and_none_when_all_were_already_published():
    documents = [Document.from_text(f"doc{i}", "Some text.") for i in range(3)]

    def lift_two_skip_one(docs, config):
        time.sleep(0.3)
        return [
            DocumentReport(d.doc_id, "skipped", timings={"train_s": 99.0})
            if i == 0
            else DocumentReport(d.doc_id, "published", timings={"train_s": float(i), "generate_s": 3.0 * (i - 1)})
            for i, d in enumerate(docs)
        ]

    def skip_all(docs, config):
        return [DocumentReport(d.doc_id, "skipped") for d in docs]

    def fail_one(docs, config):
        return [DocumentReport(docs[0].doc_id, "failed", error="empty document")]

    training = train_adapters(documents, LiftConfig(), lift_two_skip_one)
    seconds = training.seconds_per_document
    assert seconds is not None and 0.15 <= seconds < 1.0  # 0.3 s over the 2 trained, not the 3 asked for
    assert (training.trained, training.reused) == (2, 1)
    # stage means over the trained documents only (the skipped one's 99 s is not a cost of this run);
    # generate_s, one batch's wall time shared by the documents generated together, is left out
    assert training.stage_seconds == {"train_s": 1.5}
    assert training.figures()["stage_seconds_per_document"] == {"train_s": 1.5}
    assert train_adapters(documents, LiftConfig(), skip_all) == Training(None, 0, 3)
    flagged = train_adapters(
        documents, LiftConfig(), lambda docs, config: [DocumentReport(docs[0].doc_id, "low_quality")]
    )
    assert (flagged.trained, flagged.reused) == (1, 0) and flagged.seconds_per_document is not None
    with pytest.raises(RuntimeError, match="empty document"):
        train_adapters(documents, LiftConfig(), fail_one)


def test_pearson_and_the_gate_agreement_read_from_manifests(tmp_path):
    from lift_ray.config import LiftConfig, load_config
    from lift_ray.documents import Document
    from lift_ray.eval.runner import gate_agreement, pearson
    from lift_ray.layout import MANIFEST_NAME, document_prefix
    from lift_ray.storage import Store

    assert pearson([(0, 0), (1, 1), (2, 2)]) == 1.0 and pearson([(0, 2), (1, 1), (2, 0)]) == -1.0
    assert pearson([(0, 1), (1, 1)]) is None and pearson([(1, 0), (1, 1), (1, 2)]) is None
    config = load_config(LiftConfig, None, [f"storage.root={tmp_path}", "storage.namespace=eval-lift"])
    store = Store.from_uri(str(tmp_path))
    for doc_id, score in (("a", 0.2), ("b", 0.5), ("c", 0.9)):
        manifest = {"doc_id": doc_id, "quality": {"holdout_score": score}}
        store.write_json(f"{document_prefix('eval-lift', doc_id)}/{MANIFEST_NAME}", manifest)
    documents = {d: Document.from_text(d, "text") for d in ("a", "b", "c", "d")}
    rows = [{"doc_id": d, "contains": c} for d, c in (("a", 0.0), ("a", 0.5), ("b", 0.5), ("c", 1.0), ("d", 1.0))]
    gate = gate_agreement(config, documents, rows)
    assert gate["per_document"]["a"] == {"holdout_score": 0.2, "holdout_pairs": None, "contains": 0.25}
    assert gate["per_document"]["d"]["holdout_score"] is None  # no manifest: left out of the correlation
    assert gate["pearson"] == pearson([(0.2, 0.25), (0.5, 0.5), (0.9, 1.0)]) and gate["pearson"] > 0.95


def test_qa_coverage_counts_questions_whose_answer_some_pair_teaches(tmp_path):
    from lift_ray.config import LiftConfig, load_config
    from lift_ray.documents import Document
    from lift_ray.eval.runner import qa_coverage
    from lift_ray.layout import qa_cache_path
    from lift_ray.storage import Store, write_json_lines

    config = load_config(LiftConfig, None, [f"storage.root={tmp_path}", "storage.namespace=eval-lift"])
    documents = {d: Document.from_text(d, f"text of {d}") for d in ("a", "b")}
    pairs = [{"question": "Who built it?", "answer": "Edda Pellworth"}, {"question": "When?", "answer": "in 1871"}]
    write_json_lines(
        Store.from_uri(str(tmp_path)),
        qa_cache_path("eval-lift", documents["a"], config),
        [{"sentence_index": 0, "qa_json": json.dumps(pairs)}],
    )
    rows = [
        {"doc_id": "a", "answers": ["Edda Pellworth"], "contains": 1.0},
        {"doc_id": "a", "answers": ["1871", "the year 1871"], "contains": 0.0},
        {"doc_id": "a", "answers": ["Pell"], "contains": 0.0},  # not a whole word of any answer
        {"doc_id": "b", "answers": ["anything"], "contains": 1.0},  # no QA cache: left out
    ]
    assert qa_coverage(config, documents, rows) == {"in_generated_qa": 0.6667, "right_when_in_qa": 0.5, "questions": 3}
    assert qa_coverage(config, {"b": documents["b"]}, rows)["in_generated_qa"] is None
