"""Online LIFT: one document posted to the endpoint is LIFTed on the cluster, with a status record in the store.

Plain code, no Ray: `serve/app.py` validates a `DocumentRequest`, turns it into a `Document` with
`load_document`, decides with `admit` whether a run is already in flight, writes the `queued` record and
adds the document to its namespace's open batch; when the batch closes (`online_lift.batch_window_s` after
its first document, or full) it runs `run_online_lift` as one Ray task for the whole batch. That function
writes `running` (then a heartbeat every `HEARTBEAT_S` seconds), calls `lift_documents(documents, config)`
once, so the batch pays one trainer and generator start-up, marks each document `published` as soon as its
manifest appears, and writes each document's final record from its report.

The record lives next to the document, `<namespace>/<doc_id>/lift_status.json`, so any ingress replica
can answer `GET /v1/documents/{id}` and it survives restarts. Listings of a namespace only look for
`<namespace>/<doc_id>/manifest.json`, so the record never makes a document look published. A `queued` or
`running` record whose heartbeat is older than `STALE_AFTER_S` (its task died with a restarted ingress or
node) reads as `failed`, and posting the document again starts a new run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lift_ray.config import ConfigError, LiftConfig, ServeConfig, StorageSettings, load_config
from lift_ray.documents import Document, DocumentError, InvalidDocumentId, doc_id_from_filename, validate_doc_id
from lift_ray.storage import Store, StoreError, clean_key, document_prefix, read_manifest

log = logging.getLogger(__name__)

STATUS_NAME = "lift_status.json"
STATUSES = ("queued", "running", "published", "failed")
ACTIVE = ("queued", "running")
HEARTBEAT_S = 15.0
PUBLISHED_POLL_S = 2.0  # how often a running batch looks for adapters it has published
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
)
Clock = Callable[[], float]


class RequestRejected(ValueError):
    """A request that cannot be taken, with the HTTP status and a message that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DocumentRequest(BaseModel):
    """The body of `POST /v1/documents`: an optional id and exactly one of `text` or `uri`."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="document id; default: the uri's file name or 'doc-<sha256 prefix>'")
    text: str | None = Field(None, description="the document itself")
    uri: str | None = Field(None, description="where to read it: s3://bucket/key or a path the cluster can read")

    @field_validator("id")
    @classmethod
    def _id_is_safe(cls, doc_id: str | None) -> str | None:
        return None if doc_id is None else validate_doc_id(doc_id)

    @field_validator("text")
    @classmethod
    def _text_has_content(cls, text: str | None) -> str | None:
        if text is not None and (not text or text.isspace()):
            raise ValueError("the document text is empty or whitespace only")
        if text is not None and "\x00" in text:
            raise ValueError("the document text contains NUL characters (binary data?)")
        return text

    @field_validator("uri")
    @classmethod
    def _uri_is_usable(cls, uri: str | None) -> str | None:
        if uri is not None and "://" in uri and not uri.lower().startswith("s3://"):
            raise ValueError(f"uri {uri!r} is not supported: use s3://bucket/key or a path")
        return uri

    @model_validator(mode="after")
    def _one_source(self) -> DocumentRequest:
        if (self.text is None) == (self.uri is None):
            raise ValueError("give exactly one of 'text' (the document) or 'uri' (where to read it)")
        return self


# ---------------------------------------------------------------- config


def lift_config_for(serve_config: ServeConfig) -> LiftConfig:
    """The LiftConfig of online runs: `online_lift.config` + overrides, storage root = the served store.

    ConfigError if its base model is not the one the endpoint serves, or it names another storage root.
    """
    settings = serve_config.online_lift
    lift = load_config(LiftConfig, settings.config, settings.overrides)
    served, lifted = serve_config.model.base_model, lift.model.base_model
    if lifted != served:
        raise ConfigError(
            f"online_lift: the LIFT config trains on model.base_model={lifted!r} but the endpoint serves "
            f"{served!r}; adapters only fit the model they were trained on, so set the same base model in both"
        )
    root = serve_config.storage.root
    if "root" in lift.storage.model_fields_set and Store.from_uri(lift.storage.root).uri != Store.from_uri(root).uri:
        raise ConfigError(
            f"online_lift: the LIFT config publishes to storage.root={lift.storage.root!r} but the endpoint "
            f"reads {root!r}; leave storage.root out of the LIFT config (the endpoint's is used)"
        )
    return lift.model_copy(update={"storage": StorageSettings(root=root, namespace=serve_config.storage.namespace)})


def for_namespace(config: LiftConfig, namespace: str) -> LiftConfig:
    """`config` publishing into the tenant's `namespace`."""
    return config.model_copy(update={"storage": StorageSettings(root=config.storage.root, namespace=namespace)})


