"""Time to the first answer, the paper's way: from a document's arrival to the first token from its adapter.

    .venv/bin/python -m benchmarks.bench_ttft [--lengths 256 512 1024 2048 4096] [--short-sentences 4]
                                              [--config lift.yaml] [--set key=value ...]

For each document length (in tokens of the base model's tokenizer; invented-fact documents the base model
cannot know, `testkit.bench.make_document`), on one local Ray instance with the CPU benchmarks' settings
(`BENCH_DEFAULTS`: m=2, 2 epochs, two trainer workers in the bulk path; `TTFT_DEFAULTS`: one generation call
per batch of 8 sentences, a draft after epoch 1), each in a fresh namespace:

- `generation_only_s`: the warm worker's generator writing the document's QA (engine loaded; the warm worker
  generates a document's QA before training it, nothing else running: its report's `generate_s`);
- `ttft_warm_s`: arrival → LIFTed on a warm worker (`online.WarmPool`, generator and trainer loaded before the
  document came, as the paper measures) → the first token of an answer from its adapter;
- `draft_s`: arrival → the draft adapter (after epoch 1) published, servable;
- `ttft_cold_s`: today's cold path, `lift_documents` in a Ray task (generator actors and a Ray Train worker
  group started for the document, as online LIFT does with `online_lift.warm_workers: false`) → first token.

The first token comes from an `AdapterService` (hf engine, base model loaded once in this process): attach the
adapter from the store, stream, take the first chunk. Online LIFT's batch window is left out of both paths.
A 4-sentence document (`--short-sentences`) is measured the same way beside the lengths: the issue's
comparison with today's online TTFT. Writes docs/results/ttft.json, docs/results/ttft.png and the `ttft`
section of docs/benchmarks.md. Not a test: compare the ratios from one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig, ServeConfig
from lift_ray.documents import Document
from lift_ray.online import WarmPool, for_namespace
from lift_ray.pipeline import lift_documents, sentence_count
from lift_ray.report import DocumentReport
from testkit.bench import (
    RESULTS_DIR,
    add_config_arguments,
    bench_config,
    device_description,
    make_document,
    markdown_table,
    update_benchmarks_section,
    write_results,
)

# Each measurement generates anew (the sentence cache would answer the second path from the first's QA), and
# a draft follows the first epoch, as in online runs (`online_lift.draft_after_epochs`).
# One generation call per batch of sentences (the paper's: m pairs per sentence), not the CPU preset's extra
# stages (answer-aware questions, verification, retries), which multiply generation time on 2 cores.
TTFT_DEFAULTS = [
    "generator.sentence_cache=false",
    "train.draft_after_epochs=1",
    "generator.answer_aware='off'",
    "generator.verify_answers=false",
    "generator.max_retries=0",
    "generator.batch_size=8",
]
PAPER_TTFT_8K_S = 10.0  # "TTFT under 10 seconds for context lengths up to 8K" (the LIFT paper, Figure 6a; GPU)
QUESTION = "Who built the bronze clock?"


def document_of(tokens: int, tokenizer: Any, doc_id: str) -> Document:
    """An invented-fact document of at least `tokens` tokens (whole sentences)."""
    sentences = 1
    while len(tokenizer(make_document(doc_id, sentences).text)["input_ids"]) < tokens:
        sentences += 1
    return make_document(doc_id, sentences)


def first_token_s(service: Any, namespace: str, doc_id: str) -> float:
    """Seconds to attach the document's adapter from the store and stream the first chunk of an answer."""
    from lift_ray.serving.service import AnswerRequest

    started = time.perf_counter()
    service.attach(namespace, doc_id)
    question = [{"role": "user", "content": QUESTION}]
    chunks = service.stream(AnswerRequest(namespace, doc_id, messages=question, max_new_tokens=8))
    next(chunks)
    chunks.close()
    return time.perf_counter() - started


