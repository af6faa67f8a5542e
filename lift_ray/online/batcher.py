"""Batches of online LIFT: documents of one namespace posted close together are LIFTed in one run.

Plain asyncio, no Ray: the ingress adds each admitted document to its namespace's open batch; a batch
closes `online_lift.batch_window_s` after its first document, or when full, and then runs once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.online.status import HEARTBEAT_S

log = logging.getLogger(__name__)


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
