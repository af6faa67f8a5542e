"""The evaluation run: train each method's adapters, answer the questions, score, write docs/results/eval.json.

`run_eval` takes an `EvalConfig` (lift_ray/eval/config.py), and the LIFT step and the chat model as arguments
(defaults: `lift_ray.pipeline.lift_documents` and `lift_ray.eval.answerer.EvalChatModel`), so its bookkeeping is
tested without Ray or a model.
`add_eval_arguments` / `eval_command` are the `lift-ray eval` subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lift_ray.config import LiftConfig, ServeConfig, add_config_arguments, load_config, override_config
from lift_ray.documents import Document
from lift_ray.eval import niah
from lift_ray.eval.config import EvalConfig, JudgeSettings, NiahSettings
from lift_ray.eval.harness import (
    GENERAL_FILE,
    METHOD_NAMES,
    ChatModel,
    MemoryPeak,
    Method,
    Question,
    answer_by_reciting,
    answer_questions,
    budgeted_context,
    contains_answer,
    judge_answers,
    load_docqa,
    load_general,
    peak_gpu_memory_mb,
    plot_niah_grids,
    plot_scores,
    reset_peak_gpu_memory,
    results_table,
    score_answers,
    write_eval_results,
)
from lift_ray.report import DocumentReport
from lift_ray.results import RESULTS_DIR, markdown_table, write_results

log = logging.getLogger(__name__)

LiftFn = Callable[[list[Document], LiftConfig], list[DocumentReport]]
ChatModelFactory = Callable[[ServeConfig], ChatModel]
TRAINED_STATUSES = ("published", "low_quality")  # trained in this run (low_quality: published, flagged)


def method_config(method: Method, config: LiftConfig | None = None, overrides: Sequence[str] = ()) -> LiftConfig:
    """The LiftConfig that trains `method`'s adapter: `config` (default: the defaults) with `overrides`, then
    the method's own settings and its storage namespace (`eval-<adapter>`), which win."""
    namespace = method.namespace or "eval-base"
    settings = [*overrides, *method.lift_overrides, f"storage.namespace={namespace}"]
    return override_config(config or LiftConfig(), settings, source=f"method {method.name}")


def niah_config(config: LiftConfig) -> LiftConfig:
    """`config` with the generator's NIAH prompt preset, for LIFTing haystacks.

    The sentence cache is on: haystacks of one length differ only around the needle, so their shared
    sentences are generated once for every depth and instance that repeats them."""
    adjusted = config.model_copy(deep=True)
    adjusted.generator.preset = "niah"
    adjusted.generator.sentence_cache = True
    return adjusted


@dataclass(frozen=True)
class Training:
    """What one LIFT step did: seconds per document it trained (None when it trained none, so there is no
    time to report), the adapters it trained, those it reused (already published with the same config
    by an earlier run), and the mean of each stage's time over the trained documents' reports."""

    seconds_per_document: float | None
    trained: int
    reused: int
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def figures(self, prefix: str = "") -> dict[str, Any]:
        """The results fields saying where the adapters came from: `adapters_reused` (any reused),
        `adapters_reused_count`, `adapters_trained_count` (trained in this run), and `stage_seconds_per_document`
        (`mean_stage_seconds`), each after `prefix`."""
        return {
            f"{prefix}adapters_reused": self.reused > 0,
            f"{prefix}adapters_reused_count": self.reused,
            f"{prefix}adapters_trained_count": self.trained,
            f"{prefix}stage_seconds_per_document": self.stage_seconds,
        }


def train_adapters(documents: list[Document], config: LiftConfig, lift_fn: LiftFn) -> Training:
    """LIFT `documents` with `config`: the seconds per document trained in this call (None when every one
    was skipped: already published, no time to report) and how many were trained and reused.
    RuntimeError naming the documents that failed."""
    started = time.perf_counter()
    reports = lift_fn(documents, config)
    elapsed = time.perf_counter() - started
    failed = {r.doc_id: r.error for r in reports if r.status == "failed"}
    if failed:
        raise RuntimeError(f"LIFT failed for {len(failed)} documents: {failed}")
    trained = sum(r.status in TRAINED_STATUSES for r in reports)
    reused = sum(r.status == "skipped" for r in reports)
    if reused:
        log.info("%d of %d documents were already published; timing the %d trained", reused, len(reports), trained)
    return Training(
        round(elapsed / trained, 2) if trained else None,
        trained,
        reused,
        mean_stage_seconds([r for r in reports if r.status in TRAINED_STATUSES]),
    )