def lifted(report: DocumentReport, what: str) -> DocumentReport:
    if report.status != "published":
        raise RuntimeError(f"{what}: {report.doc_id} was not published: {report.error}")
    return report


def measure_warm(pool: WarmPool, service: Any, base: LiftConfig, document: Document, tag: str) -> dict[str, float]:
    """generation_only_s, ttft_warm_s and draft_s of one document on the (loaded) warm worker.

    The warm worker generates all of a document's QA before training it, with nothing else running, so its
    report's `generate_s` is the document's generation-only time.
    """
    config = for_namespace(base, f"warm-{tag}")
    arrived = time.perf_counter()
    [report] = pool.lift([document], config)
    lift_s = time.perf_counter() - arrived
    lifted(report, "warm")
    ttft = lift_s + first_token_s(service, config.storage.namespace, document.doc_id)
    # The report's draft time counts from the worker taking the batch; add the hand-over before it.
    handover = lift_s - report.timings["ttft_s"]
    generation_only = report.timings["generate_s"]
    logging.info("%s: %d QA pairs in %.1f s; warm TTFT %.1f s", tag, report.qa_count, generation_only, ttft)
    return {
        "generation_only_s": round(generation_only, 2),
        "ttft_warm_s": round(ttft, 2),
        "draft_s": round(report.timings["draft_s"] + max(0.0, handover), 2),
        "qa_count": report.qa_count,
    }


def measure_cold(service: Any, base: LiftConfig, document: Document, tag: str) -> dict[str, float]:
    """ttft_cold_s of one document: `lift_documents` in a Ray task, as online LIFT without warm workers."""
    import ray

    config = for_namespace(base, f"cold-{tag}")
    arrived = time.perf_counter()
    [report] = ray.get(ray.remote(num_cpus=0, max_retries=0)(lift_documents).remote([document], config))
    lift_s = time.perf_counter() - arrived
    lifted(report, "cold")
    ttft = lift_s + first_token_s(service, config.storage.namespace, document.doc_id)
    logging.info("%s: cold TTFT %.1f s", tag, ttft)
    return {"ttft_cold_s": round(ttft, 2), "cold_draft_s": report.timings.get("draft_s")}


def slope_s_per_1k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of seconds over thousands of tokens."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n / 1000
    mean_y = sum(y for _, y in points) / n
    num = sum((x / 1000 - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x / 1000 - mean_x) ** 2 for x, _ in points)
    return num / den if den else float("nan")


