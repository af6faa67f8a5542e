"""Online LIFT behind the ingress: admit posted documents into batches, run each batch as a Ray task, report.

`OnlineLift` is what `POST /v1/documents` and `GET /v1/documents/{id}` do, without the HTTP: it raises
`RequestRejected` with the status to answer. It lives in one ingress replica; the records in the store
are the truth every replica reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lift_ray.config import LiftConfig, OnlineLiftSettings
from lift_ray.documents import Document, InvalidDocumentId, validate_doc_id
from lift_ray.layout import read_manifest
from lift_ray.online.batcher import Batcher, OnlineBatch
from lift_ray.online.requests import DocumentRequest, RequestRejected, load_document
from lift_ray.online.run_config import for_namespace
from lift_ray.online.runner import online_lift_task, run_online_lift
from lift_ray.online.status import (
    admit,
    document_status,
    mark_crashed,
    new_record,
    read_status,
    with_heartbeat,
    write_status,
)
from lift_ray.online.warm import WarmPool
from lift_ray.serving.index import ManifestIndex
from lift_ray.storage import Store

log = logging.getLogger(__name__)

RunBatch = Callable[[list[dict[str, Any]], list[Document], LiftConfig], Awaitable[list[dict[str, Any]]]]


async def run_as_ray_task(
    records: list[dict[str, Any]], documents: list[Document], config: LiftConfig
) -> list[dict[str, Any]]:
    """The batch's final records, from `online_lift_task` on the cluster (the bulk path: a cold start each time)."""
    return await online_lift_task.remote(records, documents, config)


def run_on_warm_worker(pool: WarmPool) -> RunBatch:
    """`run_online_lift` in this process (a thread), LIFTing on the pool's warm worker."""

    async def run(records: list[dict[str, Any]], documents: list[Document], config: LiftConfig) -> list[dict[str, Any]]:
        return await asyncio.to_thread(run_online_lift, records, documents, config, pool.lift)

    return run


class OnlineLift:
    """One ingress replica's online LIFT: its documents in flight, their batches, and the status answers."""

    def __init__(
        self,
        settings: OnlineLiftSettings,
        lift_config: LiftConfig,
        store: Store,
        index: ManifestIndex,
        run_batch: RunBatch | None = None,
    ) -> None:
        """`run_batch` LIFTs a closed batch; default: on a warm worker (`online_lift.warm_workers`), else as a Ray
        task."""
        self.settings, self.lift_config, self.store, self.index = settings, lift_config, store, index
        self.warm: WarmPool | None = None
        if run_batch is None and settings.warm_workers:
            self.warm = WarmPool(lift_config, settings.warm_idle_s, settings.warm_retries)
            if settings.warm_start:
                self.warm.start()
            run_batch = run_on_warm_worker(self.warm)
        self.run_batch = run_batch or run_as_ray_task
        # (namespace, doc_id) -> (record, its batch's task)
        self.runs: dict[tuple[str, str], tuple[dict[str, Any], asyncio.Task[None]]] = {}
        self.batcher = Batcher(
            settings.batch_window_s,
            settings.max_batch_documents,
            settings.max_running_batches,
            run=self._run,
            beat=self._beat_queued,
        )

    async def submit(self, namespace: str, body: DocumentRequest) -> dict[str, Any]:
        """The record of the posted document: a new queued one, or the one already in flight for this text."""
        document = await asyncio.to_thread(
            load_document, body, self.settings.max_document_bytes, self.settings.uri_prefixes
        )
        async with self.batcher.lock:
            return await self._admit(namespace, document, source=body.uri or "text")

    async def _admit(self, namespace: str, document: Document, source: str) -> dict[str, Any]:
        """The in-flight record for this text, or a new queued record in the namespace's open batch (409 / 429)."""
        key = (namespace, document.doc_id)
        existing = await asyncio.to_thread(read_status, self.store, namespace, document.doc_id)
        mine = self.runs.get(key)
        if mine is not None and (existing is None or existing.get("run_id") != mine[0]["run_id"]):
            existing = mine[0]
        answer = admit(existing, document)
        if answer is not None:
            return answer
        in_flight = sum(not watcher.done() for _, watcher in self.runs.values())
        limit = self.settings.max_in_flight
        if in_flight >= limit:
            raise RequestRejected(
                429,
                f"{in_flight} documents are queued or LIFTing on this endpoint already "
                f"(online_lift.max_in_flight={limit})"
                "; try again later",
            )
        lift_config = self.lift_config
        batch = self.batcher.open_batch(namespace, lambda: for_namespace(lift_config, namespace))
        record = new_record(document, namespace, batch.config.adapter_hash(), source, batch.batch_id)
        await asyncio.to_thread(write_status, self.store, record)
        self.index.forget_miss(namespace, document.doc_id)
        self.runs[key] = (record, self.batcher.added(batch, record, document))
        return record

    async def _beat_queued(self, batch: OnlineBatch) -> None:
        """A batch waiting for its turn: its documents' queued records are alive."""
        for record in batch.records:
            try:
                await asyncio.to_thread(write_status, self.store, with_heartbeat(record))
            except Exception:  # a missed beat is not worth more than a log line
                log.warning("online LIFT %s: queued heartbeat not written", record["id"], exc_info=True)

    async def _run(self, batch: OnlineBatch) -> None:
        """LIFT a closed batch (in one Ray task), then make the adapters it published visible here."""
        namespace = batch.namespace
        try:
            try:
                finals = await self.run_batch(batch.records, batch.documents, batch.config)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                finals = [await asyncio.to_thread(mark_crashed, self.store, r, error) for r in batch.records]
            for final in finals:
                if final["status"] == "published":
                    manifest = await asyncio.to_thread(read_manifest, self.store, namespace, final["id"])
                    if manifest is not None:
                        self.index.remember(namespace, manifest)
        except Exception:  # never let a batch task die loudly: the records in the store are the truth
            log.exception("online LIFT batch %s: watcher failed", batch.batch_id)
        finally:
            for record in batch.records:
                key = (namespace, record["id"])
                if self.runs.get(key, ({"run_id": None},))[0]["run_id"] == record["run_id"]:
                    del self.runs[key]

    async def status(self, namespace: str, doc_id: str) -> dict[str, Any]:
        """queued | running | published | failed, with the report's timings, qa_count and adapter_uri (404 if none)."""
        try:
            validate_doc_id(doc_id)
        except InvalidDocumentId as exc:
            raise RequestRejected(404, f"no document {doc_id!r}: {exc}") from None
        status = await asyncio.to_thread(document_status, self.store, namespace, doc_id)
        if status is None:
            # The same answer for an unknown id and another tenant's: existence does not leak.
            raise RequestRejected(404, f"no document {doc_id!r}: nothing was submitted or published under that id")
        if status["status"] == "published":
            # Published by another replica's run, maybe: make sure a remembered miss does not hide it here.
            self.index.forget_miss(namespace, doc_id)
            await asyncio.to_thread(self.index.lookup, namespace, doc_id)
        return status
