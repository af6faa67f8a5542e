"""Figures that README.md and docs/*.md quote from docs/results/*.json say what the JSON says.

Every quoted figure is one `Quote` in `QUOTES`: the doc; an anchor, text that occurs once in the doc (or once
in one benchmark's `<!-- bench:NAME -->` section of docs/benchmarks.md, whose figures come from NAME.json);
the results file and the key path of the value (or a function of the file, for a ratio or a count); and how
the doc writes it: `shown` is a format string for the value, rounded half up to `digits` (None: the number
as the JSON writes it) after multiplying by `scale`. The figure, as shown, must follow the anchor: in the
anchor's row for a table, else within `WINDOW` characters, and never as part of a longer number. When a
benchmark rewrites its JSON, this test names each sentence that still quotes the old figure; when a doc
starts quoting a figure from docs/results, add it here (docs/benchmarks.md says so).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results"
WINDOW = 200  # characters after a prose anchor in which its figures must appear
# the columns of a row of docs/evaluation.md's "Recipes" table, in order (each method's result keys)
RECIPE_ROW_KEYS = (
    "contains",
    "exact_match",
    "f1",
    "by_kind.paraphrase.contains",
    "general_contains",
    "qa_coverage.in_generated_qa",
    "qa_coverage.right_when_in_qa",
)

Key = str | Callable[[dict[str, Any]], Any]  # a dotted key path ('engines.hf_batch1.startup_s') or a function


@dataclass(frozen=True)
class Quote:
    doc: str
    anchor: str
    source: str
    key: Key
    shown: str = "{}"
    digits: int | None = None
    scale: float = 1.0
    section: str | None = None

    def expected(self) -> str:
        data = results(self.source)
        value = self.key(data) if callable(self.key) else lookup(data, self.key)
        return self.shown.format(written(value, self.digits, self.scale))

    def __str__(self) -> str:
        section = f"[bench:{self.section}]" if self.section else ""
        return f"{self.doc}{section} {self.anchor!r} -> {self.source}:{getattr(self.key, '__name__', self.key)}"


@cache
def results(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def lookup(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def written(value: Any, digits: int | None, scale: float) -> str:
    """`value` as the docs write it: text as it is; a number as JSON writes it, or scaled and rounded half up."""
    if isinstance(value, str):
        return value
    if digits is None:
        assert scale == 1.0, "give the digits of a scaled figure"
        return json.dumps(value)
    return str(Decimal(repr(value * scale)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def named(name: str, function: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    function.__name__ = name
    return function


def ratio(numerator: str, denominator: str) -> Callable[[dict[str, Any]], float]:
    return named(f"{numerator} / {denominator}", lambda data: lookup(data, numerator) / lookup(data, denominator))


def right(method: str) -> Callable[[dict[str, Any]], int]:
    """How many questions `method` answered: its `contains` share of the questions it was asked."""
    return named(f"{method}: contains x questions", lambda data: round(data[method]["contains"] * asked(data, method)))


def right_of(method: str) -> Callable[[dict[str, Any]], str]:
    """'N of M': questions `method` answered, of those it was asked."""
    return named(f"{method}: right of asked", lambda data: f"{right(method)(data)} of {asked(data, method)}")


def asked(data: dict[str, Any], method: str = "lift") -> int:
    return sum(kind["count"] for kind in data[method]["by_kind"].values())


def needles_found(data: dict[str, Any]) -> int:
    """How many NIAH haystacks the LIFT adapters found their needle in (the docs say: all of them)."""
    grid = data["lift"]["niah_grid"]
    return len(grid) if all(score == 1.0 for score in grid.values()) else -1


def count_of(key: str) -> Callable[[dict[str, Any]], int]:
    return named(f"len({key})", lambda data: len(lookup(data, key)))


BENCH = "docs/benchmarks.md"
Row = list[Key | tuple[Key, dict[str, Any]]]


def table(section: str, rows: dict[str, Row]) -> list[Quote]:
    """Quotes of a benchmark's generated section: anchor -> the keys of `<section>.json` it shows."""
    quotes = []
    for anchor, keys in rows.items():
        for key in keys:
            key, how = key if isinstance(key, tuple) else (key, {})
            quotes.append(Quote(BENCH, anchor, f"{section}.json", key, section=section, **how))
    return quotes


def prose(doc: str, source: str, figures: list[tuple[str, Key, dict[str, Any]]]) -> list[Quote]:
    """Quotes written by hand: (anchor, key, how it is shown)."""
    return [Quote(doc, anchor, source, key, **how) for anchor, key, how in figures]


