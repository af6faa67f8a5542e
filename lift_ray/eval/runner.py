"""The evaluation run: train each method's adapters, answer the questions, score, write docs/results/eval.json.

`run_eval` takes the LIFT step and the chat model as arguments (defaults: `lift_ray.pipeline.lift_documents`
and `lift_ray.eval.answerer.EvalChatModel`), so its bookkeeping is tested without Ray or a model.
`add_eval_arguments` / `eval_command` are the `lift-ray eval` subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lift_ray.bench import RESULTS_DIR
from lift_ray.config import LiftConfig, ServeConfig, load_config
from lift_ray.documents import Document
from lift_ray.eval import niah
from lift_ray.eval.harness import (
    DOCQA_DIR,
    GENERAL_FILE,
    METHOD_NAMES,
    METHODS,
    ChatModel,
    MemoryPeak,
    Method,
    Question,
    answer_questions,
    get_method,
    judge_answers,
    load_docqa,
    load_general,
    peak_gpu_memory_mb,
    plot_niah_grids,
    plot_scores,
    reset_peak_gpu_memory,
    results_table,
    score_answers,
    truncated_context,
    write_eval_results,
)

log = logging.getLogger(__name__)

LiftFn = Callable[[list[Document], LiftConfig], list[Any]]
ChatModelFactory = Callable[[ServeConfig], ChatModel]


def method_config(method: Method, config_path: str | None = None, overrides: Sequence[str] = ()) -> LiftConfig:
    """The LiftConfig that trains `method`'s adapter: the user's file and overrides, then the method's own
    settings and its storage namespace (`eval-<adapter>`), which win."""
    namespace = method.namespace or "eval-base"
    return load_config(LiftConfig, config_path, [*overrides, *method.lift_overrides, f"storage.namespace={namespace}"])


def niah_config(config: LiftConfig) -> LiftConfig:
    """`config` with the generator's NIAH prompt preset, for LIFTing haystacks.

    The sentence cache is on: haystacks of one length differ only around the needle, so their shared
    sentences are generated once for every depth and instance that repeats them."""
    adjusted = config.model_copy(deep=True)
    adjusted.generator.preset = "niah"
    adjusted.generator.sentence_cache = True
    return adjusted


def train_adapters(documents: list[Document], config: LiftConfig, lift_fn: LiftFn) -> float | None:
    """LIFT `documents` with `config`; seconds per document trained in this call, or None when every one
    was skipped (already published: no time to report). RuntimeError naming the documents that failed."""
    started = time.perf_counter()
    reports = lift_fn(documents, config)
    elapsed = time.perf_counter() - started
    failed = {r.doc_id: r.error for r in reports if r.status == "failed"}
    if failed:
        raise RuntimeError(f"LIFT failed for {len(failed)} documents: {failed}")
    trained = sum(r.status == "published" for r in reports)
    if trained < len(reports):
        log.info(
            "%d of %d documents were already published; timing the %d trained",
            len(reports) - trained,
            len(reports),
            trained,
        )
    return round(elapsed / trained, 2) if trained else None


def build_niah_documents(
    lengths: Sequence[int], depths: Sequence[float], instances: int, tokenizer: Any
) -> dict[tuple[int, float, int], Document]:
    """One haystack document per (length, depth, instance); instances start in different essays."""
    essays = niah.load_paul_graham_essays()
    documents = {}
    for length in lengths:
        for depth in depths:
            for instance in range(instances):
                text = niah.build_haystack(
                    essays, length, depth, tokenizer, offset_chars=instance * len(essays) // max(1, instances)
                )
                documents[(length, depth, instance)] = Document.from_text(
                    niah.niah_doc_id(length, depth, instance), text
                )
    return documents


def _answer_document(
    chat_model: ChatModel,
    method: Method,
    document: Document,
    questions: list[Question],
    tokenizer: Any,
    context_tokens: int,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """`method`'s answers to `questions` about `document` (its adapter loaded, then unloaded)."""
    context = truncated_context(document.text, tokenizer, context_tokens) if method.context else None
    adapter = document.doc_id if method.adapter is not None else None
    rows = answer_questions(chat_model, adapter, questions, context, max_new_tokens)
    if adapter is not None and hasattr(chat_model, "unload_adapter"):
        chat_model.unload_adapter(adapter)
    return rows


