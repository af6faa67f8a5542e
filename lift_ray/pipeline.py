"""The LIFT pipeline, top to bottom: plan → generate → train (and publish) → report.

`lift_documents` is the whole story in named steps; each step is a function below it, and each stage's
work is a plain function elsewhere in the package. Ray Data splits documents into sentence rows and runs
generator actors over them, Ray Train fine-tunes one LoRA adapter per document, and rank 0 publishes each
adapter with its manifest last (`lift_ray.layout` owns every store key and the "is this adapter current" rule).

With `train.pipeline=streaming` (default) the generator's Ray Dataset is the trainer's input: epoch 1 of
a document trains on its QA pairs as they are generated, and one TorchTrainer run serves every document
(see lift_ray/train/trainer.py and docs/training.md). `sequential` generates all QA first, then trains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import Document, DocumentError, sentence_rows
from lift_ray.layout import (
    LISTING_MIN_DOCUMENTS,
    adapter_is_current,
    manifest_ids,
    qa_cache_path,
    read_manifest,
    read_manifests,
    read_qa_cache,
    write_qa_cache,
)
from lift_ray.progress import ProgressWriter
from lift_ray.report import DocumentReport
from lift_ray.storage import Store
from lift_ray.train.dataset import (
    distinct_sentences,
    generation_counters,
    lacks_qa_pairs,
    no_pairs_error,
    qa_pairs_from_rows,
)
from lift_ray.train.loop import DocumentJob, DocumentResult

log = logging.getLogger(__name__)

SPLIT_TASK_CPUS = 0.25
# (documents, config, progress) → each document's QA rows, by doc id
GenerateQA = Callable[[list[Document], LiftConfig, ProgressWriter | None], dict[str, list[dict[str, Any]]]]
TIMING_NAMES = ("train_s", "gate_s", "publish_s", "compute_s", "wait_s", "overhead_s")


def lift_documents(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
    """LIFT every document: skip those already published with this config, fail bad ones alone.

    One TorchTrainer run trains every remaining document; with `train.pipeline=streaming` it also consumes
    the QA of documents without a cache as the generator writes it. With `train.pipeline=warm` one warm
    worker does it all instead (`lift_ray.online.warm`).
    """
    from lift_ray.train.trainer import train_documents_on_ray

    accepted_at = time.time()
    ensure_ray()
    if config.train.pipeline == "warm":
        from lift_ray.online.warm import lift_on_warm_worker

        return lift_on_warm_worker(documents, config)
    store = Store.from_uri(config.storage.root)
    planning = time.perf_counter()
    plan = plan_lift(documents, config, store)
    log.info(
        "planned %d documents in %.2f s: %d to train (%d to generate), %d skipped or failed",
        len(documents),
        time.perf_counter() - planning,
        len(plan.to_train),
        len(plan.to_generate),
        len(documents) - len(plan.to_train),
    )
    if plan.to_generate and not streams(config):
        generate_first(plan, config, store)
    jobs = training_jobs(plan, config)
    stream = build_qa_stream(plan.to_generate, config) if plan.to_generate else None
    run_started = time.time()
    results, error = train_documents_on_ray(config, jobs, stream)  # rank 0 publishes each adapter
    for job in jobs:
        result = DocumentResult.from_record(job.doc_id, results[job.doc_id]) if job.doc_id in results else None
        plan.reports[job.doc_id] = report_trained(plan.reports[job.doc_id], result, run_started, error, accepted_at)
        log_outcome(plan.reports[job.doc_id])
    return [plan.reports[d.doc_id] for d in documents]


@dataclass
class LiftPlan:
    """What one LIFT call does with each document, decided before anything runs."""

    qa_namespace: str
    reports: dict[str, DocumentReport] = field(default_factory=dict)  # every document, in order
    known_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # QA rows in hand, by doc id
    to_generate: list[Document] = field(default_factory=list)  # QA still to generate
    to_train: list[Document] = field(default_factory=list)  # neither skipped nor failed, in order


def plan_lift(documents: list[Document], config: LiftConfig, store: Store) -> LiftPlan:
    """Skip documents whose adapter is current, fail empty ones, and find each other document's QA cache.

    For `LISTING_MIN_DOCUMENTS` documents or more, what exists is decided from one listing of the namespace
    (and of the QA namespace, if another), and only manifests and QA caches that exist are read (manifests
    16 at a time); for fewer, each document's manifest and QA cache are asked for one by one, which costs
    less than listing a namespace of many adapters.
    """
    plan = LiftPlan(config.storage.qa_namespace or config.storage.namespace)
    config_hash = config.adapter_hash()
    namespace = config.storage.namespace
    listed = existing_keys(store, {namespace, plan.qa_namespace}, len(documents))
    if listed is None:
        manifests = {}
        for document in documents:
            if (manifest := read_manifest(store, namespace, document.doc_id)) is not None:
                manifests[document.doc_id] = manifest
    else:
        with_manifest = manifest_ids(listed, namespace)
        manifests = read_manifests(store, namespace, [d.doc_id for d in documents if d.doc_id in with_manifest])
    for document in documents:
        plan.reports[document.doc_id] = DocumentReport(document.doc_id, status="pending")
        manifest = manifests.get(document.doc_id)
        if manifest is not None and adapter_is_current(manifest, document.sha256, config_hash):
            plan.reports[document.doc_id] = DocumentReport(
                document.doc_id, status="skipped", adapter_uri=manifest.get("adapter_uri")
            )
            log.info("%s: already published with config %s, skipping", document.doc_id, config_hash)
            continue
        try:
            document.check_not_empty()
        except DocumentError as exc:
            plan.reports[document.doc_id] = DocumentReport(document.doc_id, status="failed", error=str(exc))
            log.warning("%s: %s", document.doc_id, exc)
            continue
        plan.to_train.append(document)
        rows = cached_rows(document, config, store, plan.qa_namespace, listed)
        if rows is None:
            plan.to_generate.append(document)
        else:
            plan.known_rows[document.doc_id] = rows
            plan.reports[document.doc_id].timings["generate_s"] = 0.0
    return plan


def existing_keys(store: Store, namespaces: set[str], documents: int) -> set[str] | None:
    """Every key under `namespaces` (one listing each) for `LISTING_MIN_DOCUMENTS` documents or more, else None."""
    if documents < LISTING_MIN_DOCUMENTS:
        return None
    return {key for namespace in sorted(namespaces) for key in store.list_keys(namespace)}


def cached_rows(
    document: Document, config: LiftConfig, store: Store, qa_namespace: str, listed: set[str] | None = None
) -> list[dict] | None:
    """A document's QA rows without generating: none needed (`finetune_raw`), or a complete QA cache; else None.

    `listed`: a listing of the QA namespace made earlier (then a cache not in it is not asked for).
    """
    if config.train.variant == "finetune_raw":  # raw segments only: no QA needed
        return []
    key = qa_cache_path(qa_namespace, document, config)
    cached = read_qa_cache(store, key, listed)
    if cached is None:
        return None
    missing = missing_sentences(cached, document, config)
    if missing:  # written by a run that was stopped in the middle of the document
        log.warning("%s: QA cache lacks %d sentences; generating again", document.doc_id, missing)
        return None
    log.info("%s: QA pairs read from cache %s", document.doc_id, store.child_uri(key))
    return cached


def streams(config: LiftConfig) -> bool:
    """Whether training consumes the QA still to generate as it is generated (else: generate it first)."""
    return config.train.pipeline == "streaming" and streaming_fits(config)


def generate_first(plan: LiftPlan, config: LiftConfig, store: Store, generate: GenerateQA | None = None) -> None:
    """Generate the QA of every document that needs it, before training; cache each document's rows.

    `generate` (default: `generate_qa`, Ray Data over generator actors) makes each document's rows.
    """
    started = time.perf_counter()
    progress = None
    if config.storage.progress:
        expected = {document.doc_id: sentence_count(document, config) for document in plan.to_generate}
        progress = ProgressWriter(store, config.storage.namespace, expected)
    generated = (generate or generate_qa)(plan.to_generate, config, progress)
    elapsed = round(time.perf_counter() - started, 2)
    for document in plan.to_generate:
        plan.known_rows[document.doc_id] = generated[document.doc_id]
        write_qa_cache(store, qa_cache_path(plan.qa_namespace, document, config), generated[document.doc_id])
        plan.reports[document.doc_id].timings["generate_s"] = elapsed
    log.info("generated QA for %d documents in %.1f s", len(plan.to_generate), elapsed)
    plan.to_generate = []


def training_jobs(plan: LiftPlan, config: LiftConfig) -> list[DocumentJob]:
    """One job per document to train: those with QA rows in hand first (unless they have no valid pairs),
    then those whose rows the generator streams to the trainer (rank 0 caches them)."""
    jobs: list[DocumentJob] = []
    for document in plan.to_train:
        if document.doc_id not in plan.known_rows:
            continue
        rows = plan.known_rows[document.doc_id]
        counters = generation_counters(rows)
        qa_count = len(qa_pairs_from_rows(rows))
        report = replace(plan.reports[document.doc_id], **counters, qa_count=qa_count)
        if lacks_qa_pairs(qa_count, config.train.variant):
            report = replace(report, status="failed", error=no_pairs_error(counters))
            log.warning("%s: %s", document.doc_id, report.error)
        else:
            jobs.append(DocumentJob(document.doc_id, document.sha256, document.text, rows=rows))
        plan.reports[document.doc_id] = report
    for document in plan.to_generate:
        cache_key = qa_cache_path(plan.qa_namespace, document, config)
        expected = sentence_count(document, config)
        jobs.append(DocumentJob(document.doc_id, document.sha256, document.text, None, expected, cache_key))
    return jobs


def report_trained(
    report: DocumentReport,
    result: DocumentResult | None,
    run_started: float,
    error: str | None,
    accepted_at: float | None = None,
) -> DocumentReport:
    """A document's report completed from what rank 0 recorded for it (None: the training run never finished it).

    `run_started` is when the training run began, `accepted_at` when the LIFT call took the document in
    (default: `run_started`); `ttft_s` counts from `accepted_at`, so it includes generation that ran first.
    """
    if result is None:
        return replace(report, status="failed", error=f"training run failed: {error or 'no result recorded'}")
    timings = dict(report.timings)
    if "generate_s" not in timings and "qa_ready_at" in result.timings:  # streamed: QA complete at qa_ready_at
        timings["generate_s"] = round(result.timings["qa_ready_at"] - run_started, 2)
    timings.update({name: round(result.timings[name], 2) for name in TIMING_NAMES if name in result.timings})
    timings["model_load_s"] = round(result.load_s, 2)
    timings["ttft_s"] = round(result.recorded_at - (accepted_at or run_started), 2)
    if "draft_at" in result.timings:  # a draft adapter was answerable this long after the document came in
        timings["draft_s"] = round(result.timings["draft_at"] - (accepted_at or run_started), 2)
    losses = result.history.epoch_losses
    status, message, quality = result.status, result.error, result.quality or None
    if status == "published" and quality and quality.get("passed") is False:
        status = "low_quality"  # published and served, but flagged: its manifest and /v1/models say so
        message = (
            f"answered {quality['holdout_score']:.0%} of {quality['holdout_pairs']} held-out "
            f"questions, below train.min_quality ({quality['min_quality']:.0%}), after "
            f"{quality['extra_epochs']} extra epochs"
        )
    return replace(
        report,
        **result.counters,
        qa_count=result.qa_count,
        timings=timings,
        final_loss=losses[-1] if losses else None,
        status=status,
        error=message,
        adapter_uri=result.adapter.get("adapter_uri"),
        adapter_bytes=result.adapter.get("adapter_bytes"),
        quality=quality,
    )


def log_outcome(report: DocumentReport) -> None:
    """One log line for a trained document: where it was published, or why not."""
    if report.status == "published":
        log.info(
            "%s: published %s (%d QA pairs, loss %.3f, %s)",
            report.doc_id,
            report.adapter_uri,
            report.qa_count,
            report.final_loss or float("nan"),
            report.timings,
        )
    else:
        log.warning("%s: %s", report.doc_id, report.error)


# ---------------------------------------------------------------- Ray wiring


def ensure_ray() -> None:
    """Connect to the Ray cluster of this job (or start a local one); a dead one fails in bounded time."""
    from lift_ray.ray_connect import connect_ray

    connect_ray(log_to_driver=True)


def blocks_of(dataset: Any, rows: int, num_cpus: float) -> Any:
    """`dataset` cut into blocks of `rows` rows as it streams (`repartition(target_num_rows_per_block=...)`).

    Why: a map task hands its output on only when its whole input block is done, and the split emits one
    block per document, so without this a document's QA reached the trainer only once all of it was
    generated. The cutting tasks must ask for `num_cpus`: `Dataset.repartition` takes no resources, and its
    default of one CPU per task waits forever behind generator actors and trainer workers on a small node
    (it hung a 2-CPU cluster). Ray 2.60 has no public way to give them less: an identity
    `map_batches(num_cpus=...)` before it is fused with the split, not with the repartition (measured: the
    repartition kept its 1 CPU and the stream stalled). Hence the one private field set here, pinned to
    Ray 2.60's `StreamingRepartition`: a Ray that plans anything else fails here with this message, and
    tests/integration/test_row_feed.py fails if the cut stops running beside actors holding all but a quarter
    CPU.
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