def mean_stage_seconds(reports: Sequence[DocumentReport]) -> dict[str, float]:
    """Each per-document stage time the reports carry (`pipeline.TIMING_NAMES`: train_s, compute_s, ...),
    averaged over the reports that carry it (seconds, 2 decimals). Generation is left out: documents
    generated together share one `generate_s`, the batch's wall time, which is no cost per document."""
    from lift_ray.pipeline import TIMING_NAMES

    names = sorted({name for report in reports for name in report.timings if name in TIMING_NAMES})
    means = {}
    for name in names:
        values = [report.timings[name] for report in reports if name in report.timings]
        means[name] = round(sum(values) / len(values), 2)
    return means


def build_niah_documents(
    lengths: Sequence[int],
    depths: Sequence[float],
    instances: int,
    tokenizer: Any,
    needles: Sequence[niah.Needle] = (niah.PAPER_NEEDLE,),
) -> dict[tuple[str, int, float, int], Document]:
    """One haystack per (needle, length, depth, instance); instances start in different essays."""
    essays = niah.load_paul_graham_essays()
    documents = {}
    for needle in needles:
        for length in lengths:
            for depth in depths:
                for instance in range(instances):
                    text = niah.build_haystack(
                        essays,
                        length,
                        depth,
                        tokenizer,
                        needle=needle.text,
                        offset_chars=instance * len(essays) // max(1, instances),
                    )
                    doc_id = niah.niah_doc_id(length, depth, instance, needle.name)
                    documents[(needle.name, length, depth, instance)] = Document.from_text(doc_id, text)
    return documents


def method_context(method: Method, text: str, tokenizer: Any, config: EvalConfig) -> str | None:
    """The document as `method` reads it in its prompt: None for methods without the document, else cut to
    the ICL budget (`context_tokens`, and `context_share` of the document when set)."""
    if not method.context:
        return None
    return budgeted_context(text, tokenizer, config.context_tokens, config.context_share)[0]


def context_figures(texts: Sequence[str], tokenizer: Any, config: EvalConfig, prefix: str = "") -> dict[str, Any]:
    """What an ICL method could read: the budget (`context_tokens`, `context_share`) and `context_read_share`,
    the document tokens its prompts could hold over all the documents' tokens."""
    counts = [budgeted_context(text, tokenizer, config.context_tokens, config.context_share)[1:] for text in texts]
    total = sum(document_tokens for document_tokens, _ in counts)
    return {
        f"{prefix}context_tokens": config.context_tokens,
        f"{prefix}context_share": config.context_share,
        f"{prefix}context_read_share": round(sum(read for _, read in counts) / total, 4) if total else None,
    }


def _answer_document(
    chat_model: ChatModel,
    method: Method,
    document: Document,
    questions: list[Question],
    tokenizer: Any,
    config: EvalConfig,
) -> list[dict[str, Any]]:
    """`method`'s answers to `questions` about `document` (its adapter loaded, then unloaded)."""
    adapter = document.doc_id if method.adapter is not None else None
    rows = method_answers(chat_model, method, document, questions, tokenizer, config)
    if adapter is not None and hasattr(chat_model, "unload_adapter"):
        chat_model.unload_adapter(adapter)
    return rows


def method_answers(
    chat_model: ChatModel,
    method: Method,
    document: Document,
    questions: Sequence[Question],
    tokenizer: Any,
    config: EvalConfig,
) -> list[dict[str, Any]]:
    """`method`'s answers to `questions` about `document`: with its adapter or not, the document in the prompt
    or not, or (`method.recite`) recited by the adapter under its sentence-answer prompt, then answered."""
    adapter = document.doc_id if method.adapter is not None else None
    if method.recite:
        if adapter is None:
            raise ValueError(f"method {method.name} recites, so it needs an adapter")
        settings = method_config(method, config.lift).recite_settings() or {}
        return answer_by_reciting(
            chat_model,
            adapter,
            questions,
            settings.get("prompt", ""),
            method.recite,
            config.recite_max_new_tokens,
            config.max_new_tokens,
            off_document="off_document" in settings,
        )
    context = method_context(method, document.text, tokenizer, config)
    return answer_questions(chat_model, adapter, questions, context, config.max_new_tokens)