def plot(figures: dict[str, Any], path: Path) -> None:
    """TTFT over document length: warm, cold, draft, generation only; the paper's GPU bound at 8K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["lengths"]
    tokens = [row["tokens"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in [
        ("ttft_cold_s", "cold (today's online path)", "s-"),
        ("ttft_warm_s", "warm workers", "o-"),
        ("draft_s", "draft adapter servable (warm)", "^--"),
        ("generation_only_s", "QA generation only (warm)", "x:"),
    ]:
        ax.plot(tokens, [row[key] for row in rows], style, label=label)
    ax.plot([8192], [PAPER_TTFT_8K_S], "v", color="black", markersize=9, label="paper: TTFT < 10 s at 8K (GPU)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document tokens")
    ax.set_ylabel("seconds")
    ax.set_title(f"LIFT time to first answer, {figures['device']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--short-sentences", type=int, default=4, help="the short document beside the lengths")
    add_config_arguments(parser)
    args = parser.parse_args()
    args.overrides = [*TTFT_DEFAULTS, *args.overrides]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import ray
    from transformers import AutoTokenizer

    from lift_ray.models import resolve_base_model
    from lift_ray.serving.service import AdapterService

    with tempfile.TemporaryDirectory(prefix="bench-ttft-") as tmp:
        base = bench_config(args, tmp)
        model_dir = resolve_base_model(base.model.base_model, Path(base.model.cache_dir))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        documents = {f"{n}": document_of(n, tokenizer, f"doc{n}") for n in args.lengths}
        documents["short"] = make_document("short", args.short_sentences)
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False)
        serve_config = ServeConfig(
            model=base.model, storage=base.storage, engine="hf", adapter_cache_dir=Path(tmp) / "adapter-cache"
        )
        service = AdapterService(serve_config)
        pool = WarmPool(base, idle_s=0)
        started = time.perf_counter()
        pool.start()
        load_s = ray.get(pool.actor.ready.remote())
        logging.info("warm worker loaded in %.1f s (%.1f s with its actor)", load_s, time.perf_counter() - started)
        results: dict[str, dict[str, Any]] = {}
        for tag, document in documents.items():
            results[tag] = {
                "tokens": len(tokenizer(document.text)["input_ids"]),
                "sentences": sentence_count(document, base),
                **measure_warm(pool, service, base, document, tag),
            }
        pool.close()  # its CPUs go to the cold path's generator actors and trainer workers
        for tag, document in documents.items():
            results[tag].update(measure_cold(service, base, document, tag))
        ray.shutdown()

    lengths = [results[f"{n}"] for n in args.lengths]
    short = results["short"]
    figures: dict[str, Any] = {
        "device": device_description(),
        "engine": base.generator.engine,
        "settings": {
            "epochs": base.train.epochs,
            "qa_per_sentence": base.generator.qa_per_sentence,
            "draft_after_epochs": base.train.draft_after_epochs,
            "cold_num_workers": base.train.num_workers,
            "warm_load_s": round(load_s, 1),
        },
        "lengths": lengths,
        "short_document": short,
        "short_warm_over_cold": round(short["ttft_warm_s"] / short["ttft_cold_s"], 2),
        "short_draft_over_generation": round(short["draft_s"] / short["generation_only_s"], 2),
        "draft_over_generation": [round(row["draft_s"] / row["generation_only_s"], 2) for row in lengths],
        "warm_slope_s_per_1k_tokens": round(slope_s_per_1k([(r["tokens"], r["ttft_warm_s"]) for r in lengths]), 1),
        "cold_slope_s_per_1k_tokens": round(slope_s_per_1k([(r["tokens"], r["ttft_cold_s"]) for r in lengths]), 1),
        "paper_ttft_8k_below_s": PAPER_TTFT_8K_S,
    }
    write_results("ttft", figures)
    plot(figures, RESULTS_DIR / "ttft.png")
    rows = [
        [
            row["tokens"],
            row["generation_only_s"],
            row["draft_s"],
            row["ttft_warm_s"],
            row["ttft_cold_s"],
            ratio,
        ]
        for row, ratio in zip(lengths, figures["draft_over_generation"], strict=True)
    ]
    rows.append(
        [
            f"{short['tokens']} ({args.short_sentences} sentences)",
            short["generation_only_s"],
            short["draft_s"],
            short["ttft_warm_s"],
            short["ttft_cold_s"],
            figures["short_draft_over_generation"],
        ]
    )
    table = markdown_table(
        ["tokens", "generation only (s)", "draft servable (s)", "TTFT warm (s)", "TTFT cold (s)", "draft / gen."],
        rows,
    )
    update_benchmarks_section(
        "ttft",
        "## Time to first answer (`benchmarks/bench_ttft.py`)\n\n"
        f"{figures['device']}; generator engine {base.generator.engine}, real models (no stand-ins); "
        f"{figures['settings']}.\n\n{table}\n\n"
        f"Warm TTFT / cold TTFT for the {args.short_sentences}-sentence document: "
        f"{figures['short_warm_over_cold']}. Slope: {figures['warm_slope_s_per_1k_tokens']} s per 1K tokens warm, "
        f"{figures['cold_slope_s_per_1k_tokens']} cold; the paper: TTFT under {PAPER_TTFT_8K_S:g} s up to 8K "
        "tokens on a GPU (at most ~1.2 s per 1K). Plot: [ttft.png](results/ttft.png).",
    )
    print(table)


if __name__ == "__main__":
    main()