def generate_qa(
    documents: list[Document], config: LiftConfig, progress: ProgressWriter | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Ray Data: split documents into sentence rows, run generator actors over them; rows grouped by doc id."""
    by_document: dict[str, list[dict[str, Any]]] = {d.doc_id: [] for d in documents}
    for row in build_qa_stream(documents, config).iter_rows():
        by_document[row["doc_id"]].append(dict(row))
        if progress is not None:
            progress.rows([row])
    for rows in by_document.values():
        rows.sort(key=lambda r: r["sentence_index"])
    return by_document


def sentence_count(document: Document, config: LiftConfig) -> int:
    """How many sentence rows (one QA prompt each) the document splits into."""
    return len(sentence_rows(document, config.sentences.context_chars, config.sentences.max_sentence_chars))


def missing_sentences(rows: list[dict[str, Any]], document: Document, config: LiftConfig) -> int:
    """How many of the document's sentences a QA cache has no row for (0: complete)."""
    return max(0, sentence_count(document, config) - distinct_sentences(rows))


def stage_resources(config: LiftConfig) -> dict[str, float]:
    """CPUs and GPUs that generation and training hold at once when training streams from the generator."""
    generator, train = config.generator, config.train
    generator_cpus = generator.num_replicas * generator.num_cpus
    return {
        # the split's and the block cutting's tasks are short and take turns in SPLIT_TASK_CPUS
        "CPU": generator_cpus + train.num_workers * train.cpus_per_worker + SPLIT_TASK_CPUS,
        "GPU": generator.num_replicas * generator.num_gpus + (train.num_workers if train.use_gpu else 0),
    }


def stage_bundles(config: LiftConfig) -> list[dict[str, float]]:
    """The resource bundles of generator actors and trainer workers, as the autoscaler is asked for them."""
    generator, train = config.generator, config.train
    actor = {"CPU": generator.num_cpus, "GPU": generator.num_gpus}
    worker = {"CPU": train.cpus_per_worker, "GPU": 1.0 if train.use_gpu else 0.0}
    bundles = [actor] * generator.num_replicas + [worker] * train.num_workers
    return [{k: v for k, v in bundle.items() if v} for bundle in bundles]


def _missing(needed: dict[str, float], free: dict[str, float]) -> dict[str, float]:
    return {k: v - free.get(k, 0.0) for k, v in needed.items() if v > free.get(k, 0.0) + 1e-9}


def streaming_fits(config: LiftConfig, poll_s: float = 2.0) -> bool:
    """Whether the cluster has room for generator actors and trainer workers side by side.

    Streaming needs both stages at once; where they do not fit, the generator would wait for the
    trainer's resources while the trainer waits for its data, forever. Then the run generates first
    and trains after (`train.pipeline=sequential`), and says so. On an autoscaling cluster that starts
    small (every worker group of cluster.yaml and the KubeRay files starts at 0), what is free at start is
    not what the cluster can have: with `train.scale_up_wait_s` > 0 the run asks the autoscaler for the
    stages' bundles (`ray.autoscaler.sdk.request_resources`) and waits that long for them to be free.
    """
    import ray

    needed = stage_resources(config)
    missing = _missing(needed, ray.available_resources())
    wait_s = config.train.scale_up_wait_s
    if missing and wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        log.info(
            "streaming needs %s at once; asking the autoscaler for %s and waiting up to %.0f s",
            {k: round(v, 2) for k, v in needed.items() if v},
            stage_bundles(config),
            wait_s,
        )
        request_resources(bundles=stage_bundles(config))
        deadline = time.monotonic() + wait_s
        try:
            while missing and time.monotonic() < deadline:
                time.sleep(poll_s)
                missing = _missing(needed, ray.available_resources())
        finally:
            request_resources(bundles=[])  # once placed, the stages hold their nodes themselves
        if not missing:
            log.info("the cluster has room for both stages: training while generating")
    if missing:
        available = ray.available_resources()
        log.warning(
            "train.pipeline=streaming needs %s at once but only %s is free; generating first, then training",
            {k: round(v, 2) for k, v in needed.items() if v},
            {k: round(available.get(k, 0.0), 2) for k in needed if needed[k]},
        )
    return not missing