def changed_settings(config: BaseModel, default: BaseModel) -> dict[str, Any]:
    """The settings of `config` that differ from `default`, as dotted keys (`train.epochs`) with their values:
    what a method's adapters were trained with beyond the defaults, recorded beside its figures."""
    changed: dict[str, Any] = {}
    ours, theirs = config.model_dump(mode="json"), default.model_dump(mode="json")

    def walk(mine: Any, base: Any, prefix: str) -> None:
        if isinstance(mine, dict) and isinstance(base, dict):
            for key, value in mine.items():
                walk(value, base.get(key), f"{prefix}{key}.")
        elif mine != base:
            changed[prefix.rstrip(".")] = mine

    walk(ours, theirs, "")
    return changed


def run_eval(
    config: EvalConfig,
    *,
    lift_fn: LiftFn | None = None,
    chat_model_factory: ChatModelFactory | None = None,
    on_method: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    judge: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate `config.methods` on the document-QA set (and NIAH when `config.niah.lengths` is given).

    Per method: exact_match, f1, contains, by_kind, general_contains (adapter methods: the general questions
    asked with each document's adapter), niah_accuracy and niah_grid (for the methods in `niah.methods`,
    default all; haystacks are LIFTed with `niah.overrides` on top), and costs: train_seconds_per_document
    (LIFT time; None when the adapters were already published), answer_seconds_per_question,
    seconds_per_document (training plus answering a document's questions) and peak_memory_mb (CUDA peak, or
    on CPU the peak resident memory of this process and its children, Ray's workers included).
    Adapter methods say where their adapters came from (`Training.figures`: `adapters_reused`, counts of
    reused and trained, `niah_`-prefixed for haystacks); ICL methods what they could read (`context_figures`).
    Adapters are trained once per variant and reused (`lift_icl` answers with `lift`'s). `on_method` gets
    the results so far after each method (a long run writes them as it goes). With a judge (`judge`, a
    ChatEngine, or else `config.judge.url`) every document-QA answer is also judged (`judge_score`,
    `judge_unparsed`, and `judge` per question).
    """
    if lift_fn is None:
        from lift_ray.pipeline import lift_documents as lift_fn
    if chat_model_factory is None:
        from lift_ray.eval.answerer import EvalChatModel as chat_model_factory
    if judge is None and config.judge.url:
        judge = judge_engine(config.judge.url, config.judge.model, config.judge.api_key_env)
    documents, questions = load_docqa(config.data)
    general_questions = load_general(config.data / GENERAL_FILE) if config.general else []
    niah_names = config.niah_method_names()
    results: dict[str, dict[str, Any]] = {}
    trained: dict[str, dict[str, Training]] = {}
    general_by_adapter: dict[tuple[str | None, str | None], float] = {}  # by (adapter, how it is asked)
    niah_docs: dict[tuple[str, int, float, int], Document] = {}

    for method in config.method_list():
        log.info("method %s: %s", method.name, method.description)
        lift_config = method_config(method, config.lift)
        reset_peak_gpu_memory()
        with MemoryPeak() as memory:
            serve_config = ServeConfig(
                model=lift_config.model, storage=lift_config.storage, torch_threads=config.answer_threads
            )
            chat_model = chat_model_factory(serve_config)
            tokenizer = getattr(chat_model, "tokenizer", None)
            run_niah = method.name in niah_names
            if run_niah and not niah_docs:
                niah_docs = build_niah_documents(
                    config.niah.lengths, config.niah.depths, config.niah.instances, tokenizer, config.niah.needle_list()
                )
            if method.adapter is not None and method.adapter not in trained:
                trained[method.adapter] = {"docqa": train_adapters(list(documents.values()), lift_config, lift_fn)}
            if run_niah and method.adapter is not None and "niah" not in trained[method.adapter]:
                lift_niah = niah_config(method_config(method, config.lift, config.niah.overrides))
                trained[method.adapter]["niah"] = train_adapters(list(niah_docs.values()), lift_niah, lift_fn)
            answered = time.perf_counter()
            predictions: dict[str, str] = {}
            recited: dict[str, str] = {}  # what a reciting method's adapter said first, kept with its answer
            for doc_id, document in documents.items():
                doc_questions = [q for q in questions if q.doc_id == doc_id]
                for row in _answer_document(chat_model, method, document, doc_questions, tokenizer, config):
                    predictions[row["id"]] = row["prediction"]
                    if "recited" in row:
                        recited[row["id"]] = row["recited"]
            answer_seconds = time.perf_counter() - answered
            # General questions go without the document: `lift_icl` asks them exactly as `lift` does.
            if general_questions and (method.adapter, method.recite) not in general_by_adapter:
                general_scores = []
                for document in documents.values() if method.adapter is not None else []:
                    # without the document; a reciting method recites (as the endpoint does by default)
                    asked = replace(method, context=False)
                    answers = _answer_document(chat_model, asked, document, general_questions, tokenizer, config)
                    general_scores.append(
                        score_answers([a["prediction"] for a in answers], general_questions)["contains"]
                    )
                if method.adapter is None:
                    answers = answer_questions(chat_model, None, general_questions, None, config.max_new_tokens)
                    general_scores.append(
                        score_answers([a["prediction"] for a in answers], general_questions)["contains"]
                    )
                general_by_adapter[method.adapter, method.recite] = sum(general_scores) / len(general_scores)
            entry: dict[str, Any] = {}
            if method.context:
                entry.update(context_figures([d.text for d in documents.values()], tokenizer, config))
            if config.niah.lengths and not run_niah:
                entry["note"] = "not run on NIAH (niah_accuracy is null)"
            if run_niah:
                entry.update(niah_figures(niah_grids(chat_model, method, niah_docs, tokenizer, config)))
                niah_training = trained.get(method.adapter or "", {}).get("niah")
                entry["niah_train_seconds_per_document"] = niah_training.seconds_per_document if niah_training else None
                if niah_training is not None:
                    entry.update(niah_training.figures("niah_"))
                if method.context:
                    entry.update(context_figures([d.text for d in niah_docs.values()], tokenizer, config, "niah_"))
            del chat_model
        scores = score_answers([predictions[q.id] for q in questions], questions)
        for row in scores["per_question"] if recited else []:
            row["recited"] = recited[row["id"]]
        if recited:  # document questions whose recital said the document does not say (off_document_examples)
            from lift_ray.train.dataset import says_off_document

            entry["off_document_recitals"] = sum(says_off_document(text) for text in recited.values())
        if judge is not None:
            entry.update(judge_answers(scores["per_question"], judge))
        training = trained.get(method.adapter or "", {}).get("docqa")
        train_seconds = training.seconds_per_document if training else None
        answer_per_document = answer_seconds / max(1, len(documents))
        entry.update(
            {
                "exact_match": scores["exact_match"],
                "f1": scores["f1"],
                "contains": scores["contains"],
                "by_kind": scores["by_kind"],
                "general_contains": general_by_adapter.get((method.adapter, method.recite))
                if general_questions
                else None,
                "train_seconds_per_document": train_seconds,
                **(training.figures() if training is not None else {}),
                "answer_seconds_per_question": answer_seconds / max(1, len(questions)),
                "seconds_per_document": (
                    None
                    if method.adapter is not None and train_seconds is None
                    else (train_seconds or 0.0) + answer_per_document
                ),
                "peak_memory_mb": peak_gpu_memory_mb() or memory.peak_mb,
                "per_question": scores["per_question"],
            }
        )
        if method.adapter is not None:
            entry["lift_settings"] = changed_settings(lift_config, LiftConfig())
            entry["gate"] = gate_agreement(lift_config, documents, scores["per_question"])
            entry["qa_coverage"] = qa_coverage(lift_config, documents, scores["per_question"])
        results[method.name] = entry
        if on_method is not None:
            on_method(results)
        log.info("method %s: %s", method.name, {k: v for k, v in entry.items() if k not in {"per_question", "by_kind"}})
    return results


def gate_agreement(
    config: LiftConfig, documents: dict[str, Document], per_question: list[dict[str, Any]]
) -> dict[str, Any]:
    """Does the quality gate's score track the real one? Per document: the adapter's `holdout_score` (from its
    manifest) beside its `contains` on the evaluation's questions, and their Pearson correlation over documents."""
    from lift_ray.layout import read_manifest
    from lift_ray.storage import Store

    store = Store.from_uri(config.storage.root)
    per_document: dict[str, dict[str, Any]] = {}
    for doc_id in documents:
        rows = [row for row in per_question if row["doc_id"] == doc_id]
        manifest = read_manifest(store, config.storage.namespace, doc_id) or {}
        per_document[doc_id] = {
            "holdout_score": (manifest.get("quality") or {}).get("holdout_score"),
            "holdout_pairs": (manifest.get("quality") or {}).get("holdout_pairs"),
            "contains": sum(row["contains"] for row in rows) / len(rows) if rows else None,
        }
    pairs = [
        (d["holdout_score"], d["contains"])
        for d in per_document.values()
        if d["holdout_score"] is not None and d["contains"] is not None
    ]
    return {"per_document": per_document, "pearson": pearson(pairs)}


def qa_coverage(
    config: LiftConfig, documents: dict[str, Document], per_question: list[dict[str, Any]]
) -> dict[str, Any]:
    """Did the generator write the fact? Share of questions whose gold answer (any variant, as whole normalised
    words) is the answer, or in the answer, of some pair of the document's QA cache (`in_generated_qa`; before
    any training-side filter), and of those, the share answered right (`right_when_in_qa`): it separates what
    the generator left out from what the adapter did not learn. Documents
    without a QA cache (`finetune_raw`) are left out; None when no document has one."""
    from lift_ray.layout import qa_cache_path, read_qa_cache
    from lift_ray.storage import Store

    store = Store.from_uri(config.storage.root)
    namespace = config.storage.qa_namespace or config.storage.namespace
    in_qa = right_in_qa = asked = 0
    for doc_id, document in documents.items():
        rows = read_qa_cache(store, qa_cache_path(namespace, document, config))
        if not rows:
            continue
        answers = [p["answer"] for row in rows for p in json.loads(row["qa_json"])]
        for row in (r for r in per_question if r["doc_id"] == doc_id):
            asked += 1
            if any(contains_answer(answer, row["answers"]) for answer in answers):
                in_qa += 1
                right_in_qa += bool(row["contains"])
    if not asked:
        return {"in_generated_qa": None, "right_when_in_qa": None, "questions": 0}
    return {
        "in_generated_qa": round(in_qa / asked, 4),
        "right_when_in_qa": round(right_in_qa / in_qa, 4) if in_qa else None,
        "questions": asked,
    }


def pearson(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Pearson's r of (x, y) pairs; None with fewer than 3 pairs or no spread."""
    if len(pairs) < 3:
        return None
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in pairs)
    spread = (sum((x - mean_x) ** 2 for x in xs) * sum((y - mean_y) ** 2 for y in ys)) ** 0.5
    return round(cov / spread, 4) if spread else None


def niah_grids(
    chat_model: ChatModel,
    method: Method,
    documents: dict[tuple[str, int, float, int], Document],
    tokenizer: Any,
    config: EvalConfig,
) -> dict[str, dict[tuple[int, float], float]]:
    """Accuracy per needle and (length, depth): each haystack's needle question, answered by `method`."""
    outcomes: dict[str, dict[tuple[int, float], list[bool]]] = {}
    for (name, length, depth, _), document in documents.items():
        needle = niah.get_needle(name)
        question = Question("niah", None, needle.question, (needle.text,), "niah")
        [row] = method_answers(chat_model, method, document, [question], tokenizer, config)
        outcomes.setdefault(name, {}).setdefault((length, depth), []).append(needle.answered_by(row["prediction"]))
    return {name: niah.niah_accuracy(cells) for name, cells in outcomes.items()}


def niah_figures(grids: dict[str, dict[tuple[int, float], float]]) -> dict[str, Any]:
    """`niah_grid` (each cell averaged over the needles), `niah_accuracy` and `niah_needles` (per needle: its
    accuracy, its grid and the share of its cells at 95% or better)."""
    cells = sorted({cell for grid in grids.values() for cell in grid})
    mean_grid = {cell: sum(grid.get(cell, 0.0) for grid in grids.values()) / len(grids) for cell in cells}
    return {
        "niah_grid": {f"{length}@{depth}": accuracy for (length, depth), accuracy in mean_grid.items()},
        "niah_accuracy": sum(mean_grid.values()) / len(mean_grid),
        "niah_needles": {
            name: {
                "accuracy": sum(grid.values()) / len(grid),
                "cells_at_least_95": sum(value >= 0.95 for value in grid.values()) / len(grid),
                "grid": {f"{length}@{depth}": accuracy for (length, depth), accuracy in grid.items()},
            }
            for name, grid in grids.items()
        },
    }


def eval_plan(eval_config: EvalConfig) -> list[dict[str, Any]]:
    """What a run will train, before it starts: per trained variant and task, the documents, their sentences
    (one generator prompt each; none for Finetune-Raw), the distinct sentences among them (what NIAH's sentence
    cache generates) and tokens. Multiply by measured rates to budget it."""
    from lift_ray.documents import sentence_rows
    from lift_ray.models import load_tokenizer, resolve_base_model

    methods = eval_config.method_list()
    config = method_config(methods[0], eval_config.lift)
    tokenizer = load_tokenizer(resolve_base_model(config.model.base_model, Path(config.model.cache_dir)))
    documents, _ = load_docqa(eval_config.data)
    tasks = {"docqa": list(documents.values())}
    niah_names = eval_config.niah_method_names()
    if niah_names & {m.name for m in methods}:
        niah_settings = eval_config.niah
        haystacks = build_niah_documents(
            niah_settings.lengths, niah_settings.depths, niah_settings.instances, tokenizer, niah_settings.needle_list()
        )
        tasks["niah"] = list(haystacks.values())
    rows, seen = [], set()
    for method in methods:
        for task, docs in tasks.items():
            if method.adapter is None or (method.adapter, task) in seen:
                continue
            if task == "niah" and method.name not in niah_names:
                continue
            seen.add((method.adapter, task))
            variant = method_config(method, eval_config.lift).train.variant
            sentence_list = [
                (row["context"], row["sentence"])
                for d in docs
                for row in sentence_rows(d, config.sentences.context_chars, config.sentences.max_sentence_chars)
            ]
            sentences, unique = len(sentence_list), len(set(sentence_list))
            rows.append(
                {
                    "variant": method.adapter,
                    "task": task,
                    "documents": len(docs),
                    "sentences": 0 if variant == "finetune_raw" else sentences,
                    "unique_sentences": 0 if variant == "finetune_raw" else unique,
                    "tokens": sum(len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in docs),
                }
            )
    return rows


def _without_predictions(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {k: v for k, v in entry.items() if k != "per_question"} for name, entry in results.items()}


def niah_cells(grid: dict[str, float]) -> dict[tuple[int, float], float]:
    """A results file's NIAH grid (`"1024@0.5": accuracy`) back as (length, depth) cells."""
    cells = {}
    for key, accuracy in grid.items():
        length, depth = key.split("@")
        cells[(int(length), float(depth))] = accuracy
    return cells


NIAH_PREFIX = "niah_"  # results fields of the NIAH part of a run
_NIAH_COUNTS = ("niah_adapters_reused_count", "niah_adapters_trained_count")


def load_eval_run(name: str, results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """docs/results/<name>.json, keeping only methods that were run."""
    entries = json.loads((results_dir / f"{name}.json").read_text())
    return {method: entry for method, entry in entries.items() if entry.get("note") != "not run in this evaluation"}


def merge_eval_runs(
    docqa: dict[str, dict[str, Any]], niah_runs: dict[str, dict[str, dict[str, Any]]], docqa_name: str
) -> dict[str, dict[str, Any]]:
    """One entry per method: document QA from `docqa`, NIAH cells merged over `niah_runs` (run name → entries)."""
    merged: dict[str, dict[str, Any]] = {}
    for method in METHOD_NAMES:
        entry = {
            key: value
            for key, value in docqa.get(method, {}).items()
            if not key.startswith(NIAH_PREFIX) and key != "note"
        }
        notes = [f"document QA from run {docqa_name}" if method in docqa else "document QA not run"]
        if docqa.get(method, {}).get("note"):
            notes[0] += f" ({docqa[method]['note']})"
        grid: dict[str, float] = {}
        niah_train: float | None = None
        by_run: dict[str, dict[str, Any]] = {}
        for run_name, run in niah_runs.items():
            run_entry = run.get(method, {})
            cells = run_entry.get("niah_grid") or {}
            if cells:
                grid.update(cells)
                notes.append(f"NIAH {', '.join(sorted(cells))} from run {run_name}")
                niah_train = niah_train or run_entry.get("niah_train_seconds_per_document")
                by_run[run_name] = {
                    key: value
                    for key, value in run_entry.items()
                    if key.startswith(NIAH_PREFIX) and key not in ("niah_grid", "niah_accuracy")
                }
        if grid:
            entry.update(
                niah_grid=dict(sorted(grid.items())),
                niah_accuracy=round(sum(grid.values()) / len(grid), 4),
                niah_train_seconds_per_document=niah_train,
                **niah_adapter_origin(list(by_run.values())),
                niah_runs=by_run,
            )
        if method in docqa or grid:
            entry["note"] = "; ".join(notes)
            merged[method] = entry
    return merged


def niah_adapter_origin(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where the NIAH adapters of merged runs came from: the runs' reused and trained counts summed, and
    `niah_adapters_reused` when any run reused one; None where a run did not record its counts (older runs),
    nothing when none did (methods without adapters)."""
    if not any(_NIAH_COUNTS[0] in run for run in runs):
        return {}
    summed = {
        key: None if any(run.get(key) is None for run in runs) else sum(run[key] for run in runs)
        for key in _NIAH_COUNTS
    }
    reused = summed[_NIAH_COUNTS[0]]
    return {"niah_adapters_reused": None if reused is None else reused > 0, **summed}


def judge_engine(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY") -> Any:
    """The LLM judge: an `OpenAIChatEngine` on an OpenAI-compatible endpoint (greedy, a few tokens per verdict)."""
    from lift_ray.config import OpenAISettings
    from lift_ray.engines import OpenAIChatEngine

    return OpenAIChatEngine(OpenAISettings(base_url=base_url, model=model, api_key_env=api_key_env))


def _help(model: type[BaseModel], field: str) -> str:
    """A flag's help: the config field's description and its default."""
    info = model.model_fields[field]
    return f"{info.description} (default: {info.get_default(call_default_factory=True)})"


# Flags that set one EvalConfig field each (dest -> dotted field); their argparse default is None ("not given").
FLAG_FIELDS = {
    "methods": "methods",
    "data": "data",
    "context_tokens": "context_tokens",
    "context_share": "context_share",
    "max_new_tokens": "max_new_tokens",
    "niah_lengths": "niah.lengths",
    "niah_depths": "niah.depths",
    "niah_instances": "niah.instances",
    "niah_methods": "niah.methods",
    "niah_needles": "niah.needles",
    "answer_threads": "answer_threads",
    "judge_url": "judge.url",
    "judge_model": "judge.model",
    "judge_api_key_env": "judge.api_key_env",
    "name": "name",
    "plan_only": "plan_only",
}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `lift-ray eval`: `--config`/`--set`, and flags for single settings, which win over both."""
    add_config_arguments(
        parser,
        config_help="eval config YAML (EvalConfig; its LIFT settings under `lift:`), or a LIFT config YAML, read as "
        "`lift:`",
        set_help="override one setting: a LIFT one (--set train.epochs=3, i.e. lift.train.epochs) or an eval one "
        "(--set context_share=0.25, --set niah.instances=5); repeatable, applied after --config",
    )
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD", help=_help(EvalConfig, "methods"))
    parser.add_argument("--data", default=None, help=_help(EvalConfig, "data"))
    parser.add_argument("--context-tokens", type=int, default=None, help=_help(EvalConfig, "context_tokens"))
    parser.add_argument(
        "--context-share", type=float, default=None, metavar="FLOAT", help=_help(EvalConfig, "context_share")
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help=_help(EvalConfig, "max_new_tokens"))
    parser.add_argument("--niah-lengths", type=int, nargs="*", default=None, help=_help(NiahSettings, "lengths"))
    parser.add_argument("--niah-depths", type=float, nargs="+", default=None, help=_help(NiahSettings, "depths"))
    parser.add_argument("--niah-instances", type=int, default=None, help=_help(NiahSettings, "instances"))
    parser.add_argument(
        "--niah-methods", nargs="+", default=None, metavar="METHOD", help=_help(NiahSettings, "methods")
    )
    parser.add_argument(
        "--niah-needles", nargs="+", default=None, metavar="NEEDLE", help=_help(NiahSettings, "needles")
    )
    parser.add_argument(
        "--niah-set",
        dest="niah_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra settings for LIFTing haystacks (the paper trains NIAH longer), e.g. --niah-set train.epochs=8; "
        "added after the config's niah.overrides",
    )
    parser.add_argument(
        "--no-general", action="store_true", default=None, help="skip the general-knowledge side-effect check"
    )
    parser.add_argument("--answer-threads", type=int, default=None, help=_help(EvalConfig, "answer_threads"))
    parser.add_argument("--judge-url", default=None, help=_help(JudgeSettings, "url"))
    parser.add_argument("--judge-model", default=None, help=_help(JudgeSettings, "model"))
    parser.add_argument("--judge-api-key-env", default=None, help=_help(JudgeSettings, "api_key_env"))
    parser.add_argument("--plan-only", action="store_true", default=None, help=_help(EvalConfig, "plan_only"))
    parser.add_argument("--name", default=None, help=_help(EvalConfig, "name"))


def eval_config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig of a `lift-ray eval` command line: `--config`, then `--set`, then the flags given.
    ConfigError (a ValueError) with the reasons when it is not valid."""
    overrides = [
        setting if setting.split("=", 1)[0].split(".", 1)[0].strip() in EvalConfig.model_fields else f"lift.{setting}"
        for setting in args.overrides
    ]
    for dest, field_name in FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.append(f"{field_name}={json.dumps(value)}")
    if args.no_general:
        overrides.append("general=false")
    config = load_config(EvalConfig, args.config, overrides)
    if args.niah_overrides:
        config.niah.overrides = [*config.niah.overrides, *args.niah_overrides]
    return config


def eval_command(args: argparse.Namespace) -> int:
    """`lift-ray eval`: run, write docs/results/<name>.json and NIAH heatmaps, print the table; 0, or 2 on
    bad arguments."""
    try:
        config = eval_config_from_args(args)
        for method in config.method_list():  # a bad LIFT setting fails before any training
            method_config(method, config.lift)
            if method.name in config.niah_method_names():
                method_config(method, config.lift, config.niah.overrides)
    except ValueError as exc:
        print(f"lift-ray eval: {exc}", flush=True)
        return 2
    print("eval config:\n" + config.to_yaml(), flush=True)
    plan = eval_plan(config)
    if plan:
        table = markdown_table(list(plan[0]), [list(row.values()) for row in plan])
        print(f"plan (trained variants):\n{table}", flush=True)
    if config.plan_only:
        return 0
    name = config.name
    results = run_eval(
        config, on_method=lambda so_far: write_eval_results(_without_predictions(so_far), f"{name}_partial")
    )
    per_question = {method: entry.pop("per_question", []) for method, entry in results.items()}
    path = write_eval_results(results, name)
    adapters = [
        {"method": method, "doc_id": doc_id, **row}
        for method, entry in results.items()
        for doc_id, row in (entry.get("gate") or {}).get("per_document", {}).items()
    ]
    if adapters:  # every trained adapter of the run: does the gate's score track the real one across them?
        pooled = [(a["holdout_score"], a["contains"]) for a in adapters if a["holdout_score"] is not None]
        write_results(f"{name}_gate", {"pearson_all_adapters": pearson(pooled), "adapters": adapters})
    (RESULTS_DIR / f"{name}_partial.json").unlink(missing_ok=True)
    plot_scores(results, RESULTS_DIR / f"{name}_scores.png", "Document QA: scores and LIFT cost per document")
    grids = {method: niah_cells(entry["niah_grid"]) for method, entry in results.items() if entry.get("niah_grid")}
    if grids:
        plot_niah_grids(grids, RESULTS_DIR / f"{name}_niah.png")
    predictions = write_results(f"{name}_predictions", per_question)
    print(results_table(results), flush=True)
    print(f"results: {path}\npredictions: {predictions}", flush=True)
    return 0
