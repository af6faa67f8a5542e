"""Status records of online LIFT runs in the store, and their transitions.

A document's record lives next to it, `<namespace>/<doc_id>/lift_status.json`, so any ingress replica can
answer `GET /v1/documents/{id}` and it survives restarts. Listings of a namespace only look for
`<namespace>/<doc_id>/manifest.json`, so the record never makes a document look published. A `queued` or
`running` record whose heartbeat is older than `STALE_AFTER_S` (its task died with a restarted ingress or
node) reads as `failed`, and posting the document again starts a new run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lift_ray.documents import Document
from lift_ray.layout import is_draft, is_of, online_status_key, read_manifest
from lift_ray.online.requests import RequestRejected
from lift_ray.report import DocumentReport
from lift_ray.storage import Store, StoreError

STATUSES = ("queued", "running", "published", "failed")
ACTIVE = ("queued", "running")
HEARTBEAT_S = 15.0
STALE_AFTER_S = 180.0  # a queued task waits for a worker process; a running one beats every HEARTBEAT_S
RECORD_FIELDS = (
    "id",
    "namespace",
    "status",
    "run_id",
    "batch_id",
    "batch_size",
    "source",
    "bytes",
    "doc_sha256",
    "config_hash",
    "submitted_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "error",
    "report_status",
    "timings",
    "qa_count",
    "adapter_uri",
    "adapter_bytes",
    "final_loss",
    "adapter_stage",
    "draft_at",
    "draft_s",
    "progress",
)
ADAPTER_FIELDS = ("qa_count", "adapter_uri", "adapter_bytes", "final_loss")
Clock = Callable[[], float]


def iso_time(seconds: float) -> str:
    """A record timestamp: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _seconds(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def seconds_between(start: str, end: str) -> float:
    """Seconds from one record timestamp to another (ISO 8601, as the records store them)."""
    first, last = _seconds(start), _seconds(end)
    if first is None or last is None:
        raise ValueError(f"not record timestamps: {start!r}, {end!r}")
    return last - first


def read_status(store: Store, namespace: str, doc_id: str) -> dict[str, Any] | None:
    """The stored status record of a document, or None when it has none."""
    key = online_status_key(namespace, doc_id)
    if not store.exists(key):
        return None
    record = store.read_json(key)
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        raise StoreError(f"{store.child_uri(key)} is not a status record")
    return record


def write_status(store: Store, record: dict[str, Any]) -> None:
    """Store a status record (one PUT: readers see the old or the new one)."""
    store.write_json(online_status_key(record["namespace"], record["id"]), record)


def new_record(
    document: Document, namespace: str, config_hash: str, source: str, batch_id: str = "", now: Clock = time.time
) -> dict[str, Any]:
    """A `queued` record for a new run of `document`, LIFTed with the other documents of batch `batch_id`."""
    at = iso_time(now())
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(
        id=document.doc_id,
        namespace=namespace,
        status="queued",
        run_id=uuid.uuid4().hex[:12],
        batch_id=batch_id or uuid.uuid4().hex[:12],
        source=source,
        bytes=len(document.text.encode("utf-8")),
        doc_sha256=document.sha256,
        config_hash=config_hash,
        submitted_at=at,
        heartbeat_at=at,
        timings={},
    )
    return record


def with_heartbeat(record: dict[str, Any], now: Clock = time.time) -> dict[str, Any]:
    """`record` with a fresh heartbeat (a queued document waiting for its batch's turn is alive)."""
    return {**record, "heartbeat_at": iso_time(now())}


def is_stale(record: dict[str, Any], now: Clock = time.time, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether a queued/running record stopped beating (its task is gone)."""
    beat = _seconds(record.get("heartbeat_at") or record.get("submitted_at"))
    return record["status"] in ACTIVE and (beat is None or now() - beat > stale_after_s)


def admit(existing: dict[str, Any] | None, document: Document, now: Clock = time.time) -> dict[str, Any] | None:
    """The record to answer with when `document` is already in flight; None when a new run should start.

    RequestRejected(409) when a different text is in flight under the same id.
    """
    if existing is None or existing["status"] not in ACTIVE or is_stale(existing, now):
        return None
    if existing.get("doc_sha256") == document.sha256:
        return existing
    raise RequestRejected(
        409,
        f"document {document.doc_id!r} is being LIFTed from a different text right now (status "
        f"{existing['status']}); wait until GET /v1/documents/{document.doc_id} says published or failed, "
        "then post again",
    )


def adapter_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a status record says of a published adapter, from its manifest."""
    return {key: manifest.get(key) for key in ADAPTER_FIELDS}


def _manifest_view(manifest: dict[str, Any], namespace: str, doc_id: str) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(
        id=doc_id,
        namespace=namespace,
        status="published",
        source="store",
        doc_sha256=manifest.get("doc_sha256"),
        config_hash=manifest.get("config_hash"),
        finished_at=manifest.get("published_at"),
        report_status="published",
        timings={},
        adapter_stage=manifest.get("stage", "final"),
        **adapter_fields(manifest),
    )
    return record


def document_status(
    store: Store, namespace: str, doc_id: str, now: Clock = time.time, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any] | None:
    """What `GET /v1/documents/{id}` reports; None when the document was neither submitted nor published.

    No record but a manifest (published by the bulk job): published. A failed record older than the
    manifest (republished since): published. A queued/running record whose heartbeat stopped: failed.
    """
    record = read_status(store, namespace, doc_id)
    if record is None or record["status"] == "failed":
        manifest = read_manifest(store, namespace, doc_id)
        if manifest is not None:
            published = _seconds(manifest.get("published_at")) or 0.0
            if record is None or published > (_seconds(record.get("finished_at")) or 0.0):
                return _manifest_view(manifest, namespace, doc_id)
    if record is not None and is_stale(record, now, stale_after_s):
        return {
            **record,
            "status": "failed",
            "error": f"the LIFT run stopped reporting (no heartbeat since {record.get('heartbeat_at')}: its task "
            "died, e.g. the ingress or a node restarted); post the document again to retry",
        }
    return record


def _failed(record: dict[str, Any], error: str, at: str) -> dict[str, Any]:
    """`record`, finished at `at` as failed with `error`."""
    return {
        **record,
        "status": "failed",
        "report_status": "failed",
        "error": error,
        "finished_at": at,
        "heartbeat_at": at,
    }


def final_record(
    running: dict[str, Any], report: DocumentReport | None, error: str | None, now: Clock = time.time
) -> dict[str, Any]:
    """The record after a run: from the DocumentReport, or failed with `error` when there is none."""
    at = iso_time(now())
    if report is None:
        return _failed(running, error or "no report", at)
    return {
        **running,
        "finished_at": at,
        "heartbeat_at": at,
        "status": "published" if report.status in ("published", "skipped") else "failed",
        "adapter_stage": "final" if report.status in ("published", "skipped") else running.get("adapter_stage"),
        "report_status": report.status,
        "error": report.error,
        "timings": dict(report.timings),
        "qa_count": report.qa_count,
        "adapter_uri": report.adapter_uri,
        "adapter_bytes": report.adapter_bytes,
        "final_loss": report.final_loss,
    }


def mark_crashed(store: Store, record: dict[str, Any], error: str, now: Clock = time.time) -> dict[str, Any]:
    """The ingress saw the run's task die: record `failed` unless the record has moved on (another run, or final)."""
    current = read_status(store, record["namespace"], record["id"])
    if current is not None and (current.get("run_id") != record["run_id"] or current["status"] not in ACTIVE):
        return current
    failed = _failed(current or record, f"the LIFT task stopped: {error}", iso_time(now()))
    write_status(store, failed)
    return failed


def published_by_run(store: Store, record: dict[str, Any], now: Clock = time.time) -> dict[str, Any] | None:
    """The newer record of a running document whose adapter (or draft) this run has published, else None.

    A batch's documents publish one by one as they finish training; the task's final records come when the
    whole batch is done. Reading the manifest (same text and config, published after the run started) lets
    each document's record say `published` when its adapter is servable, and, before that, when a draft
    adapter is (`draft_at`, `draft_s` from submission; the status stays `running`).
    """
    manifest = read_manifest(store, record["namespace"], record["id"])
    if not is_of(manifest, record["doc_sha256"], record["config_hash"]):
        return None
    assert manifest is not None
    published, started = _seconds(manifest.get("published_at")), _seconds(record.get("started_at"))
    if published is None or started is None or published < started:
        return None
    if is_draft(manifest):
        if record.get("draft_at") == iso_time(published):
            return None  # already recorded
        submitted = _seconds(record.get("submitted_at")) or started
        return {
            **record,
            "adapter_stage": "draft",
            "draft_at": iso_time(published),
            "draft_s": round(published - submitted, 2),
            "heartbeat_at": iso_time(now()),
        }
    return {  # report_status and timings come with the batch's end
        **record,
        **adapter_fields(manifest),
        "status": "published",
        "adapter_stage": "final",
        "finished_at": iso_time(published),
        "heartbeat_at": iso_time(now()),
    }
