"""Evaluation harness: data loading, the methods compared, answering, scoring, the judge prompt, results.

Plain functions, no Ray: `lift_ray/eval/runner.py` strings them together with the LIFT pipeline.
The methods follow the LIFT paper (arXiv 2412.13626): the base model without the document, truncated ICL,
Finetune-Raw, LIFT with 5 and 10 QA pairs per sentence, and LIFT plus truncated ICL (Appendix, Table 10).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lift_ray.config import PLAIN_QA_TRAINING, SENTENCE_ANSWERS_PROMPT
from lift_ray.documents import Document, read_document_file, validate_doc_id
from lift_ray.metrics import best_score, normalize_answer
from lift_ray.results import markdown_table, write_results

DATA_DIR = Path(__file__).resolve().parent / "data"
DOCQA_DIR = DATA_DIR / "docqa"
QUESTIONS_FILE = "questions.jsonl"
GENERAL_FILE = "general.jsonl"
QUESTION_KINDS = ("direct", "paraphrase")
CUT_MARKER = "\n\n[... middle of the document left out ...]\n\n"
CONTEXT_PROMPT = (
    "Here is a document.\n\n{context}\n\nAnswer the question about the document briefly.\nQuestion: {question}"
)
RESULT_FIELDS = ("exact_match", "f1", "niah_accuracy", "seconds_per_document", "peak_memory_mb")


@dataclass(frozen=True)
class Question:
    """One evaluation question with its gold answers (`answers[0]` is the span as the document writes it)."""

    id: str
    doc_id: str | None
    question: str
    answers: tuple[str, ...]
    kind: str  # direct | paraphrase | general | niah


@dataclass(frozen=True)
class Method:
    """One way of answering: with or without an adapter, with or without the document in the prompt."""

    name: str
    description: str
    adapter: str | None  # the method whose adapter answers (None: the base model)
    context: bool  # the document, truncated to the context budget, goes in the prompt
    lift_overrides: tuple[str, ...] = ()  # LiftConfig overrides that train `adapter`
    # "adapter" or "base": the adapter first recites the document's sentence for the question (under the
    # sentence-answer prompt it was trained with), then this model answers reading that sentence; "self": the
    # recital ends with its own answer line (train.sentence_answers_with_answer), one pass
    recite: str | None = None

    @property
    def namespace(self) -> str | None:
        """Store namespace of the adapters this method answers with (one per trained variant)."""
        return None if self.adapter is None else validate_doc_id(f"eval-{self.adapter}", "namespace")


# The paper's recipe (plain QA training) with m = 5 and one QA cache shared by every method trained on it.
_LIFT_5 = ("train.variant=lift", "generator.qa_per_sentence=5", "storage.qa_namespace=eval-lift", *PLAIN_QA_TRAINING)
# m = 10, its own QA cache (shared by the methods trained on it).
_LIFT_10 = (
    "train.variant=lift",
    "generator.qa_per_sentence=10",
    "storage.qa_namespace=eval-lift-10qa",
    *PLAIN_QA_TRAINING,
)
_SENTENCE_ANSWERS = (
    "train.objective=sft",
    "train.sentence_answers=true",
    f"train.sentence_answers_prompt={json.dumps(SENTENCE_ANSWERS_PROMPT)}",
)
_LIFT_SENTENCES = (*_LIFT_5, *_SENTENCE_ANSWERS)
_RECITE_ANSWER = (*_SENTENCE_ANSWERS, "train.sentence_answers_with_answer=true")
# m = 5 with every question also reworded once by the generator: its own QA cache (the pairs' key changes).
_LIFT_5_REWRITES = (
    "train.variant=lift",
    "generator.qa_per_sentence=5",
    "generator.question_rewrites=1",
    "storage.qa_namespace=eval-lift-rewrites",
    *PLAIN_QA_TRAINING,
)
METHODS: tuple[Method, ...] = (
    Method("base", "base model, question only (what the model knows without the document)", None, False),
    Method("icl", "base model with the document in the prompt, head and tail kept to fit (truncated ICL)", None, True),
    Method(
        "finetune_raw",
        "adapter trained on overlapping raw segments of the document (Finetune-Raw); question only",
        "finetune_raw",
        False,
        ("train.variant=finetune_raw", *PLAIN_QA_TRAINING),
    ),
    Method(
        "lift",
        "LIFT adapter, m=5 QA pairs per sentence, trained as the paper does (sft); question only",
        "lift",
        False,
        (*_LIFT_5, "train.objective=sft"),
    ),
    Method(
        "lift_distill",
        "LIFT adapter on the same QA, distilled from the base model reading each sentence's paragraph; question only",
        "lift_distill",
        False,
        (*_LIFT_5, "train.objective=distill"),
    ),
    Method(
        "lift_sft_distill",
        "LIFT adapter on the same QA, cross-entropy plus distillation (train.objective=sft+distill); question only",
        "lift_sft_distill",
        False,
        (*_LIFT_5, "train.objective=sft+distill"),
    ),
    Method(
        "lift_sentences",
        "LIFT adapter on the same QA, every question also answered by its whole sentence under a prompt of its own "
        "(train.sentence_answers_prompt); question only",
        "lift_sentences",
        False,
        _LIFT_SENTENCES,
    ),
    Method(
        "lift_recite",
        "the `lift_sentences` adapter recites the sentence for the question, then answers reading it",
        "lift_sentences",
        False,
        _LIFT_SENTENCES,
        recite="adapter",
    ),
    Method(
        "lift_recite_base",
        "the `lift_sentences` adapter recites the sentence for the question, then the base model answers reading it",
        "lift_sentences",
        False,
        _LIFT_SENTENCES,
        recite="base",
    ),
    Method(
        "lift_recite_answer",
        "LIFT adapter on the same QA taught to say the question's sentence, then 'Answer: <short answer>' (under the "
        "sentence-answer prompt), and asked that way; question only",
        "lift_recite_answer",
        False,
        (*_LIFT_5, *_RECITE_ANSWER),
        recite="self",
    ),
    Method(
        "lift_recite_rewrites",
        "the `lift_recite_answer` recipe with every generated question also reworded once by the generator "
        "(generator.question_rewrites=1), each rewording taught to recite its pair's sentence and answer; asked by "
        "reciting; question only",
        "lift_recite_rewrites",
        False,
        (*_LIFT_5_REWRITES, *_RECITE_ANSWER),
        recite="self",
    ),
    Method(
        "lift_recite_offdoc",
        "the `lift_recite_answer` recipe plus general prompts taught to recite 'The document does not say.' "
        "(train.off_document_examples=16); such a recital hands the question to the base model; question only",
        "lift_recite_offdoc",
        False,
        (*_LIFT_5, *_RECITE_ANSWER, "train.off_document_examples=16"),
        recite="self",
    ),
    Method(
        "lift_10qa",
        "LIFT adapter, m=10 QA pairs per sentence; question only",
        "lift_10qa",
        False,
        _LIFT_10,
    ),
    Method(
        "lift_recite_answer_10qa",
        "the `lift_recite_answer` recipe on m=10 QA pairs per sentence (the `lift_10qa` QA), asked by reciting; "
        "question only",
        "lift_recite_answer_10qa",
        False,
        (*_LIFT_10, *_RECITE_ANSWER),
        recite="self",
    ),
    Method(
        "lift_icl",
        "the `lift` adapter plus the truncated document in the prompt",
        "lift",
        True,
        (*_LIFT_5, "train.objective=sft"),
    ),
)
METHOD_NAMES: tuple[str, ...] = tuple(method.name for method in METHODS)


def get_method(name: str) -> Method:
    """The method called `name`, or ValueError listing the known ones."""
    for method in METHODS:
        if method.name == name:
            return method
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}")


# ---------------------------------------------------------------- data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
    return rows


def _question(row: dict[str, Any], where: str, kind: str | None = None) -> Question:
    answers = row.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: `answers` must be a non-empty list of non-empty strings")
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        raise ValueError(f"{where}: `question` is missing or empty")
    return Question(
        id=str(row.get("id") or where),
        doc_id=row.get("doc_id"),
        question=row["question"],
        answers=tuple(answers),
        kind=kind or str(row.get("kind")),
    )


def load_docqa(path: str | Path = DOCQA_DIR) -> tuple[dict[str, Document], list[Question]]:
    """The documents (`<doc_id>.txt`) and questions (`questions.jsonl`) of a document-QA folder.

    Raises ValueError for a bad id, a question about a missing document, an unknown kind or a duplicate id.
    """
    folder = Path(path)
    documents = {doc.doc_id: doc for doc in map(read_document_file, sorted(folder.glob("*.txt")))}
    questions: list[Question] = []
    seen: set[str] = set()
    for number, row in enumerate(_read_jsonl(folder / QUESTIONS_FILE), 1):
        question = _question(row, f"{folder / QUESTIONS_FILE}:{number}")
        where = f"question {question.id!r}"
        if question.doc_id is None or validate_doc_id(question.doc_id) not in documents:
            raise ValueError(f"{where}: document {question.doc_id!r} is not in {folder}")
        if question.kind not in QUESTION_KINDS:
            raise ValueError(f"{where}: kind must be one of {QUESTION_KINDS}, got {question.kind!r}")
        if question.id in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(question.id)
        questions.append(question)
    return documents, questions


def load_general(path: str | Path = DOCQA_DIR / GENERAL_FILE) -> list[Question]:
    """General-knowledge questions (no document), for measuring what an adapter costs the base model."""
    path = Path(path)
    return [_question(row, f"{path}:{n}", kind="general") for n, row in enumerate(_read_jsonl(path), 1)]


# ---------------------------------------------------------------- context


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncated_context(text: str, tokenizer: Any, max_tokens: int, marker: str = CUT_MARKER) -> str:
    """`text` if it fits in `max_tokens`, else its first and last tokens (half the budget each) with
    `marker` where the middle was cut: the truncated-ICL baseline keeps both ends of the document."""
    ids = _token_ids(tokenizer, text)
    if len(ids) <= max_tokens:
        return text
    budget = max_tokens - len(_token_ids(tokenizer, marker))
    if budget < 2:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for the document around the cut marker")
    while budget >= 2:
        head_tokens = budget // 2
        head = tokenizer.decode(ids[:head_tokens], skip_special_tokens=True)
        tail = tokenizer.decode(ids[len(ids) - (budget - head_tokens) :], skip_special_tokens=True)
        truncated = head.rstrip() + marker + tail.lstrip()
        if len(_token_ids(tokenizer, truncated)) <= max_tokens:
            return truncated
        budget -= 2  # the joins tokenised longer than the parts: trim and try again
    raise ValueError(f"could not fit the document into {max_tokens} tokens")


def context_budget(document_tokens: int, max_tokens: int, share: float | None = None) -> int:
    """Tokens of a document of `document_tokens` that an ICL prompt may hold: `max_tokens`, and with a
    `share` (0 < share <= 1) at most that share of the document, rounded down (the paper's long-document
    setting, where ICL reads only part of each document)."""
    if share is None:
        return max_tokens
    if not 0 < share <= 1:
        raise ValueError(f"the context share must be in (0, 1], got {share}")
    return min(max_tokens, math.floor(share * document_tokens + 1e-9))


def budgeted_context(text: str, tokenizer: Any, max_tokens: int, share: float | None = None) -> tuple[str, int, int]:
    """`truncated_context` of `text` within its `context_budget`; with the document's tokens and the tokens
    of it that the budget lets through (at most the document's own)."""
    document_tokens = len(_token_ids(tokenizer, text))
    budget = context_budget(document_tokens, max_tokens, share)
    return truncated_context(text, tokenizer, budget), document_tokens, min(budget, document_tokens)


# ---------------------------------------------------------------- answering


class ChatModel(Protocol):
    """What `answer_questions` needs: `lift_ray.eval.answerer.EvalChatModel` has it (and `chat_batch`, which
    `answer_questions` uses when a model has it)."""

    loaded: set[str]

    def load_adapter(self, doc_id: str) -> float: ...

    def chat(
        self, messages: list[dict[str, str]], doc_id: str | None, max_new_tokens: int, temperature: float = 0.0
    ) -> Any: ...


def build_messages(question: str, context: str | None) -> list[dict[str, str]]:
    """The user turn: the bare question (as LIFT trains on it), or the document followed by the question."""
    content = question if context is None else CONTEXT_PROMPT.format(context=context, question=question)
    return [{"role": "user", "content": content}]


def answer_by_reciting(
    chat_model: ChatModel,
    doc_id: str,
    questions: Sequence[Question],
    recite_prompt: str,
    reader: str,
    recite_tokens: int,
    max_new_tokens: int,
    off_document: bool = False,
) -> list[dict[str, Any]]:
    """Recite, then answer: the adapter of `doc_id` answers each question with the document's sentence (under
    `recite_prompt`, the system prompt its sentence answers were trained with), then `reader` ("adapter" or
    "base") answers the question reading that sentence; with `reader="self"` the recital ends with its own
    answer line (`recited_answer`), one pass of up to `recite_tokens + max_new_tokens`. With `off_document`
    (adapters trained with `train.off_document_examples`), a recital that says the document does not answer
    hands the question to the base model, asked plainly, as the endpoint does. Rows as `answer_questions`, plus
    `recited`; token counts and seconds are both passes'."""
    from lift_ray.train.dataset import recited_answer, says_off_document

    if reader not in ("adapter", "base", "self"):
        raise ValueError(f"reader must be 'adapter', 'base' or 'self', got {reader!r}")
    if not recite_prompt:
        raise ValueError(
            "reciting needs adapters trained with train.sentence_answers and train.sentence_answers_prompt"
        )
    started = time.perf_counter()
    if doc_id not in chat_model.loaded:
        chat_model.load_adapter(doc_id)
    recite_conversations = [
        [{"role": "system", "content": recite_prompt}, {"role": "user", "content": q.question}] for q in questions
    ]
    recite_tokens += max_new_tokens if reader == "self" else 0
    recited = _chat_all(chat_model, recite_conversations, doc_id, recite_tokens)
    off = [off_document and says_off_document(r.text) for r in recited]
    # The second pass: the base model asked plainly where the recital is off the document, else the reader.
    second = [
        (i, build_messages(q.question, None), None)
        if off[i]
        else (i, build_messages(q.question, recited[i].text), doc_id if reader == "adapter" else None)
        for i, q in enumerate(questions)
        if off[i] or reader != "self"
    ]
    replies: dict[int, Any] = {}
    for model in {entry[2] for entry in second}:
        asked = [(i, messages) for i, messages, m in second if m == model]
        for (i, _), reply in zip(
            asked, _chat_all(chat_model, [m for _, m in asked], model, max_new_tokens), strict=True
        ):
            replies[i] = reply
    seconds = round((time.perf_counter() - started) / max(1, len(questions)), 4)
    rows = []
    for i, (question, recital) in enumerate(zip(questions, recited, strict=True)):
        reply = replies.get(i)
        recital_text, answer = recited_answer(recital.text) if reader == "self" else (recital.text, "")
        rows.append(
            {
                "id": question.id,
                "prediction": reply.text if reply is not None else answer,
                "recited": recital_text,
                "prompt_tokens": recital.prompt_tokens + (reply.prompt_tokens if reply is not None else 0),
                "completion_tokens": recital.completion_tokens + (reply.completion_tokens if reply is not None else 0),
                "seconds": seconds,
            }
        )
    return rows


def _chat_all(
    chat_model: ChatModel, conversations: list[list[dict[str, str]]], doc_id: str | None, tokens: int
) -> list:
    chat_batch = getattr(chat_model, "chat_batch", None)
    if chat_batch is not None:
        return chat_batch(conversations, doc_id, tokens)
    return [chat_model.chat(messages, doc_id, tokens, 0.0) for messages in conversations]


def answer_questions(
    chat_model: ChatModel,
    doc_id: str | None,
    questions: Sequence[Question],
    context: str | None,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """Ask every question, greedily, with the adapter of `doc_id` (None: the base model), the document
    `context` in the prompt or not; one row per question: id, prediction, token counts, seconds (a batched
    model's time is shared out evenly over its questions)."""
    if doc_id is not None and doc_id not in chat_model.loaded:
        chat_model.load_adapter(doc_id)
    conversations = [build_messages(question.question, context) for question in questions]
    started = time.perf_counter()
    replies = _chat_all(chat_model, conversations, doc_id, max_new_tokens)
    seconds = round((time.perf_counter() - started) / max(1, len(questions)), 4)
    return [
        {
            "id": question.id,
            "prediction": reply.text,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "seconds": seconds,
        }
        for question, reply in zip(questions, replies, strict=True)
    ]


# ---------------------------------------------------------------- scoring


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a normalised gold answer appears as whole words in the normalised prediction (lenient:
    small models answer in sentences, which exact match scores as 0)."""
    text = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in text for g in golds if normalize_answer(g)))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_answers(predictions: Sequence[str], questions: Sequence[Question]) -> dict[str, Any]:
    """Exact match, token F1 (best over gold variants, `lift_ray.metrics`) and `contains`, averaged over
    all questions and per kind, with a row per question."""
    if len(predictions) != len(questions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    per_question = []
    for prediction, question in zip(predictions, questions, strict=True):
        em, f1 = best_score(prediction, list(question.answers))
        per_question.append(
            {
                "id": question.id,
                "doc_id": question.doc_id,
                "kind": question.kind,
                "question": question.question,
                "answers": list(question.answers),
                "prediction": prediction,
                "exact_match": em,
                "f1": f1,
                "contains": contains_answer(prediction, question.answers),
            }
        )

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "exact_match": _mean([r["exact_match"] for r in rows]),
            "f1": _mean([r["f1"] for r in rows]),
            "contains": _mean([r["contains"] for r in rows]),
            "count": len(rows),
        }

    kinds = sorted({row["kind"] for row in per_question})
    by_kind = {kind: summary([r for r in per_question if r["kind"] == kind]) for kind in kinds}
    return {**summary(per_question), "by_kind": by_kind, "per_question": per_question}


# ---------------------------------------------------------------- LLM judge (paper, Appendix C)

_JUDGE_TEMPLATE = """You are grading an answer to a question. You get the question, the correct answer \
(ground truth) and a model's predicted answer. Decide whether the prediction means the same as the ground \
truth: wording, length and format do not matter, only whether the meaning agrees. Reply with one word only: \
True if they agree, False if they do not.

Question: {question}
Ground truth: {gold}
Predicted answer: {prediction}"""
_VERDICT = re.compile(r"\b(true|false|yes|no)\b")


def llm_judge_prompt(question: str, gold: str | Sequence[str], prediction: str) -> str:
    """The judge prompt (the paper's GPT-4 score prompt, Appendix C, in our words); several gold variants
    are joined with " / "."""
    gold_text = gold if isinstance(gold, str) else " / ".join(gold)
    return _JUDGE_TEMPLATE.format(question=question.strip(), gold=gold_text.strip(), prediction=prediction.strip())


def parse_judge_score(text: str) -> int | None:
    """1 for a True/yes verdict, 0 for False/no, None when the reply gives none or both.

    The first word decides when it is a verdict ("False. It is not true that ..." is 0); otherwise the
    verdict words in the reply must all agree.
    """
    words = _VERDICT.findall(text.lower())
    if not words:
        return None
    first = re.match(r"[\W_]*(\w+)", text.lower())
    if first and first.group(1) in {"true", "false", "yes", "no"}:
        return int(first.group(1) in {"true", "yes"})
    verdicts = {word in {"true", "yes"} for word in words}
    return int(verdicts.pop()) if len(verdicts) == 1 else None


def judge_answers(per_question: list[dict[str, Any]], judge: Any, max_new_tokens: int = 8) -> dict[str, Any]:
    """Ask an LLM judge whether each prediction means its gold answer (paper, Appendix C).

    `judge` is a ChatEngine (`OpenAIChatEngine` for any OpenAI-compatible endpoint). Each row gets `judge`:
    1, 0, or None when the reply had no verdict or the request failed; the summary is `judge_score` (mean
    over the rows with a verdict) and `judge_unparsed` (rows without one), so a judge that cannot follow
    the prompt shows up as unparsed, not as wrong answers.
    """
    from lift_ray.engines import SamplingSettings

    conversations = [
        [{"role": "user", "content": llm_judge_prompt(row["question"], row["answers"], row["prediction"])}]
        for row in per_question
    ]
    replies = judge.generate(conversations, SamplingSettings(max_new_tokens=max_new_tokens)) if conversations else []
    for row, reply in zip(per_question, replies, strict=True):
        row["judge"] = parse_judge_score(reply.text) if reply.error is None else None
    verdicts = [row["judge"] for row in per_question if row["judge"] is not None]
    return {"judge_score": _mean(verdicts), "judge_unparsed": len(per_question) - len(verdicts)}


# ---------------------------------------------------------------- results


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def eval_results(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One entry per method in `METHOD_NAMES` with every field of `RESULT_FIELDS` (None where not measured,
    or the method was not run) plus any extra figures given; ValueError for an unknown method."""
    unknown = sorted(set(results) - set(METHOD_NAMES))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHOD_NAMES)}")
    table: dict[str, dict[str, Any]] = {}
    for name in METHOD_NAMES:
        given = dict(results.get(name, {}))
        if name not in results:
            given["note"] = "not run in this evaluation"
        table[name] = {field: _clean(given.pop(field, None)) for field in RESULT_FIELDS}
        table[name].update({key: _clean(value) for key, value in given.items()})
    return table


def write_eval_results(results: Mapping[str, Mapping[str, Any]], name: str = "eval") -> Path:
    """Write docs/results/<name>.json (`lift_ray.results.write_results`): one key per method (`eval_results`)."""
    return write_results(name, eval_results(results))


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The results as a markdown table, one row per method ("-" where not measured); with a column for the
    share of the documents ICL could read when a method records it (`context_read_share`)."""
    table = eval_results(results)
    fields = list(RESULT_FIELDS)
    if any(entry.get("context_read_share") is not None for entry in table.values()):
        fields.append("context_read_share")
    rows = [[name, *("-" if table[name].get(f) is None else table[name][f] for f in fields)] for name in table]
    return markdown_table(["method", *fields], rows)


def _draw_heatmap(axis: Any, grid: Mapping[tuple[int, float], float], title: str) -> Any:
    import matplotlib
    import numpy as np

    if not grid:
        raise ValueError("the NIAH grid is empty")
    lengths = sorted({length for length, _ in grid})
    depths = sorted({depth for _, depth in grid})
    values = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), accuracy in grid.items():
        values[depths.index(depth), lengths.index(length)] = accuracy
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for row, column in np.ndindex(values.shape):
        if not np.isnan(values[row, column]):
            axis.text(column, row, f"{values[row, column]:.2f}", ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(lengths)), [str(length) for length in lengths])
    axis.set_yticks(range(len(depths)), [f"{round(depth * 100)}%" for depth in depths])
    axis.set(xlabel="document length (tokens)", ylabel="needle depth", title=title)
    return image


def plot_niah_heatmap(
    grid: Mapping[tuple[int, float], float], out_png: str | Path, title: str = "NIAH accuracy"
) -> Path:
    """A heatmap of accuracy per (length in tokens, depth 0..1) cell, lengths across and depths down
    (the paper's Figure 5); missing cells are grey."""
    return plot_niah_grids({title: grid}, out_png)


def plot_niah_grids(grids: Mapping[str, Mapping[tuple[int, float], float]], out_png: str | Path) -> Path:
    """One NIAH heatmap per entry of `grids` (title → grid), side by side, sharing one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grids:
        raise ValueError("no NIAH grid to plot")
    columns = max(len({length for length, _ in grid}) for grid in grids.values())
    rows = max(len({depth for _, depth in grid}) for grid in grids.values())
    fig, axes = plt.subplots(
        1,
        len(grids),
        figsize=(len(grids) * (1.2 * columns + 2.0) + 1.0, 0.6 * rows + 1.8),
        squeeze=False,
        gridspec_kw={"wspace": 0.6},
    )
    for axis, (title, grid) in zip(axes[0], grids.items(), strict=True):
        image = _draw_heatmap(axis, grid, title)
    fig.colorbar(image, ax=list(axes[0]), label="accuracy")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_scores(results: Mapping[str, Mapping[str, Any]], out_png: str | Path, title: str = "Document QA") -> Path:
    """Bars of exact match, F1 and `contains` per method that was run, with each method's cost (seconds per
    document) written under its name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [name for name in METHOD_NAMES if results.get(name, {}).get("f1") is not None]
    if not names:
        raise ValueError("no method with scores to plot")
    metrics = ("exact_match", "f1", "contains")
    positions = np.arange(len(names))
    fig, axis = plt.subplots(figsize=(1.4 * len(names) + 2.5, 4.2))
    for offset, metric in enumerate(metrics):
        values = [results[name].get(metric) or 0.0 for name in names]
        bars = axis.bar(positions + (offset - 1) * 0.27, values, 0.27, label=metric)
        axis.bar_label(bars, fmt="%.2f", fontsize=7)

    def cost(name: str) -> str:
        seconds = results[name].get("seconds_per_document")
        return f"{name}\n{seconds:.0f} s/doc" if seconds is not None else f"{name}\n(cost n/a)"

    axis.set_xticks(positions, [cost(name) for name in names], fontsize=8)
    axis.set(ylim=(0, 1.05), ylabel="score", title=title)
    axis.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


class MemoryPeak:
    """Context manager sampling the resident memory of this process and all its children (Ray's local
    workers are its grandchildren) every `interval_s`; `peak_mb` is the highest sum seen. Shared pages count
    once per process, so the figure is an upper bound."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _total_mb(self) -> float:
        import psutil

        me = psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker that exited between listing and reading
                continue
        return total / 2**20

    def _sample(self) -> None:
        while True:
            self.peak_mb = round(max(self.peak_mb or 0.0, self._total_mb()), 1)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peak_gpu_memory_mb() -> float | None:
    """Peak CUDA memory allocated by this process since the last reset, in MB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak_gpu_memory() -> None:
    """Start a new peak for `peak_gpu_memory_mb` (does nothing without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
