"""The LIFT pipeline, top to bottom: read → sentences → QA → train → publish.

Each stage is a plain function elsewhere in the package; this module is the Ray wiring:
Ray Data splits documents into sentence rows and runs generator actors over them, Ray Train
fine-tunes one LoRA adapter per document, and the store publishes it with its manifest last.

With `train.pipeline=streaming` (default) the generator's Ray Dataset is the trainer's input: epoch 1 of
a document trains on its QA pairs as they are generated, and one TorchTrainer run serves every document
(see lift_ray/train/trainer.py and docs/training.md). `sequential` generates all QA first, then trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import Document, DocumentError, sentence_rows
from lift_ray.report import DocumentReport
from lift_ray.storage import (
    Store,
    document_prefix,
    read_json_lines,
    read_manifest,
    write_json_lines,
)
from lift_ray.train.dataset import distinct_sentences, generation_counters, qa_pairs_from_rows
from lift_ray.train.loop import DocumentJob

log = logging.getLogger(__name__)

SPLIT_TASK_CPUS = 0.25


def qa_cache_key(document: Document, config: LiftConfig) -> str:
    """Cache key of a document's synthetic QA: its content and everything about the generator that matters."""
    parts = {
        "doc_sha256": document.sha256,
        **config.generator_fingerprint(),
        "sentences": config.sentences.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def qa_cache_path(namespace: str, document: Document, config: LiftConfig) -> str:
    """Store key of a document's QA cache (JSONL, one row per sentence)."""
    return f"{document_prefix(namespace, document.doc_id)}/qa/{qa_cache_key(document, config)}.jsonl"


def ensure_ray() -> None:
    """Connect to the Ray cluster of this job (or start a local one); a dead one fails in bounded time."""
    from lift_ray.ray_connect import connect_ray

    connect_ray(log_to_driver=True)


def blocks_of(dataset: Any, rows: int, num_cpus: float) -> Any:
    """`dataset` cut into blocks of `rows` rows as it streams (`repartition(target_num_rows_per_block=...)`).

    Why: a map task hands its output on only when its whole input block is done, and the split emits one
    block per document, so without this a document's QA reached the trainer only once all of it was
    generated. The cutting tasks ask for `num_cpus`: `Dataset.repartition` takes no resources, and its
    default of one CPU per task waits forever behind generator actors and trainer workers on a small node
    (it hung a 2-CPU cluster), hence the one private field set here (Ray 2.60's `StreamingRepartition`).
    """
    cut = dataset.repartition(target_num_rows_per_block=rows, strict=True)
    operator = cut._logical_plan.dag
    if type(operator).__name__ != "StreamingRepartition" or not hasattr(operator, "ray_remote_args"):
        raise RuntimeError(f"this Ray's repartition plans {type(operator).__name__}: blocks_of needs updating")
    object.__setattr__(operator, "ray_remote_args", {**operator.ray_remote_args, "num_cpus": num_cpus})
    return cut


def build_qa_stream(documents: list[Document], config: LiftConfig) -> Any:
    """The lazy Ray Dataset of QA: documents → sentence rows → generator actors → rows with `qa_json`."""
    import ray.data

    from lift_ray.engines import engine_runtime_env
    from lift_ray.synth.generator import QAGeneratorActor

    settings = config.generator
    dataset = ray.data.from_items([{"doc_id": d.doc_id, "text": d.text, "sha256": d.sha256} for d in documents])
    sentences = dataset.flat_map(
        lambda row: sentence_rows(
            Document(row["doc_id"], row["text"], row["sha256"]),
            config.sentences.context_chars,
            config.sentences.max_sentence_chars,
        ),
        # Splitting is light; a whole CPU per task would wait behind generator actors, trainers and
        # Serve replicas on a small node (with 2 CPUs it deadlocked behind them).
        num_cpus=SPLIT_TASK_CPUS,
    )
    return blocks_of(sentences, settings.batch_size, SPLIT_TASK_CPUS).map_batches(
        QAGeneratorActor,
        fn_constructor_kwargs={"config": config},
        batch_size=settings.batch_size,
        compute=ray.data.ActorPoolStrategy(size=settings.num_replicas),
        num_cpus=settings.num_cpus,
        num_gpus=settings.num_gpus or None,
        runtime_env=engine_runtime_env(settings),
    )


def generate_qa(documents: list[Document], config: LiftConfig) -> dict[str, list[dict[str, Any]]]:
    """Ray Data: split documents into sentence rows, run generator actors over them; rows grouped by doc id."""
    by_document: dict[str, list[dict[str, Any]]] = {d.doc_id: [] for d in documents}
    for row in build_qa_stream(documents, config).iter_rows():
        by_document[row["doc_id"]].append(dict(row))
    for rows in by_document.values():
        rows.sort(key=lambda r: r["sentence_index"])
    return by_document


def sentence_count(document: Document, config: LiftConfig) -> int:
    """How many sentence rows (one QA prompt each) the document splits into."""
    return len(sentence_rows(document, config.sentences.context_chars, config.sentences.max_sentence_chars))


def missing_sentences(rows: list[dict[str, Any]], document: Document, config: LiftConfig) -> int:
    """How many of the document's sentences a QA cache has no row for (0: complete)."""
    return max(0, sentence_count(document, config) - distinct_sentences(rows))


def _count_generation(report: DocumentReport, rows: list[dict[str, Any]]) -> None:
    for name, value in generation_counters(rows).items():
        setattr(report, name, value)


def _apply_result(
    report: DocumentReport,
    result: dict[str, Any] | None,
    run_started: float,
    error: str | None,
    accepted_at: float | None = None,
) -> None:
    """Fill a document's report from what rank 0 recorded for it (None: the training run never finished it).

    `run_started` is when the training run began, `accepted_at` when the LIFT call took the document in
    (default: `run_started`); `ttft_s` counts from `accepted_at`, so it includes generation that ran first.
    """
    if result is None:
        report.status, report.error = "failed", f"training run failed: {error or 'no result recorded'}"
        return
    for name, value in result["counters"].items():
        setattr(report, name, value)
    report.qa_count = result["qa_count"]
    timings = result["timings"]
    if "generate_s" not in report.timings:  # streamed: the document's QA was complete at qa_ready_at
        report.timings["generate_s"] = round(timings["qa_ready_at"] - run_started, 2)
    for name in ("train_s", "gate_s", "publish_s", "compute_s", "wait_s", "overhead_s"):
        if name in timings:
            report.timings[name] = round(timings[name], 2)
    report.timings["model_load_s"] = round(result.get("load_s", 0.0), 2)
    report.timings["ttft_s"] = round(result["recorded_at"] - (accepted_at or run_started), 2)
    losses = result["history"]["epoch_losses"]
    report.final_loss = losses[-1] if losses else None
    report.status, report.error = result["status"], result["error"]
    report.adapter_uri = result["adapter"].get("adapter_uri")
    report.adapter_bytes = result["adapter"].get("adapter_bytes")
    report.quality = result.get("quality") or None
    if report.status == "published" and report.quality and report.quality.get("passed") is False:
        report.status = "low_quality"  # published and served, but flagged: its manifest and /v1/models say so
        report.error = (
            f"answered {report.quality['holdout_score']:.0%} of {report.quality['holdout_pairs']} held-out "
            f"questions, below train.min_quality ({report.quality['min_quality']:.0%}), after "
            f"{report.quality['extra_epochs']} extra epochs"
        )


def train_and_publish(
    document: Document, pairs: list[dict[str, str]], config: LiftConfig, store: Store, report: DocumentReport
) -> None:
    """Ray Train on one document's given QA pairs, then publish the adapter with its manifest written last."""
    from lift_ray.train.trainer import train_documents_on_ray

    del store  # rank 0 publishes to config.storage.root itself
    rows = [{"sentence_index": i, "qa_json": json.dumps([pair])} for i, pair in enumerate(pairs)]  # none held out
    job = DocumentJob(document.doc_id, document.sha256, document.text, rows=rows)
    started = time.time()
    results, error = train_documents_on_ray(config, [job])
    _apply_result(report, results.get(document.doc_id), started, error)
    if report.status != "published":
        raise RuntimeError(report.error or "training failed")


def stage_resources(config: LiftConfig) -> dict[str, float]:
    """CPUs and GPUs that generation and training hold at once when training streams from the generator."""
    generator, train = config.generator, config.train
    generator_cpus = generator.num_replicas * generator.num_cpus
    return {
        # the split's and the block cutting's tasks are short and take turns in SPLIT_TASK_CPUS
        "CPU": generator_cpus + train.num_workers * train.cpus_per_worker + SPLIT_TASK_CPUS,
        "GPU": generator.num_replicas * generator.num_gpus + (train.num_workers if train.use_gpu else 0),
    }


def streaming_fits(config: LiftConfig) -> bool:
    """Whether the cluster has room right now for generator actors and trainer workers side by side.

    Streaming needs both stages at once; where they do not fit, the generator would wait for the
    trainer's resources while the trainer waits for its data, forever. Then the run generates first
    and trains after (`train.pipeline=sequential`), and says so.
    """
    import ray

    needed = stage_resources(config)
    available = ray.available_resources()
    missing = {k: v - available.get(k, 0.0) for k, v in needed.items() if v > available.get(k, 0.0) + 1e-9}
    if missing:
        log.warning(
            "train.pipeline=streaming needs %s at once but only %s is free; generating first, then training",
            {k: round(v, 2) for k, v in needed.items() if v},
            {k: round(available.get(k, 0.0), 2) for k in needed if needed[k]},
        )
    return not missing


def lift_documents(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
    """LIFT every document: skip those already published with this config, fail bad ones alone.

    One TorchTrainer run trains every remaining document; with `train.pipeline=streaming` it also consumes
    the QA of documents without a cache as the generator writes it.
    """
    from lift_ray.train.trainer import train_documents_on_ray

    accepted_at = time.time()
    ensure_ray()
    store = Store.from_uri(config.storage.root)
    namespace, config_hash = config.storage.namespace, config.adapter_hash()
    qa_namespace = config.storage.qa_namespace or namespace
    reports: dict[str, DocumentReport] = {}
    todo: list[Document] = []
    for document in documents:
        report = reports[document.doc_id] = DocumentReport(document.doc_id, status="pending")
        manifest = read_manifest(store, namespace, document.doc_id)
        if manifest and manifest.get("config_hash") == config_hash and manifest.get("doc_sha256") == document.sha256:
            report.status, report.adapter_uri = "skipped", manifest.get("adapter_uri")
            log.info("%s: already published with config %s, skipping", document.doc_id, config_hash)
            continue
        try:
            document.check_not_empty()
        except DocumentError as exc:
            report.status, report.error = "failed", str(exc)
            log.warning("%s: %s", document.doc_id, exc)
            continue
        todo.append(document)

    # Stage 1+2: sentences and synthetic QA, reusing any cached QA for the same document and generator.
    known_rows: dict[str, list[dict[str, Any]]] = {}
    to_generate: list[Document] = []
    for document in todo:
        cache_key = qa_cache_path(qa_namespace, document, config)
        if config.train.variant == "finetune_raw":  # raw segments only: no QA needed
            known_rows[document.doc_id] = []
            reports[document.doc_id].timings["generate_s"] = 0.0
            continue
        cached = read_json_lines(store, cache_key) if store.exists(cache_key) else None
        missing = missing_sentences(cached, document, config) if cached is not None else 0
        if cached is not None and not missing:
            known_rows[document.doc_id] = cached
            reports[document.doc_id].timings["generate_s"] = 0.0
            log.info("%s: QA pairs read from cache %s", document.doc_id, store.child_uri(cache_key))
        else:
            if missing:  # written by a run that was stopped in the middle of the document
                log.warning("%s: QA cache lacks %d sentences; generating again", document.doc_id, missing)
            to_generate.append(document)
    streaming = config.train.pipeline == "streaming" and (not to_generate or streaming_fits(config))
    if to_generate and not streaming:
        started = time.perf_counter()
        generated = generate_qa(to_generate, config)
        elapsed = round(time.perf_counter() - started, 2)
        for document in to_generate:
            known_rows[document.doc_id] = generated[document.doc_id]
            write_json_lines(store, qa_cache_path(qa_namespace, document, config), generated[document.doc_id])
            reports[document.doc_id].timings["generate_s"] = elapsed
        log.info("generated QA for %d documents in %.1f s", len(to_generate), elapsed)
        to_generate = []

    # Stage 3+4: one adapter per document, published atomically; documents with known QA first.
    jobs: list[DocumentJob] = []
    for document in todo:
        if document.doc_id not in known_rows:
            continue
        rows = known_rows[document.doc_id]
        report = reports[document.doc_id]
        _count_generation(report, rows)
        report.qa_count = len(qa_pairs_from_rows(rows))
        if config.train.variant != "finetune_raw" and not report.qa_count:
            report.status = "failed"
            report.error = f"no valid QA pairs from {report.sentences} sentences ({report.malformed_outputs} malformed)"
            log.warning("%s: %s", document.doc_id, report.error)
            continue
        jobs.append(DocumentJob(document.doc_id, document.sha256, document.text, rows=rows))
    for document in to_generate:
        cache_key = qa_cache_path(qa_namespace, document, config)
        expected = sentence_count(document, config)
        jobs.append(DocumentJob(document.doc_id, document.sha256, document.text, None, expected, cache_key))
    stream = build_qa_stream(to_generate, config) if to_generate else None
    run_started = time.time()
    results, error = train_documents_on_ray(config, jobs, stream)
    for job in jobs:
        report = reports[job.doc_id]
        _apply_result(report, results.get(job.doc_id), run_started, error, accepted_at)
        if report.status == "published":
            log.info(
                "%s: published %s (%d QA pairs, loss %.3f, %s)",
                job.doc_id,
                report.adapter_uri,
                report.qa_count,
                report.final_loss or float("nan"),
                report.timings,
            )
        else:
            log.warning("%s: %s", job.doc_id, report.error)
    return [reports[d.doc_id] for d in documents]