def settings(source: str) -> Row:
    """A generated section's settings, printed as a Python dict: `'epochs': 2`."""
    return [(f"settings.{name}", {"shown": f"'{name}': {{}}"}) for name in results(source)["settings"]]


PERCENT = {"digits": 0, "scale": 100}
MS_AS_S = {"digits": 1, "scale": 0.001}

QUOTES: list[Quote] = [
    # docs/benchmarks.md, the generated sections
    *table(
        "synth",
        {
            "## QA synthesis": [
                "engines.vllm_batch16.device",
                ("engines.vllm_batch16.sentences", {"shown": "{} sentences"}),
                ("qa_per_sentence", {"shown": "m={},"}),
                ("preset", {"shown": "preset `{}`"}),
            ],
            "require_grounded=": [("max_new_tokens", {"shown": "max_new_tokens={}"})],
            **{
                f"| {engine} | {batch} |": [
                    f"engines.{key}.output_tokens_per_s",
                    f"engines.{key}.qa_pairs_per_s",
                    (
                        ratio(f"engines.{key}.output_tokens_per_s", "engines.hf_batch1.output_tokens_per_s"),
                        {"digits": 1, "shown": "{}x"},
                    ),
                    f"engines.{key}.startup_s",
                    (f"engines.{key}.grounded_sentence_fraction", {**PERCENT, "shown": "{}%"}),
                ]
                for engine, batch, key in [
                    ("vllm", 16, "vllm_batch16"),
                    ("hf", 16, "hf_batch16"),
                    ("hf", 1, "hf_batch1"),
                ]
            },
        },
    ),
    *table(
        "pipeline",
        {
            "## Pipeline": ["device", ("engine", {"shown": "engine {};"})],
            "; {'": settings("pipeline.json"),
            "| generate-then-train (s) |": ["sequential_s"],
            "| pipelined (s) |": ["pipelined_s"],
            "| speedup |": ["speedup"],
            "| generation alone / training alone (s) |": ["generation_only_s", "training_only_s"],
            "| pipelined / max(generation, training) |": ["pipelined_over_ideal"],
            "| bulk: ": [("bulk_documents", {"shown": "{} documents"}), "bulk_ray_wall_s", "bulk_bare_wall_s"],
            "| Ray Train start-up, once per run (s) |": ["ray_train_startup_s"],
            "| fixed per-document overhead / step time |": ["per_doc_overhead_fraction"],
            "(wall, incl. start-up) |": ["ray_train_overhead_fraction"],
            "(steps only) |": ["ray_train_step_overhead_fraction"],
            "| bulk steps: share of a core": ["bulk_ray_worker_cpu_share", "bulk_bare_worker_cpu_share"],
            "| bulk steps: cores everything else": ["bulk_ray_other_cpu_cores", "bulk_bare_other_cpu_cores"],
            "| simulated remote generator (ChatStub replays": [
                ("remote_generator.latency_s", {"shown": "after a {} s sleep"}),
                ("remote_generator.epochs", {"shown": "; {} epoch)"}),
                "remote_generator.sequential_s",
                "remote_generator.pipelined_s",
            ],
            "| simulated remote generator (ChatStub replay): speedup |": ["remote_generator.speedup"],
            "| simulated remote generator (ChatStub replay): TTFT": [
                "remote_generator.sequential_ttft_s",
                "remote_generator.pipelined_ttft_s",
            ],
            "| simulated remote generator (ChatStub replay): generation alone": [
                "remote_generator.generation_only_s",
                "remote_generator.training_only_s",
            ],
            "| simulated remote generator (ChatStub replay): pipelined / max": [
                "remote_generator.pipelined_over_ideal"
            ],
        },
    ),
    *table(
        "serve",
        {
            "## Serving": ["device", ("adapters_registered", {"shown": "{} adapters registered"})],
            "(moto, loopback), ": ["adapter_shape"],
            "; per setting": [
                ("requests", {"shown": "per setting {} requests"}),
                ("concurrency", {"shown": "concurrency {}"}),
            ],
            "Zipf-like over": [
                ("hot_adapters", {"shown": "over {} of the adapters"}),
                ("base_every", {"shown": "every {}th"}),
                ("max_tokens", {"shown": "{} tokens each"}),
            ],
            "tokens each;": [("memory_adapters_per_replica", {"shown": "{} adapters in memory"})],
            '"distinct / single" =': [
                ("distinct_adapters", {"shown": "with {} adapters in flight"}),
                ("distinct_requests", {"shown": "({} requests each)"}),
            ],
            **{
                f"| `{engine}` x{replicas} (random-weight adapters) |": [
                    f"runs.{index}.{key}"
                    for key in (
                        "requests_per_s",
                        "p50_ms",
                        "warm_p50_ms",
                        "base_p50_same_load_ms",
                        "warm_vs_base_same_load",
                        "distinct_100_vs_single",
                        "unloaded_warm_vs_base",
                        "cold_load_ms",
                        "errors",
                    )
                ]
                for index, (engine, replicas) in enumerate((("hf", 1), ("vllm", 1), ("vllm", 2)))
            },
            "Best vLLM setting over hf x1, requests/s: ": [("vllm_vs_hf_requests_per_s", {"shown": "**{}**"})],
            "; errors: ": [("errors", {"shown": "**{}**"})],
        },
    ),
    *table(
        "ttft",
        {
            "## Time to first answer": ["device", ("engine", {"shown": "engine {},"})],
            "(no stand-ins); {'": settings("ttft.json"),
            **{
                f"| {row['tokens']} |": [
                    f"lengths.{index}.{key}" for key in ("generation_only_s", "draft_s", "ttft_warm_s", "ttft_cold_s")
                ]
                + [f"draft_over_generation.{index}"]
                for index, row in enumerate(results("ttft.json")["lengths"])
            },
            "sentences) |": [
                ("short_document.tokens", {"shown": "| {} ("}),
                *(f"short_document.{key}" for key in ("generation_only_s", "draft_s", "ttft_warm_s", "ttft_cold_s")),
                "short_draft_over_generation",
            ],
            "-sentence document: ": ["short_warm_over_cold"],
            "Slope: ": [
                ("warm_slope_s_per_1k_tokens", {"shown": "{} s per 1K tokens warm"}),
                ("cold_slope_s_per_1k_tokens", {"shown": "{} cold"}),
            ],
            "the paper: TTFT under ": [("paper_ttft_8k_below_s", {"digits": 0})],
        },
    ),
    *table(
        "online_batch",
        {
            "## Online LIFT": ["device", ("engine", {"shown": "engine {};"})],
            "; {'": settings("online_batch.json"),
            "posted together, one run each (s) |": [
                ("settings.documents", {"shown": "| {} documents"}),
                "per_document_runs_s",
            ],
            "| the same in one batched run": [
                ("settings.batch_window_s", {"digits": 0, "shown": "after a {} s window"}),
                "batched_s",
            ],
            "| speedup |": ["speedup"],
            "| mean TTFT, one run each / batched (s) |": ["per_document_runs.mean_ttft_s", "batched_run.mean_ttft_s"],
        },
    ),
    *table(
        "bulk",
        {
            f"| {label} | ChatStub generator, tiny random model | {size} |": [
                f"entries.{label}.runs.{index}.{key}"
                for key in (
                    "wall_s",
                    "documents_per_hour",
                    "compute_s",
                    "overhead_s_per_document",
                    "read_s",
                    "plan_s",
                    "driver_peak_mb",
                    "feed_peak_mb",
                    "first_adapter_s",
                    *(("feed_peak_rows",) if label == "after" else ()),  # not logged before the bound
                )
            ]
            for label in ("before", "after")
            for index, size in enumerate((100, 1000))
        }
        | {
            "| after, stopped at half |": [
                f"entries.after.interruption.{key}"
                for key in ("documents", "published_at_stop", "resume_wall_s", "redone", "duplicated")
            ],
        },
    ),
    # docs/benchmarks.md, the notes written by hand beside the generated sections
    *prose(
        BENCH,
        "synth.json",
        [
            (
                "with the defaults (`answer_aware=retry`). vLLM",
                ratio("engines.vllm_batch16.output_tokens_per_s", "engines.hf_batch1.output_tokens_per_s"),
                {"digits": 1, "shown": "{}x the tokens/s of HF at batch 1"},
            ),
            (
                "Every engine gave every sentence a",
                "grounded_sentence_fraction",
                {**PERCENT, "shown": "({}%; the goal is 90%)"},
            ),
        ],
    ),
    *prose(
        BENCH,
        "serve.json",
        [
            ("of one core each, served", "vllm_vs_hf_requests_per_s", {"shown": "served {}x"}),
            ("once with one replica (", "runs.1.errors", {"shown": "({} errors)"}),
            ("once per replica\nwith two (", "runs.2.errors", {"shown": "two ({})"}),
            ("100 distinct adapters in flight ran at", "runs.1.distinct_100_vs_single", {"shown": "ran at {} of"}),
            ("A cold adapter took", "runs.1.cold_load_ms", {**MS_AS_S, "shown": "took {} s"}),
            ("A cold adapter took", "runs.0.cold_load_ms", {"digits": 0, "shown": "against {} ms"}),
        ],
    ),
    *prose(
        BENCH,
        "online_batch.json",
        [
            ("its record says `published`", "settings.batch_window_s", {"digits": 0, "shown": "{} s window"}),
            (
                "every document finished within",
                named(
                    "min-max of per_document_runs.ttft_s",
                    lambda d: (
                        f"{min(d['per_document_runs']['ttft_s']):.0f}-{max(d['per_document_runs']['ttft_s']):.0f}"
                    ),
                ),
                {"shown": "(TTFT {} s)"},
            ),
            (
                "publish one by one",
                named("batched_run.ttft_s", lambda d: ", ".join(map(str, d["batched_run"]["ttft_s"]))),
                {"shown": "(TTFT {} s)"},
            ),
        ],
    ),
    # docs/architecture.md
    *prose(
        "docs/architecture.md",
        "pipeline.json",
        [
            ("so start-up (", "ray_train_startup_s", {"shown": "({} s here to the workers' training function"}),
            ("so start-up (", "bulk_model_load_s", {"shown": "then {} s to load the model"}),
            (
                "fixed cost per document measured at",
                "per_doc_overhead_fraction",
                {"digits": 1, "scale": 100, "shown": "{}% of its step time"},
            ),
        ],
    ),
    *prose("docs/architecture.md", "eval_lift_qwen.json", [("same checks) answered", right_of("lift"), {})]),
    *prose("docs/architecture.md", "eval.json", [("on the same two documents, and", right_of("lift"), {})]),
    *prose(
        "docs/architecture.md",
        "synth.json",
        [
            (
                "and every sentence then had one",
                "engines.vllm_batch16.grounded_sentence_fraction",
                {**PERCENT, "shown": "({}%,"},
            ),
            ("and every sentence then had one", "engines.vllm_batch16.qa_pairs", {"shown": "{} pairs)"}),
        ],
    ),
    # docs/operations.md
    *prose(
        "docs/operations.md",
        "pipeline.json",
        [
            ("`benchmarks/bench_pipeline.py` LIFTed", "settings.main_document_sentences", {"shown": "an {}-sentence"}),
            ("`benchmarks/bench_pipeline.py` LIFTed", "ttft.0.tokens", {"shown": "({}-token)"}),
            ("`benchmarks/bench_pipeline.py` LIFTed", "settings.qa_per_sentence", {"shown": "m = {} and"}),
            ("`benchmarks/bench_pipeline.py` LIFTed", "settings.epochs", {"shown": "and {} epochs"}),
            ("`benchmarks/bench_pipeline.py` LIFTed", "sequential_s", {"shown": "{} s end to end generating first"}),
            ("`benchmarks/bench_pipeline.py` LIFTed", "pipelined_s", {"shown": "{} s training while generating"}),
        ],
    ),
    *prose(
        "docs/operations.md",
        "synth.json",
        [
            (
                "`benchmarks/bench_synth.py` measured the vLLM",
                "engines.vllm_batch16.output_tokens_per_s",
                {"digits": 0, "shown": "generator at {} output tokens/s"},
            ),
            (
                "`benchmarks/bench_synth.py` measured the vLLM",
                "engines.vllm_batch16.qa_pairs_per_s",
                {"digits": 2, "shown": "{} QA pairs/s"},
            ),
            ("`benchmarks/bench_synth.py` measured the vLLM", "qa_per_sentence", {"shown": "at m = {}."}),
            ("which on the embedded model", "engines.vllm_batch16.retried_sentences", {"shown": "touched {} of"}),
            ("which on the embedded model", "engines.vllm_batch16.sentences", {"shown": "of {} sentences"}),
        ],
    ),
    # docs/evaluation.md: the "Recipes" table, one row per run (and method)
    *[
        quote
        for row, source, method in [
            ("| sft (the paper's loss) |", "eval_recipe_sft.json", "lift"),
            ("| sft + distill |", "eval_recipe_distill.json", "lift_sft_distill"),
            ("| distill |", "eval_recipe_distill.json", "lift_distill"),
            ("| sft, sentence-grounded pairs only |", "eval_recipe_sentence_only.json", "lift"),
            ("| sft + guard", "eval_recipe_guard.json", "lift"),
            ("| sft + sentence answers |", "eval_recipe_sentence_answers.json", "lift"),
            ("| sft, answer-aware spans |", "eval_recipe_spans.json", "lift"),
            ("| sft, answer-aware spans + sentence answers |", "eval_recipe_spans_sentences.json", "lift"),
            ("| sft + sentence answers **under their own prompt** |", "eval_recipe_sentence_prompt.json", "lift"),
            ("| the same, for one question per sentence |", "eval_recipe_sentence_prompt_one.json", "lift"),
            ("**asked by reciting**: the adapter says", "eval_recite.json", "lift_recite"),
            ("| the same adapter's recital, read by the base model |", "eval_recite.json", "lift_recite_base"),
            ("| **recite, then the answer line**", "eval_recite_answer.json", "lift_recite_answer"),
            ("| the same recipe on **m = 10** pairs", "eval_recite_answer_10qa.json", "lift_recite_answer_10qa"),
            ("| the default recipe **plus off-document recitals**", "eval_offdoc.json", "lift_recite_offdoc"),
            ("| the default recipe **plus question rewrites**", "eval_rewrites.json", "lift_recite_rewrites"),
        ]
        for quote in prose(
            "docs/evaluation.md",
            source,
            [
                *[(row, f"{method}.{key}", {"digits": 3}) for key in RECIPE_ROW_KEYS],
                (row, f"{method}.train_seconds_per_document", {"digits": 0}),
            ],
        )
    ],
    *prose(
        "docs/architecture.md",
        "eval_recipe_spans.json",
        [("`spans` raised the share of", "lift.qa_coverage.in_generated_qa", {"digits": 3, "shown": "to {},"})],
    ),
    *prose(
        "docs/architecture.md",
        "eval_recipe_sft.json",
        [("`spans` raised the share of", "lift.qa_coverage.in_generated_qa", {"digits": 3, "shown": "from {} to"})],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recipe_sentence_answers.json",
        [
            ("raises `contains` from 0.318 to", "lift.contains", {"digits": 3, "shown": "to {} ("}),
            ("raises `contains` from 0.318 to", right("lift"), {"shown": "({} of 85)"}),
            ("paraphrased questions from 0.323 to", "lift.by_kind.paraphrase.contains", {"digits": 3}),
            ("so exact match falls", "lift.exact_match", {"digits": 3, "shown": "→ {})"}),
            ("It doubles the examples:", "lift.train_seconds_per_document", {"digits": 0, "shown": "{} s"}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recipe_sentence_prompt.json",
        [
            ("`contains` 0.318 →", "lift.contains", {"digits": 3, "shown": "0.318 → {},"}),
            ("exact match 0.282 →", "lift.exact_match", {"digits": 3, "shown": "0.282 → {},"}),
            ("F1 0.347 →", "lift.f1", {"digits": 3, "shown": "0.347 → {} against"}),
            ("in-QA questions answered rises to", "lift.qa_coverage.right_when_in_qa", {"digits": 3}),
            ("the same `in QA` share", "lift.qa_coverage.in_generated_qa", {"digits": 3, "shown": "share ({})"}),
            ("its train s/doc (", "lift.train_seconds_per_document", {"digits": 0, "shown": "s/doc ({})"}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recite.json",
        [
            ("(`lift_recite`, the adapter reading its own recital) answers", "lift_recite.contains", {"digits": 3}),
            ("85 questions against", "lift_sentences.contains", {"digits": 3, "shown": "against {} when"}),
            ("exact match falls (", "lift_recite.exact_match", {"digits": 3, "shown": "falls ({})"}),
            ("(`lift_recite_base`:", "lift_recite_base.contains", {"digits": 3, "shown": "`lift_recite_base`: {},"}),
            ("(`lift_recite_base`:", "lift_recite_base.exact_match", {"digits": 3, "shown": "EM {}:"}),
            ("`stage_seconds_per_document.train_s`, is", "lift.stage_seconds_per_document.train_s", {"digits": 0}),
            ("per document for sft,", "lift_sentences.stage_seconds_per_document.train_s", {"digits": 0}),
            (
                "answering by reciting takes 0.94 s per question",
                "lift_sentences.answer_seconds_per_question",
                {"digits": 2, "shown": "against {} s"},
            ),
            ("The synthesis of this QA took", "lift.stage_seconds_per_document.generate_s", {"digits": 0}),
            ("its sft row:", "lift.train_seconds_per_document", {"digits": 0, "shown": "row: {} s"}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recite_answer.json",
        [
            ("every recipe measured on every score: `contains`", "lift_recite_answer.contains", {"digits": 3}),
            ("exact match 0.388, F1", "lift_recite_answer.exact_match", {"digits": 3, "shown": "exact match {},"}),
            ("exact match 0.388, F1", "lift_recite_answer.f1", {"digits": 3, "shown": "F1 {},"}),
            (
                "F1 0.468, paraphrased questions",
                "lift_recite_answer.by_kind.paraphrase.contains",
                {"digits": 3, "shown": "questions\n{}"},
            ),
            ("the in-QA questions answered", "lift_recite_answer.qa_coverage.right_when_in_qa", {"digits": 3}),
            ("more general questions kept (", "lift_recite_answer.general_contains", {"digits": 3}),
            (
                "and 219 s with the answer line",
                "lift_recite_answer.stage_seconds_per_document.train_s",
                {"digits": 0, "shown": "and {} s with"},
            ),
            ("answering by reciting takes", "lift_recite_answer.answer_seconds_per_question", {"digits": 2}),
            (
                "plus 219 s with the default recipe",
                "lift_recite_answer.stage_seconds_per_document.train_s",
                {"digits": 0, "shown": "plus {} s"},
            ),
            (
                "sft's training time (",
                "lift_recite_answer.stage_seconds_per_document.train_s",
                {"digits": 0, "shown": "time ({} s against"},
            ),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recipe_sentence_prompt_one.json",
        [
            ("read from the cache:", "lift.train_seconds_per_document", {"digits": 0, "shown": "cache: {} s"}),
            ("gains nothing over sft (", "lift.contains", {"digits": 3, "shown": "sft ({} /"}),
            ("gains nothing over sft (", "lift.exact_match", {"digits": 3, "shown": "/ {})"}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recipe_spans.json",
        [
            (
                "the share of questions whose answer is in the QA rises",
                "lift.qa_coverage.in_generated_qa",
                {"digits": 3},
            ),
            ("but the adapter answers fewer of them", "lift.qa_coverage.right_when_in_qa", {"digits": 3}),
            ("so `contains` gains only", "lift.contains", {"digits": 3, "shown": "→ {}."}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_rewrites.json",
        [
            *[
                ("the **first** `Answer:` line read", f"lift_recite_answer.{key}", {"digits": 3})
                for key in RECIPE_ROW_KEYS
            ],
            ("the adapters answer fewer questions, not more", "lift_recite_rewrites.contains", {"digits": 3}),
            ("the adapters answer fewer questions, not more", "lift_recite_answer.contains", {"digits": 3}),
            ("the directly worded questions worst", "lift_recite_rewrites.by_kind.direct.contains", {"digits": 2}),
            ("the directly worded questions worst", "lift_recite_answer.by_kind.direct.contains", {"digits": 2}),
            ("general questions 0.242", "lift_recite_rewrites.general_contains", {"digits": 3}),
            ("general questions 0.242", "lift_recite_answer.general_contains", {"digits": 3}),
            (
                "training took 276 s per document",
                "lift_recite_rewrites.stage_seconds_per_document.train_s",
                {"digits": 0},
            ),
            ("score\n`contains` 0.494", "lift_recite_answer.contains", {"digits": 3}),
            ("score\n`contains` 0.494", "lift_recite_answer.exact_match", {"digits": 3}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recite_answer.json",
        [
            (
                "against the default's 219 s",
                "lift_recite_answer.stage_seconds_per_document.train_s",
                {"digits": 0, "shown": "default's {} s"},
            )
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_offdoc.json",
        [
            ("(0.482 and 0.388 read at the last line", "lift_recite_answer.contains", {"digits": 3}),
            ("(0.482 and 0.388 read at the last line", "lift_recite_answer.exact_match", {"digits": 3}),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_offdoc.json",
        [
            *[
                ("| the default recipe's adapters again", f"lift_recite_answer.{key}", {"digits": 3})
                for key in RECIPE_ROW_KEYS
            ],
            ("it answers 0.317 of the general", "lift_recite_answer.general_contains", {"digits": 3}),
            ("says that the base model answers the bare", "lift_recite_offdoc.general_contains", {"digits": 3}),
            ("(`contains` 0.377\nagainst", "lift_recite_offdoc.contains", {"digits": 3}),
            ("(`contains` 0.377\nagainst", "lift_recite_answer.contains", {"digits": 3, "shown": "default's {};"}),
            (
                "It trained in\n269 s per document",
                "lift_recite_offdoc.stage_seconds_per_document.train_s",
                {"digits": 0, "shown": "{} s per"},
            ),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recite_answer_10qa.json",
        [
            (
                "(in QA 0.859 against",
                "lift_recite_answer_10qa.qa_coverage.in_generated_qa",
                {"digits": 3, "shown": "(in QA {} against"},
            ),
            (
                "adapter answers fewer of them (0.425",
                "lift_recite_answer_10qa.qa_coverage.right_when_in_qa",
                {"digits": 3, "shown": "({} against"},
            ),
            ("`contains` falls from 0.482 to", "lift_recite_answer_10qa.contains", {"digits": 3, "shown": "to {}"}),
            ("`contains` falls from 0.482 to", "lift_recite_answer_10qa.exact_match", {"digits": 3, "shown": "EM {})"}),
            (
                "Its training took 398 s per",
                "lift_recite_answer_10qa.stage_seconds_per_document.train_s",
                {"digits": 0, "shown": "took {} s per"},
            ),
            (
                "were asked by reciting\n(0.367)",
                "lift_recite_answer_10qa.general_contains",
                {"digits": 3, "shown": "({})"},
            ),
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recite_answer.json",
        [
            (
                "(in QA 0.859 against",
                "lift_recite_answer.qa_coverage.in_generated_qa",
                {"digits": 3, "shown": "against {})"},
            ),
            (
                "adapter answers fewer of them (0.425",
                "lift_recite_answer.qa_coverage.right_when_in_qa",
                {"digits": 3, "shown": "against {})"},
            ),
            ("`contains` falls from", "lift_recite_answer.contains", {"digits": 3, "shown": "from {} to"}),
        ],
    ),
    *prose(
        "README.md",
        "eval_recite_answer.json",
        [("| `train.sentence_answers` | true", "lift_recite_answer.contains", {"digits": 2, "shown": "({} against"})],
    ),
    *prose(
        "README.md",
        "eval_recite.json",
        [("| `train.sentence_answers` | true", "lift.contains", {"digits": 2, "shown": "against {})"})],
    ),
    # docs/evaluation.md: the larger base model (student) in "Recipes"
    *prose(
        "docs/evaluation.md",
        "eval_qwen_student.json",
        [
            ("**Qwen2.5-Coder-0.5B as the base model**", "lift.contains", {"digits": 3}),
            ("**Qwen2.5-Coder-0.5B as the base model**", "lift.exact_match", {"digits": 3}),
            ("**Qwen2.5-Coder-0.5B as the base model**", "lift.general_contains", {"digits": 3}),
            ("**Qwen2.5-Coder-0.5B as the base model**", "lift.train_seconds_per_document", {"digits": 0}),
            ("Reading the whole document Qwen", "icl.contains", {"digits": 3, "shown": "(ICL contains {}"}),
            ("Reading the whole document Qwen", "icl.general_contains", {"digits": 3, "shown": "questions {} against"}),
            ("but its adapter is not:", "lift.contains", {"digits": 3, "shown": "not: {} contains"}),
            ("but its adapter is not:", "lift.exact_match", {"digits": 3, "shown": "EM {},"}),
            ("Training took", "lift.train_seconds_per_document", {"digits": 0, "shown": "took {} s"}),
        ],
    ),
    # docs/evaluation.md: the long-document setting, emulated (a quarter of each document for ICL)
    *prose(
        "docs/evaluation.md",
        "eval_quarter_icl.json",
        [
            *[
                (row, f"{method}.{key}", {"digits": 3})
                for row, method in [
                    ("| ICL, a quarter of the document |", "icl"),
                    ("| LIFT adapter, no document |", "lift"),
                    ("| LIFT adapter + the same quarter |", "lift_icl"),
                ]
                for key in ("contains", "exact_match", "f1", "by_kind.paraphrase.contains")
            ],
            ("| ICL, a quarter of the document |", "icl.context_read_share", {"digits": 3}),
            ("| LIFT adapter + the same quarter |", "lift_icl.context_read_share", {"digits": 3}),
            ("LIFT + quarter ICL is", ratio("lift_icl.contains", "icl.contains"), {"digits": 2, "shown": "is {}x"}),
        ],
    ),
    # docs/evaluation.md: "Costs" (the grid's own cost fields are null: it reused adapters)
    *prose(
        "docs/evaluation.md",
        "eval_lift_qwen.json",
        [("**Costs.**", "lift.train_seconds_per_document", {"digits": 0, "shown": "costs {} s per"})],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_recipe_sft.json",
        [
            (
                "training alone, from the QA cache,",
                "lift.train_seconds_per_document",
                {"digits": 0, "shown": "cache, {} s"},
            )
        ],
    ),
    *prose(
        "docs/evaluation.md",
        "eval_qwen_niah.json",
        [
            (
                "On the two documents of the NIAH run",
                "lift_10qa.train_seconds_per_document",
                {"digits": 0, "shown": "cost {} s per"},
            ),
            (
                "On the two documents of the NIAH run",
                "finetune_raw.train_seconds_per_document",
                {"digits": 0, "shown": "Finetune-Raw {} s"},
            ),
        ],
    ),
    # README.md: the evaluation figures in "Benchmarks" (not the demo paragraph at the top)
    *prose(
        "README.md",
        "eval.json",
        [
            ("LIFT adapters of the 135M model answer", right_of("lift"), {"shown": "answer {} questions"}),
            ("(m = 10 pairs per sentence:", right("lift_10qa"), {"shown": "sentence: {};"}),
            ("(m = 10 pairs per sentence:", right("base"), {"shown": "model: {};"}),
            ("(m = 10 pairs per sentence:", right("finetune_raw"), {"shown": "Finetune-Raw: {})"}),
            ("find the needle in all", needles_found, {"shown": "all {} haystacks"}),
        ],
    ),
]


def region(quote: Quote) -> str:
    text = (REPO / quote.doc).read_text()
    if quote.section is None:
        return text
    start, end = f"<!-- bench:{quote.section} -->", f"<!-- /bench:{quote.section} -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"{quote.doc} has no single section {start}"
    return text[text.index(start) : text.index(end)]


def near(text: str, anchor: str) -> str:
    """The text a figure of `anchor` (once in `text`) may be in: the anchor's table row, else the anchor and
    the WINDOW characters after it."""
    at = text.index(anchor)
    line_start = text.rfind("\n", 0, at) + 1
    if text.startswith("|", line_start):
        line_end = text.find("\n", at)
        return text[line_start : line_end if line_end >= 0 else len(text)]
    return text[at : at + len(anchor) + WINDOW]


def follows(text: str, anchor: str, figure: str) -> bool:
    """Whether `figure` is near `anchor`, and not as part of a longer number."""
    pattern = re.escape(figure)
    if figure[:1].isdigit():
        pattern = r"(?<![\d.])" + pattern
    if figure[-1:].isdigit():
        pattern += r"(?!\.?\d)"
    return re.search(pattern, near(text, anchor)) is not None


@pytest.mark.parametrize("quote", QUOTES, ids=str)
def test_a_quoted_figure_matches_its_results_file(quote: Quote) -> None:
    text = region(quote)
    count = text.count(quote.anchor)
    assert count == 1, f"{quote}: the anchor occurs {count} times; it must occur once"
    figure = quote.expected()
    assert follows(text, quote.anchor, figure), f"{quote}: {figure!r} is not in {near(text, quote.anchor)!r}"


def test_the_quotes_cover_every_generated_section_and_name_results_that_exist() -> None:
    assert {quote.source for quote in QUOTES} <= {path.name for path in RESULTS.glob("*.json")}
    sections = set(re.findall(r"<!-- bench:(\w+) -->", (REPO / BENCH).read_text()))
    assert sections == {quote.section for quote in QUOTES if quote.section}


@pytest.mark.parametrize(
    ("text", "figure", "found"),
    [
        ("| speedup | 0.96 |", "0.96", True),
        ("| speedup | 10.96 |", "0.96", False),  # the end of a longer number
        ("| speedup | 0.961 |", "0.96", False),  # the start of one
        ("| speedup | 0.9 |\n| other | 0.96 |", "0.96", False),  # not in the anchor's row
        ("| 3 documents | speedup | 0.9 |", "3 documents", True),  # anywhere in the anchor's row
        ("speedup was 137.", "137", True),
        ("speedup was 137.5", "137", False),
        ("speedup " + "x" * WINDOW + " 137", "137", False),  # too far from the anchor
    ],
)
def test_a_figure_counts_only_whole_and_near_its_anchor(text: str, figure: str, found: bool) -> None:
    anchor = "| speedup |" if text.startswith("|") else "speedup"
    assert follows(text, anchor, figure) is found


def test_figures_are_rounded_half_up_as_the_docs_write_them() -> None:
    assert written(136.5, 0, 1.0) == "137"  # Python's round() would say 136
    assert written(0.035, 1, 100) == "3.5"
    assert written(22981.0, 0, 0.001) == "23"
    assert written(10.0, None, 1.0) == "10.0" and written(1000, None, 1.0) == "1000"