def run_eval(
    methods: Sequence[Method] = METHODS,
    *,
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    data_dir: str | Path = DOCQA_DIR,
    context_tokens: int = 1024,
    max_new_tokens: int = 48,
    niah_lengths: Sequence[int] = (),
    niah_depths: Sequence[float] = niah.DEFAULT_DEPTHS,
    niah_instances: int = 1,
    niah_methods: Sequence[str] | None = None,
    niah_overrides: Sequence[str] = (),
    general: bool = True,
    lift_fn: LiftFn | None = None,
    chat_model_factory: ChatModelFactory | None = None,
    on_method: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    answer_threads: int = 2,
    judge: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate `methods` on the document-QA set (and NIAH when `niah_lengths` is given).

    Per method: exact_match, f1, contains, by_kind, general_contains (adapter methods: the general questions
    asked with each document's adapter), niah_accuracy and niah_grid (for the methods in `niah_methods`,
    default all; haystacks are LIFTed with `niah_overrides` on top), and costs: train_seconds_per_document
    (LIFT time; None when the adapters were already published), answer_seconds_per_question,
    seconds_per_document (training plus answering a document's questions) and peak_memory_mb (CUDA peak, or
    on CPU the peak resident memory of this process and its children, Ray's workers included).
    Adapters are trained once per variant and reused (`lift_icl` answers with `lift`'s). `on_method` gets
    the results so far after each method (a long run writes them as it goes). With a `judge` (a ChatEngine,
    e.g. `OpenAIChatEngine` on an OpenAI-compatible endpoint) every document-QA answer is also judged
    (`judge_score`, `judge_unparsed`, and `judge` per question).
    """
    if lift_fn is None:
        from lift_ray.pipeline import lift_documents as lift_fn
    if chat_model_factory is None:
        from lift_ray.eval.answerer import EvalChatModel as chat_model_factory
    documents, questions = load_docqa(data_dir)
    general_questions = load_general(Path(data_dir) / GENERAL_FILE) if general else []
    niah_names = set(niah_methods if niah_methods is not None else [m.name for m in methods])
    results: dict[str, dict[str, Any]] = {}
    trained: dict[str, dict[str, Any]] = {}
    general_by_adapter: dict[str | None, float] = {}
    niah_docs: dict[tuple[int, float, int], Document] = {}

    for method in methods:
        log.info("method %s: %s", method.name, method.description)
        config = method_config(method, config_path, overrides)
        reset_peak_gpu_memory()
        with MemoryPeak() as memory:
            serve_config = ServeConfig(model=config.model, storage=config.storage, torch_threads=answer_threads)
            chat_model = chat_model_factory(serve_config)
            tokenizer = getattr(chat_model, "tokenizer", None)
            run_niah = bool(niah_lengths) and method.name in niah_names
            if run_niah and not niah_docs:
                niah_docs = build_niah_documents(niah_lengths, niah_depths, niah_instances, tokenizer)
            if method.adapter is not None and method.adapter not in trained:
                trained[method.adapter] = {"docqa": train_adapters(list(documents.values()), config, lift_fn)}
            if run_niah and method.adapter is not None and "niah" not in trained[method.adapter]:
                lift_niah = niah_config(method_config(method, config_path, [*overrides, *niah_overrides]))
                trained[method.adapter]["niah"] = train_adapters(list(niah_docs.values()), lift_niah, lift_fn)
            answered = time.perf_counter()
            predictions: dict[str, str] = {}
            for doc_id, document in documents.items():
                doc_questions = [q for q in questions if q.doc_id == doc_id]
                for row in _answer_document(
                    chat_model, method, document, doc_questions, tokenizer, context_tokens, max_new_tokens
                ):
                    predictions[row["id"]] = row["prediction"]
            answer_seconds = time.perf_counter() - answered
            # General questions go without the document: `lift_icl` asks them exactly as `lift` does.
            if general_questions and method.adapter not in general_by_adapter:
                general_scores = []
                for document in documents.values() if method.adapter is not None else []:
                    answers = _answer_document(
                        chat_model,
                        replace(method, context=False),
                        document,
                        general_questions,
                        tokenizer,
                        0,
                        max_new_tokens,
                    )
                    general_scores.append(
                        score_answers([a["prediction"] for a in answers], general_questions)["contains"]
                    )
                if method.adapter is None:
                    answers = answer_questions(chat_model, None, general_questions, None, max_new_tokens)
                    general_scores.append(
                        score_answers([a["prediction"] for a in answers], general_questions)["contains"]
                    )
                general_by_adapter[method.adapter] = sum(general_scores) / len(general_scores)
            entry: dict[str, Any] = {}
            if niah_lengths and not run_niah:
                entry["note"] = "not run on NIAH (niah_accuracy is null)"
            if run_niah:
                grid = niah_grid(chat_model, method, niah_docs, tokenizer, context_tokens, max_new_tokens)
                entry["niah_grid"] = {f"{length}@{depth}": accuracy for (length, depth), accuracy in grid.items()}
                entry["niah_accuracy"] = sum(grid.values()) / len(grid)
                entry["niah_train_seconds_per_document"] = trained.get(method.adapter or "", {}).get("niah")
            del chat_model
        scores = score_answers([predictions[q.id] for q in questions], questions)
        if judge is not None:
            entry.update(judge_answers(scores["per_question"], judge))
        train_seconds = trained.get(method.adapter or "", {}).get("docqa")
        answer_per_document = answer_seconds / max(1, len(documents))
        entry.update(
            {
                "exact_match": scores["exact_match"],
                "f1": scores["f1"],
                "contains": scores["contains"],
                "by_kind": scores["by_kind"],
                "general_contains": general_by_adapter.get(method.adapter) if general_questions else None,
                "train_seconds_per_document": train_seconds,
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
            entry["gate"] = gate_agreement(config, documents, scores["per_question"])
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


def pearson(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Pearson's r of (x, y) pairs; None with fewer than 3 pairs or no spread."""
    if len(pairs) < 3:
        return None
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in pairs)
    spread = (sum((x - mean_x) ** 2 for x in xs) * sum((y - mean_y) ** 2 for y in ys)) ** 0.5
    return round(cov / spread, 4) if spread else None


def niah_grid(
    chat_model: ChatModel,
    method: Method,
    documents: dict[tuple[int, float, int], Document],
    tokenizer: Any,
    context_tokens: int,
    max_new_tokens: int,
) -> dict[tuple[int, float], float]:
    """Accuracy per (length, depth): the paper's NIAH question, answered per haystack by `method`."""
    question = Question("niah", None, niah.QUESTION, (niah.NEEDLE,), "niah")
    outcomes: dict[tuple[int, float], list[bool]] = {}
    for (length, depth, _), document in documents.items():
        context = truncated_context(document.text, tokenizer, context_tokens) if method.context else None
        adapter = document.doc_id if method.adapter is not None else None
        [row] = answer_questions(chat_model, adapter, [question], context, max_new_tokens)
        outcomes.setdefault((length, depth), []).append(niah.niah_correct(row["prediction"]))
    return niah.niah_accuracy(outcomes)


def eval_plan(
    methods: Sequence[Method],
    config: LiftConfig,
    data_dir: str | Path = DOCQA_DIR,
    niah_lengths: Sequence[int] = (),
    niah_depths: Sequence[float] = niah.DEFAULT_DEPTHS,
    niah_instances: int = 1,
    niah_methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """What a run will train, before it starts: per trained variant and task, the documents, their sentences
    (one generator prompt each; none for Finetune-Raw), the distinct sentences among them (what NIAH's sentence
    cache generates) and tokens. Multiply by measured rates to budget it."""
    from lift_ray.documents import sentence_rows
    from lift_ray.models import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model(config.model.base_model, Path(config.model.cache_dir)))
    documents, questions = load_docqa(data_dir)
    tasks = {"docqa": list(documents.values())}
    niah_names = set(niah_methods if niah_methods is not None else [m.name for m in methods])
    if niah_lengths and niah_names & {m.name for m in methods}:
        tasks["niah"] = list(build_niah_documents(niah_lengths, niah_depths, niah_instances, tokenizer).values())
    rows, seen = [], set()
    for method in methods:
        for task, docs in tasks.items():
            if method.adapter is None or (method.adapter, task) in seen:
                continue
            if task == "niah" and method.name not in niah_names:
                continue
            seen.add((method.adapter, task))
            variant = method_config(method).train.variant
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


_NIAH_FIELDS = ("niah_grid", "niah_accuracy", "niah_train_seconds_per_document")


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
        entry = {key: value for key, value in docqa.get(method, {}).items() if key not in (*_NIAH_FIELDS, "note")}
        notes = [f"document QA from run {docqa_name}" if method in docqa else "document QA not run"]
        if docqa.get(method, {}).get("note"):
            notes[0] += f" ({docqa[method]['note']})"
        grid: dict[str, float] = {}
        niah_train: float | None = None
        for run_name, run in niah_runs.items():
            cells = run.get(method, {}).get("niah_grid") or {}
            if cells:
                grid.update(cells)
                notes.append(f"NIAH {', '.join(sorted(cells))} from run {run_name}")
                niah_train = niah_train or run[method].get("niah_train_seconds_per_document")
        if grid:
            entry.update(
                niah_grid=dict(sorted(grid.items())),
                niah_accuracy=round(sum(grid.values()) / len(grid), 4),
                niah_train_seconds_per_document=niah_train,
            )
        if method in docqa or grid:
            entry["note"] = "; ".join(notes)
            merged[method] = entry
    return merged


def judge_engine(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY") -> Any:
    """The LLM judge: an `OpenAIChatEngine` on an OpenAI-compatible endpoint (greedy, a few tokens per verdict)."""
    from lift_ray.config import OpenAISettings
    from lift_ray.synth.engines import OpenAIChatEngine

    return OpenAIChatEngine(OpenAISettings(base_url=base_url, model=model, api_key_env=api_key_env))


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `lift-ray eval`."""
    parser.add_argument("--methods", nargs="+", default=[m.name for m in METHODS], metavar="METHOD")
    parser.add_argument("--data", default=str(DOCQA_DIR), help="document-QA folder (<doc_id>.txt + questions.jsonl)")
    parser.add_argument("--context-tokens", type=int, default=1024, help="document budget of the ICL methods")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--niah-lengths", type=int, nargs="*", default=[], help="NIAH haystack lengths (none: skip)")
    parser.add_argument("--niah-depths", type=float, nargs="+", default=list(niah.DEFAULT_DEPTHS))
    parser.add_argument("--niah-instances", type=int, default=1, help="haystacks per cell (the paper uses 5)")
    parser.add_argument(
        "--niah-methods", nargs="+", default=None, metavar="METHOD", help="methods run on NIAH (default: all given)"
    )
    parser.add_argument(
        "--niah-set",
        dest="niah_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra settings for LIFTing haystacks (the paper trains NIAH longer), e.g. --niah-set train.epochs=8",
    )
    parser.add_argument("--no-general", action="store_true", help="skip the general-knowledge side-effect check")
    parser.add_argument(
        "--answer-threads",
        type=int,
        default=2,
        help="torch threads of the answering model (1 copes far better with a busy shared machine)",
    )
    parser.add_argument(
        "--judge-url", default=None, help="OpenAI-compatible base URL of an LLM judge (e.g. http://host:8000/v1)"
    )
    parser.add_argument("--judge-model", default="gpt-4o", help="the judge's model name")
    parser.add_argument(
        "--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge's API key"
    )
    parser.add_argument("--plan-only", action="store_true", help="print what would be trained, then stop")
    parser.add_argument("--name", default="eval", help="results file docs/results/<name>.json")


def eval_command(args: argparse.Namespace) -> int:
    """`lift-ray eval`: run, write docs/results/<name>.json and NIAH heatmaps, print the table; 0, or 2 on
    bad arguments."""
    try:
        methods = [get_method(name) for name in args.methods]
        for name in args.niah_methods or []:
            get_method(name)
        for method in methods:
            method_config(method, args.config, args.overrides)  # a bad config fails before any training
    except ValueError as exc:
        print(f"lift-ray eval: {exc}", flush=True)
        return 2
    from lift_ray.bench import markdown_table

    plan = eval_plan(
        methods,
        method_config(methods[0], args.config, args.overrides),
        args.data,
        args.niah_lengths,
        args.niah_depths,
        args.niah_instances,
        args.niah_methods,
    )
    if plan:
        table = markdown_table(list(plan[0]), [list(row.values()) for row in plan])
        print(f"plan (trained variants):\n{table}", flush=True)
    if args.plan_only:
        return 0
    results = run_eval(
        methods,
        config_path=args.config,
        overrides=args.overrides,
        data_dir=args.data,
        context_tokens=args.context_tokens,
        max_new_tokens=args.max_new_tokens,
        niah_lengths=args.niah_lengths,
        niah_depths=args.niah_depths,
        niah_instances=args.niah_instances,
        niah_methods=args.niah_methods,
        niah_overrides=args.niah_overrides,
        general=not args.no_general,
        answer_threads=args.answer_threads,
        judge=judge_engine(args.judge_url, args.judge_model, args.judge_api_key_env) if args.judge_url else None,
        on_method=lambda so_far: write_eval_results(_without_predictions(so_far), f"{args.name}_partial"),
    )
    from lift_ray.bench import write_results

    per_question = {name: entry.pop("per_question", []) for name, entry in results.items()}
    path = write_eval_results(results, args.name)
    adapters = [
        {"method": name, "doc_id": doc_id, **row}
        for name, entry in results.items()
        for doc_id, row in (entry.get("gate") or {}).get("per_document", {}).items()
    ]
    if adapters:  # every trained adapter of the run: does the gate's score track the real one across them?
        pooled = [(a["holdout_score"], a["contains"]) for a in adapters if a["holdout_score"] is not None]
        write_results(f"{args.name}_gate", {"pearson_all_adapters": pearson(pooled), "adapters": adapters})
    (RESULTS_DIR / f"{args.name}_partial.json").unlink(missing_ok=True)
    plot_scores(results, RESULTS_DIR / f"{args.name}_scores.png", "Document QA: scores and LIFT cost per document")
    grids = {name: niah_cells(entry["niah_grid"]) for name, entry in results.items() if entry.get("niah_grid")}
    if grids:
        plot_niah_grids(grids, RESULTS_DIR / f"{args.name}_niah.png")
    predictions = write_results(f"{args.name}_predictions", per_question)
    print(results_table(results), flush=True)
    print(f"results: {path}\npredictions: {predictions}", flush=True)
    return 0
