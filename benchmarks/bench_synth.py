"""QA synthesis benchmark: engines and batch sizes on the same prompts, plus the quality of what they write.

    .venv/bin/python -m benchmarks.bench_synth [--config lift.yaml] [--set key=value ...]

Every engine gets the same prompts (every sentence of samples/orvella.txt, with its preceding paragraph),
the configured generator settings (greedy first attempt, staged retries). Per engine it measures QA pairs/s and output
tokens/s over the generation calls (engine start-up is timed separately), and the share of sentences
with at least one valid pair whose answer is grounded in the sentence (lift_ray.metrics).

Writes docs/results/synth.json, docs/results/synth.png and the `synth` table in docs/benchmarks.md.
Not a test: throughput depends on the machine; the ratios in one run are what to compare.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig, load_config
from lift_ray.documents import read_document_file, sentence_rows
from lift_ray.engines import make_engine
from lift_ray.metrics import grounded_sentence_fraction
from lift_ray.models import resolve_base_model
from lift_ray.results import REPO_ROOT
from lift_ray.synth.generator import QAGenerator
from testkit.bench import RESULTS_DIR, device_description, markdown_table, update_benchmarks_section, write_results

SAMPLE = REPO_ROOT / "samples" / "orvella.txt"
RUNS = [("vllm", 16), ("hf", 16), ("hf", 1)]


def run_engine(config: LiftConfig, engine_name: str, batch_size: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Generate QA for `rows` with one engine at one batch size; returns its figures and its pairs."""
    settings = config.generator.model_copy(update={"engine": engine_name, "batch_size": batch_size})
    model_dir = resolve_base_model(settings.model or config.model.base_model, Path(config.model.cache_dir))
    started = time.perf_counter()
    engine = make_engine(engine_name, model_dir, settings, seed=config.seed)
    startup_s = time.perf_counter() - started
    generator = QAGenerator(engine, settings, seed=config.seed)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        results += generator.generate([dict(r) for r in rows[start : start + batch_size]])
    seconds = time.perf_counter() - started
    pairs = [json.loads(r["qa_json"]) for r in results]
    pairs_by_sentence = list(zip(results, pairs, strict=True))
    qa_pairs = sum(len(p) for p in pairs)
    output_tokens = sum(int(r["output_tokens"]) for r in results)
    grounded = grounded_sentence_fraction([{"sentence": r["sentence"], "pairs": p} for r, p in pairs_by_sentence])
    figures = {
        "batch_size": batch_size,
        "sentences": len(rows),
        "qa_pairs": qa_pairs,
        "output_tokens": output_tokens,
        "seconds": round(seconds, 2),
        "startup_s": round(startup_s, 2),
        "qa_pairs_per_s": round(qa_pairs / seconds, 3),
        "output_tokens_per_s": round(output_tokens / seconds, 2),
        "malformed_outputs": sum(int(r["malformed"]) for r in results),
        "retried_sentences": sum(1 for r in results if r["retried"]),
        "ungrounded_pairs": sum(int(r["ungrounded"]) for r in results),
        "unverified_pairs": sum(int(r["unverified"]) for r in results),
        "sentences_with_pairs": sum(1 for p in pairs if p),
        "grounded_sentence_fraction": round(grounded, 4),
        "device": device_description(),
    }
    del engine, generator
    gc.collect()
    return {"figures": figures, "examples": [(r["sentence"], p) for r, p in pairs_by_sentence]}