# ---------------------------------------------------------------- the posted document


def derive_id(request: DocumentRequest) -> str:
    """The document id: as given, else the uri's file name stem, else 'doc-' + the text's sha256 prefix."""
    if request.id is not None:
        return request.id
    if request.uri is not None:
        try:
            return doc_id_from_filename(request.uri.rstrip("/"))
        except InvalidDocumentId as exc:
            message = f"the uri's file name is not a usable document id ({exc}); give an 'id'"
            raise RequestRejected(422, message) from None
    assert request.text is not None
    return "doc-" + hashlib.sha256(request.text.encode("utf-8")).hexdigest()[:16]


def _inside(location: str, prefix: str) -> bool:
    if location.lower().startswith("s3://") or prefix.lower().startswith("s3://"):
        if not (location.lower().startswith("s3://") and prefix.lower().startswith("s3://")):
            return False
        rest, base = location[len("s3://") :], prefix[len("s3://") :].rstrip("/")
        return rest == base or rest.startswith(base + "/")
    path, folder = Path(location).resolve(), Path(prefix).resolve()
    return path == folder or folder in path.parents


def check_uri(uri: str, prefixes: list[str]) -> str:
    """`uri` if it lies under one of `prefixes` (and has no '..'); RequestRejected (403 or 422) if not."""
    if not prefixes:
        raise RequestRejected(
            403, "this endpoint does not read documents from a uri (online_lift.uri_prefixes is empty): send 'text'"
        )
    if uri.lower().startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            clean_key(key)
        except ValueError as exc:
            raise RequestRejected(422, f"uri {uri!r} is not a usable S3 object: {exc}") from None
        if not bucket:
            raise RequestRejected(422, f"uri {uri!r} has no bucket name")
    if not any(_inside(uri, prefix) for prefix in prefixes):
        raise RequestRejected(403, f"uri {uri!r} is outside the locations this endpoint may read: {prefixes}")
    return uri


def load_document(request: DocumentRequest, max_bytes: int, uri_prefixes: list[str]) -> Document:
    """The posted document, size-checked (413), from its text or read from its uri (400 if unreadable)."""
    from lift_ray.corpus import DocumentTooLarge, read_document

    doc_id = derive_id(request)
    too_large = f"the document is larger than online_lift.max_document_bytes ({max_bytes:,} bytes)"
    if request.text is not None:
        size = len(request.text.encode("utf-8"))
        if size > max_bytes:
            raise RequestRejected(413, f"{too_large}: {size:,} bytes")
        return Document.from_text(doc_id, request.text)
    assert request.uri is not None
    uri = check_uri(request.uri, uri_prefixes)
    try:
        return read_document(uri, doc_id, max_bytes)
    except DocumentTooLarge:
        raise RequestRejected(413, f"{too_large}: {uri}") from None
    except DocumentError as exc:
        raise RequestRejected(422, str(exc)) from None
    except (OSError, StoreError) as exc:
        raise RequestRejected(400, f"cannot read {uri}: {exc.strerror if isinstance(exc, OSError) else exc}") from None


# ---------------------------------------------------------------- status records


def _iso(seconds: float) -> str:
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


def status_key(namespace: str, doc_id: str) -> str:
    """Store key of a document's status record: '<namespace>/<doc_id>/lift_status.json'."""
    return f"{document_prefix(namespace, doc_id)}/{STATUS_NAME}"


def read_status(store: Store, namespace: str, doc_id: str) -> dict[str, Any] | None:
    """The stored status record of a document, or None when it has none."""
    key = status_key(namespace, doc_id)
    if not store.exists(key):
        return None
    record = store.read_json(key)
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        raise StoreError(f"{store.child_uri(key)} is not a status record")
    return record


def write_status(store: Store, record: dict[str, Any]) -> None:
    """Store a status record (one PUT: readers see the old or the new one)."""
    store.write_json(status_key(record["namespace"], record["id"]), record)


