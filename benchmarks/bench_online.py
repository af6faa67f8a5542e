"""Online LIFT benchmark: documents posted together, LIFTed one run each against one batched run.

    .venv/bin/python -m benchmarks.bench_online [--documents 3] [--sentences 4] [--window 2]
                                                [--config lift.yaml] [--set key=value ...]

What `POST /v1/documents` does when several documents arrive close together, without the HTTP layer: the
same `run_online_lift` Ray task the endpoint starts, on one local Ray instance, with the benchmark settings
of `benchmarks/bench_pipeline.py` (2 epochs, m=2, invented-fact documents; `--set` to change them):

1. one run per document, as the endpoint did before batching (today: `online_lift.batch_window_s: 0` with
   `max_running_batches` at least the number of documents): `--documents` tasks started at once, each
   calling `lift_documents([document])`, so each pays its own generator and Ray Train start-up, and they
   compete for the same cores;
2. one batched run (the default window): the same documents, after waiting `--window` seconds (the batch
   window the endpoint waits for more documents), in one task calling `lift_documents(documents)`.

Each in a fresh namespace (no QA cache). Per document: TTFT = its `queued` record written → its final record
written (adapter servable). Writes docs/results/online_batch.json and the `online_batch` table in
docs/benchmarks.md. Not a test: compare the ratios from one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from typing import Any

from lift_ray import online
from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.storage import Store
from testkit.bench import (
    add_config_arguments,
    bench_config,
    device_description,
    make_document,
    markdown_table,
    update_benchmarks_section,
    write_results,
)


def lift_posted(base: LiftConfig, documents: list[Document], namespace: str, window_s: float | None) -> dict[str, Any]:
    """LIFT `documents` as the endpoint would: one task each (`window_s` None) or one batch after `window_s`."""
    import ray

    config = online.for_namespace(base, namespace)
    store = Store.from_uri(config.storage.root)
    task = online.online_lift_task
    started = time.perf_counter()
    records = [online.new_record(document, namespace, config.adapter_hash(), "text") for document in documents]
    for record in records:
        online.write_status(store, record)
    if window_s is None:
        pairs = zip(records, documents, strict=True)
        runs = ray.get([task.remote([record], [document], config) for record, document in pairs])
        finals = [final for run in runs for final in run]
    else:
        time.sleep(window_s)
        finals = ray.get(task.remote(records, documents, config))
    wall = time.perf_counter() - started
    failed = [final for final in finals if final["status"] != "published"]
    if failed:
        raise RuntimeError(f"{namespace}: not published: {failed}")
    ttft = [online.seconds_between(final["submitted_at"], final["finished_at"]) for final in finals]
    logging.info("%s: %.1f s, TTFT %s", namespace, wall, [round(t, 1) for t in ttft])
    return {
        "wall_s": round(wall, 1),
        "ttft_s": [round(t, 1) for t in ttft],
        "mean_ttft_s": round(statistics.mean(ttft), 1),
        "train_s": [final["timings"].get("train_s") for final in finals],
        "generate_s": [final["timings"].get("generate_s") for final in finals],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--documents", type=int, default=3, help="documents posted together")
    parser.add_argument("--sentences", type=int, default=4, help="sentences per document")
    parser.add_argument("--window", type=float, default=2.0, help="the batch window (online_lift.batch_window_s)")
    add_config_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import ray

    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        base = bench_config(args, tmp)
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False)
        documents = [
            make_document(f"posted{k}", args.sentences, first=k * args.sentences) for k in range(args.documents)
        ]
        per_document = lift_posted(base, documents, "per-document", None)
        batched = lift_posted(base, documents, "batched", args.window)
        ray.shutdown()

    figures = {
        "device": device_description(),
        "engine": base.generator.engine,
        "settings": {
            "documents": args.documents,
            "sentences": args.sentences,
            "epochs": base.train.epochs,
            "qa_per_sentence": base.generator.qa_per_sentence,
            "num_workers": base.train.num_workers,
            "batch_window_s": args.window,
        },
        "per_document_runs": per_document,
        "batched_run": batched,
        "per_document_runs_s": per_document["wall_s"],
        "batched_s": batched["wall_s"],
        "speedup": round(per_document["wall_s"] / batched["wall_s"], 2),
        "mean_ttft_ratio": round(batched["mean_ttft_s"] / per_document["mean_ttft_s"], 2),
    }
    write_results("online_batch", figures)
    rows = [
        [f"{args.documents} documents posted together, one run each (s)", figures["per_document_runs_s"]],
        [f"the same in one batched run, after a {args.window:g} s window (s)", figures["batched_s"]],
        ["speedup", figures["speedup"]],
        ["mean TTFT, one run each / batched (s)", f"{per_document['mean_ttft_s']} / {batched['mean_ttft_s']}"],
    ]
    table = markdown_table(["online LIFT", "value"], rows)
    update_benchmarks_section(
        "online_batch",
        f"## Online LIFT: documents posted together (`benchmarks/bench_online.py`)\n\n"
        f"{figures['device']}; engine {base.generator.engine}; {figures['settings']}.\n\n{table}",
    )
    print(table)


if __name__ == "__main__":
    main()
