"""The LIFT pipeline, top to bottom: read → sentences → QA → train → publish.

Each stage is a plain function elsewhere in the package; this module is the Ray wiring:
Ray Data splits documents into sentence rows and runs generator actors over them, Ray Train
fine-tunes one LoRA adapter per document, and the store publishes it with its manifest last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import Document, DocumentError, sentence_rows
from lift_ray.storage import (
    Store,
    document_prefix,
    publish_adapter,
    read_json_lines,
    read_manifest,
    write_json_lines,
)
from lift_ray.train.dataset import qa_pairs_from_rows

log = logging.getLogger(__name__)

SPLIT_TASK_CPUS = 0.25


@dataclass
class DocumentReport:
    """What happened to one document in a LIFT run."""

    doc_id: str
    status: str  # published | skipped | failed
    error: str | None = None
    sentences: int = 0
    sentences_with_pairs: int = 0
    qa_count: int = 0
    malformed_outputs: int = 0
    retried_sentences: int = 0
    dropped_pairs: int = 0
    final_loss: float | None = None
    adapter_uri: str | None = None
    adapter_bytes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return asdict(self)


def qa_cache_key(document: Document, config: LiftConfig) -> str:
    """Cache key of a document's synthetic QA: its content and everything about the generator that matters."""
    generator = config.generator
    model = generator.model or config.model.base_model
    if generator.engine == "openai":
        model = f"{generator.openai.base_url}#{generator.openai.model}"
    template = generator.template_file
    parts = {
        "doc_sha256": document.sha256,
        "model": model,
        "template_sha256": hashlib.sha256(template.read_bytes()).hexdigest() if template else None,
        "preset": generator.preset,
        "m": generator.qa_per_sentence,
        "max_new_tokens": generator.max_new_tokens,
        "temperature": generator.temperature,
        "guided_json": generator.vllm.guided_json,
        "sentences": config.sentences.model_dump(mode="json"),
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def qa_cache_path(namespace: str, document: Document, config: LiftConfig) -> str:
    """Store key of a document's QA cache (JSONL, one row per sentence)."""
    return f"{document_prefix(namespace, document.doc_id)}/qa/{qa_cache_key(document, config)}.jsonl"


def ensure_ray() -> None:
    """Connect to the Ray cluster of this job (or start a local one)."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=True)


def generate_qa(documents: list[Document], config: LiftConfig) -> dict[str, list[dict[str, Any]]]:
    """Ray Data: split documents into sentence rows, run generator actors over them; rows grouped by doc id."""
    import ray.data

    from lift_ray.synth.engines import engine_runtime_env
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
    generated = sentences.map_batches(
        QAGeneratorActor,
        fn_constructor_kwargs={"config": config},
        batch_size=settings.batch_size,
        compute=ray.data.ActorPoolStrategy(size=settings.num_replicas),
        num_cpus=settings.num_cpus,
        num_gpus=settings.num_gpus or None,
        runtime_env=engine_runtime_env(settings),
    )
    by_document: dict[str, list[dict[str, Any]]] = {d.doc_id: [] for d in documents}
    for row in generated.iter_rows():
        by_document[row["doc_id"]].append(dict(row))
    for rows in by_document.values():
        rows.sort(key=lambda r: r["sentence_index"])
    return by_document


def _count_generation(report: DocumentReport, rows: list[dict[str, Any]]) -> None:
    report.sentences = len(rows)
    report.sentences_with_pairs = sum(1 for r in rows if json.loads(r["qa_json"]))
    report.malformed_outputs = sum(int(r["malformed"]) for r in rows)
    report.retried_sentences = sum(1 for r in rows if r["retried"])
    report.dropped_pairs = sum(int(r["dropped"]) for r in rows)


def train_and_publish(
    document: Document, pairs: list[dict[str, str]], config: LiftConfig, store: Store, report: DocumentReport
) -> None:
    """Ray Train on one document's QA pairs, then publish the adapter with its manifest written last."""
    from lift_ray.train.trainer import train_document_adapter

    namespace, config_hash = config.storage.namespace, config.adapter_hash()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"lift-{document.doc_id}-") as tmp:
        adapter_dir = Path(tmp) / "adapter"
        run_name = f"{document.doc_id}-{config_hash}-{int(time.time())}"
        metrics = train_document_adapter(config, pairs, run_name, adapter_dir)
        report.timings["train_s"] = round(time.perf_counter() - started, 2)
        report.final_loss = metrics.get("loss")
        started = time.perf_counter()
        manifest = publish_adapter(
            store,
            namespace,
            document.doc_id,
            adapter_dir,
            {
                "base_model": config.model.base_model,
                "config_hash": config_hash,
                "doc_sha256": document.sha256,
                "qa_count": len(pairs),
                "final_loss": report.final_loss,
                "epoch_losses": metrics.get("epoch_losses", []),
                "step_losses": metrics.get("step_losses", []),
                "trained_tokens": metrics.get("trained_tokens"),
                "lora": config.lora.model_dump(mode="json"),
                "system_prompt": config.model.system_prompt,
                "created_at": datetime.now(UTC).isoformat(),
                "timings": report.timings,
            },
        )
    report.timings["publish_s"] = round(time.perf_counter() - started, 2)
    report.adapter_uri = manifest["adapter_uri"]
    report.adapter_bytes = manifest["adapter_bytes"]


def lift_documents(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
    """LIFT every document: skip those already published with this config, fail bad ones alone."""
    ensure_ray()
    store = Store.from_uri(config.storage.root)
    namespace, config_hash = config.storage.namespace, config.adapter_hash()
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
    rows_by_document: dict[str, list[dict[str, Any]]] = {}
    to_generate = []
    for document in todo:
        cache_key = qa_cache_path(namespace, document, config)
        if store.exists(cache_key):
            rows_by_document[document.doc_id] = read_json_lines(store, cache_key)
            reports[document.doc_id].timings["generate_s"] = 0.0
            log.info("%s: QA pairs read from cache %s", document.doc_id, store.child_uri(cache_key))
        else:
            to_generate.append(document)
    if to_generate:
        started = time.perf_counter()
        generated = generate_qa(to_generate, config)
        elapsed = round(time.perf_counter() - started, 2)
        for document in to_generate:
            rows_by_document[document.doc_id] = generated[document.doc_id]
            write_json_lines(store, qa_cache_path(namespace, document, config), generated[document.doc_id])
            reports[document.doc_id].timings["generate_s"] = elapsed
        log.info("generated QA for %d documents in %.1f s", len(to_generate), elapsed)

    # Stage 3+4: one adapter per document, published atomically.
    for document in todo:
        report = reports[document.doc_id]
        rows = rows_by_document[document.doc_id]
        _count_generation(report, rows)
        pairs = qa_pairs_from_rows(rows)
        report.qa_count = len(pairs)
        if not pairs:
            report.status = "failed"
            report.error = f"no valid QA pairs from {report.sentences} sentences ({report.malformed_outputs} malformed)"
            log.warning("%s: %s", document.doc_id, report.error)
            continue
        try:
            train_and_publish(document, pairs, config, store, report)
        except Exception as exc:  # one document's failure must not stop the others
            report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("%s: training or publishing failed", document.doc_id)
            continue
        report.status = "published"
        log.info(
            "%s: published %s (%d QA pairs, loss %.3f, %s)",
            document.doc_id,
            report.adapter_uri,
            report.qa_count,
            report.final_loss or float("nan"),
            report.timings,
        )
    return [reports[d.doc_id] for d in documents]