def run_in_subprocess(spec: str, argv: list[str]) -> dict[str, Any]:
    """One engine run in a fresh process: vLLM binds the process's OpenMP threads, which slowed a later
    HF run in the same process to a fifth of its speed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.bench_synth", *argv, "--single", spec, "--out", str(out)]
        subprocess.run(command, check=True, cwd=REPO_ROOT)  # the repository root: testkit and benchmarks import
        return json.loads(out.read_text())


def plot(engines: dict[str, dict[str, Any]], out: Path) -> None:
    """Bar chart of output tokens/s and QA pairs/s per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(engines)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, label in [
        (axes[0], "output_tokens_per_s", "output tokens/s"),
        (axes[1], "qa_pairs_per_s", "QA pairs/s"),
    ]:
        axis.bar(names, [engines[n][key] for n in names], color=["tab:blue", "tab:orange", "tab:gray"][: len(names)])
        axis.set_title(label)
        axis.tick_params(axis="x", rotation=15)
    fig.suptitle("QA synthesis on the embedded model, same prompts (higher is better)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="LiftConfig YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--runs", default=",".join(f"{e}:{b}" for e, b in RUNS), help="engine:batch,...")
    parser.add_argument("--no-docs", action="store_true", help="print the figures only; write nothing under docs/")
    parser.add_argument("--single", help=argparse.SUPPRESS)  # internal: one engine:batch in this process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(LiftConfig, args.config, args.set)
    if not args.single:
        print(config.to_yaml())
    document = read_document_file(SAMPLE)
    rows = sentence_rows(document, config.sentences.context_chars, config.sentences.max_sentence_chars)
    engines: dict[str, dict[str, Any]] = {}
    examples: dict[str, Any] = {}
    if args.single:
        engine_name, batch = args.single.split(":")
        Path(args.out).write_text(json.dumps(run_engine(config, engine_name, int(batch), rows)))
        return 0
    for spec in args.runs.split(","):
        engine_name, batch = spec.split(":")
        label = f"{engine_name}_batch{batch}"
        print(f"--- {label}: {len(rows)} sentences", flush=True)
        result = run_in_subprocess(spec, argv or sys.argv[1:])
        engines[label] = result["figures"]
        examples[label] = result["examples"]
        print(json.dumps(result["figures"], indent=2))
    default_label = next(label for label in engines if label.startswith(config.generator.engine))
    figures = {
        "document": SAMPLE.name,
        "model": config.model.base_model,
        "preset": config.generator.preset,
        "qa_per_sentence": config.generator.qa_per_sentence,
        "max_new_tokens": config.generator.max_new_tokens,
        "guided_json": config.generator.vllm.guided_json,
        "engines": engines,
        "grounded_sentence_fraction": engines[default_label]["grounded_sentence_fraction"],
        "grounded_engine": default_label,
    }
    if args.no_docs:
        print(json.dumps(figures, indent=2))
        return 0
    write_results("synth", figures)
    (RESULTS_DIR / "synth_examples.json").write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n")
    plot(engines, RESULTS_DIR / "synth.png")
    base = engines.get("hf_batch1", {}).get("output_tokens_per_s")
    table = markdown_table(
        ["engine", "batch", "output tokens/s", "QA pairs/s", "vs HF batch 1", "start-up s", "grounded sentences"],
        [
            [
                label.rsplit("_batch", 1)[0],
                f["batch_size"],
                f["output_tokens_per_s"],
                f["qa_pairs_per_s"],
                f"{f['output_tokens_per_s'] / base:.1f}x" if base else "-",
                f["startup_s"],
                f"{f['grounded_sentence_fraction']:.0%}",
            ]
            for label, f in engines.items()
        ],
    )
    device = next(iter(engines.values()))["device"]
    update_benchmarks_section(
        "synth",
        f"## QA synthesis (`benchmarks/bench_synth.py`)\n\n"
        f"{device}: {len(rows)} sentences of `samples/{SAMPLE.name}`, "
        f"m={config.generator.qa_per_sentence}, preset `{config.generator.preset}`, greedy first attempt, "
        f"up to {config.generator.max_retries} retries ({config.generator.samples_per_retry} sampled candidates each "
        f"from the second on), require_grounded={config.generator.require_grounded}, "
        f"max_new_tokens={config.generator.max_new_tokens}. Figures: `docs/results/synth.json`; "
        f"generated pairs: `docs/results/synth_examples.json`.\n\n{table}\n\n"
        "![synthesis throughput](results/synth.png)",
    )
    print(f"grounded_sentence_fraction ({default_label}): {figures['grounded_sentence_fraction']:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