def new_record(
    document: Document, namespace: str, config_hash: str, source: str, batch_id: str = "", now: Clock = time.time
) -> dict[str, Any]:
    """A `queued` record for a new run of `document`, LIFTed with the other documents of batch `batch_id`."""
    at = _iso(now())
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
    return {**record, "heartbeat_at": _iso(now())}


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


ADAPTER_FIELDS = ("qa_count", "adapter_uri", "adapter_bytes", "final_loss")


def _adapter_fields(manifest: dict[str, Any]) -> dict[str, Any]:
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
        **_adapter_fields(manifest),
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


def final_record(
    running: dict[str, Any], report: Any | None, error: str | None, now: Clock = time.time
) -> dict[str, Any]:
    """The record after a run: from the DocumentReport, or failed with `error` when there is none."""
    at = _iso(now())
    final = {**running, "finished_at": at, "heartbeat_at": at}
    if report is None:
        return {**final, "status": "failed", "report_status": "failed", "error": error or "no report"}
    return {
        **final,
        "status": "published" if report.status in ("published", "skipped") else "failed",
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
    at = _iso(now())
    failed = {
        **(current or record),
        "status": "failed",
        "report_status": "failed",
        "error": f"the LIFT task stopped: {error}",
        "finished_at": at,
        "heartbeat_at": at,
    }
    write_status(store, failed)
    return failed


def published_by_run(store: Store, record: dict[str, Any], now: Clock = time.time) -> dict[str, Any] | None:
    """The `published` record of a running document whose adapter this run has published already, else None.

    A batch's documents publish one by one as they finish training; the task's final records come when the
    whole batch is done. Reading the manifest (same text and config, published after the run started) lets
    each document's record say `published` when its adapter is servable.
    """
    manifest = read_manifest(store, record["namespace"], record["id"])
    if not manifest or (manifest.get("doc_sha256"), manifest.get("config_hash")) != (
        record["doc_sha256"],
        record["config_hash"],
    ):
        return None
    published, started = _seconds(manifest.get("published_at")), _seconds(record.get("started_at"))
    if published is None or started is None or published < started:
        return None
    return {  # report_status and timings come with the batch's end
        **record,
        **_adapter_fields(manifest),
        "status": "published",
        "finished_at": _iso(published),
        "heartbeat_at": _iso(now()),
    }


def run_online_lift(
    records: list[dict[str, Any]],
    documents: list[Document],
    config: LiftConfig,
    lift: Callable[[list[Document], LiftConfig], list[Any]] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    poll_s: float = PUBLISHED_POLL_S,
    now: Clock = time.time,
) -> list[dict[str, Any]]:
    """What the Ray task runs for one batch: record `running`, LIFT the documents in one run, record each outcome.

    `records[i]` is the queued record of `documents[i]`; returns their final records in that order. While
    the run goes on, a thread looks every `poll_s` for adapters the run has published (`published_by_run`)
    and rewrites the other records every `heartbeat_s`. `lift` defaults to `lift_documents`; `config.storage`
    names the store and the tenant's namespace.
    """
    if len(records) != len(documents) or not documents:
        raise ValueError(f"{len(records)} records for {len(documents)} documents")
    store = Store.from_uri(config.storage.root)
    at = _iso(now())
    running = [
        {**record, "status": "running", "started_at": at, "heartbeat_at": at, "batch_size": len(documents)}
        for record in records
    ]
    for record in running:
        write_status(store, record)
    stop, lock = threading.Event(), threading.Lock()

    def watch() -> None:
        last_beat = time.monotonic()
        while not stop.wait(poll_s):
            with lock:
                if stop.is_set():
                    return
                beat = time.monotonic() - last_beat >= heartbeat_s
                if beat:
                    last_beat = time.monotonic()
                for i, record in enumerate(running):
                    if record["status"] != "running":
                        continue
                    try:
                        early = published_by_run(store, record, now)
                        if early is not None:
                            running[i] = early
                            write_status(store, early)
                        elif beat:
                            write_status(store, {**record, "heartbeat_at": _iso(now())})
                    except StoreError as exc:  # a missed beat or look is not worth failing the run for
                        log.warning("%s: status not updated: %s", record["id"], exc)

    watcher = threading.Thread(target=watch, name=f"lift-heartbeat-{records[0]['batch_id']}", daemon=True)
    watcher.start()
    try:
        if lift is None:
            from lift_ray.pipeline import lift_documents as lift
        reports = {report.doc_id: report for report in lift(documents, config)}
    except Exception as exc:
        log.exception("online LIFT of %s failed", ", ".join(document.doc_id for document in documents))
        reports, error = {}, f"{type(exc).__name__}: {exc}"
    else:
        error = "the run returned no report for it"
    finally:
        with lock:
            stop.set()
        watcher.join()
    finals = []
    for record in running:
        report = reports.get(record["id"])
        final = final_record(record, report, None if report else error, now)
        if record["status"] == "published" and final["status"] == "published":
            final["finished_at"] = record["finished_at"]  # servable since then
        if report is not None and report.status == "skipped":  # published with this text and config already
            manifest = read_manifest(store, config.storage.namespace, record["id"]) or {}
            final.update(_adapter_fields(manifest))
        finals.append(final)
    for final in finals:
        write_status(store, final)
    return finals


# ---------------------------------------------------------------- batches


class OnlineBatch:
    """Documents of one namespace posted close together, to be LIFTed in one run."""

    def __init__(self, namespace: str, config: LiftConfig) -> None:
        self.namespace, self.config = namespace, config
        self.batch_id = uuid.uuid4().hex[:12]
        self.records: list[dict[str, Any]] = []
        self.documents: list[Document] = []
        self.full = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Batcher:
    """Groups posted documents into batches per namespace and runs each batch once (plain asyncio, no Ray).

    A batch opens with its first document and closes `window_s` later, or at once when it holds
    `max_documents`. At most `max_running` batches run at a time: a batch whose window has passed waits for a
    slot and keeps taking documents meanwhile (up to `max_documents`), so under load the batches grow instead
    of the runs piling up on the same machines. `run(batch)` LIFTs a closed batch; `beat(batch)` is called
    every `beat_s` while a batch waits, so that its queued records do not go stale. Callers hold `lock` from
    `open_batch` to `added`, so that no document joins a batch after it closed.
    """

    def __init__(
        self,
        window_s: float,
        max_documents: int,
        max_running: int,
        run: Callable[[OnlineBatch], Awaitable[None]],
        beat: Callable[[OnlineBatch], Awaitable[None]] | None = None,
        beat_s: float = HEARTBEAT_S,
    ) -> None:
        self.window_s, self.max_documents, self.run = window_s, max_documents, run
        self.beat, self.beat_s = beat, beat_s
        self.lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(max_running)
        self.open: dict[str, OnlineBatch] = {}

    def open_batch(self, namespace: str, config: Callable[[], LiftConfig]) -> OnlineBatch:
        """The namespace's batch that still takes documents, or a new one (`config` makes its LiftConfig)."""
        batch = self.open.get(namespace)
        if batch is None:
            batch = self.open[namespace] = OnlineBatch(namespace, config())
            batch.task = asyncio.create_task(self._lifecycle(batch), name=f"lift-batch-{batch.batch_id}")
        return batch

    def added(self, batch: OnlineBatch, record: dict[str, Any], document: Document) -> asyncio.Task[None]:
        """Put a document (its queued record written) in `batch`; returns the task that will run it."""
        assert batch.task is not None and self.open.get(batch.namespace) is batch, "the batch is closed"
        batch.records.append(record)
        batch.documents.append(document)
        if len(batch.documents) >= self.max_documents:
            self._close(batch)
        return batch.task

    def _close(self, batch: OnlineBatch) -> None:
        if self.open.get(batch.namespace) is batch:
            del self.open[batch.namespace]
        batch.full.set()

    async def _lifecycle(self, batch: OnlineBatch) -> None:
        try:
            await asyncio.wait_for(batch.full.wait(), self.window_s)
        except TimeoutError:
            pass
        while True:
            try:
                await asyncio.wait_for(self.slots.acquire(), self.beat_s)
                break
            except TimeoutError:
                if self.beat is not None:
                    await self.beat(batch)
        try:
            async with self.lock:
                self._close(batch)
            if batch.documents:  # none when the first document's queued record could not be written
                log.info("online LIFT batch %s: %d documents", batch.batch_id, len(batch.documents))
                await self.run(batch)
        finally:
            self.slots.release()
