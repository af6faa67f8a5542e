"""The Ray task of online LIFT: one batch of posted documents LIFTed in one `lift_documents` run.

`run_online_lift` records `running`, then a thread beats every `HEARTBEAT_S` seconds and marks each
document `published` as soon as its manifest appears; the batch pays one trainer and generator start-up;
each document's final record comes from its report. `online_lift_task` is that function as a Ray task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.layout import read_manifest, read_progress
from lift_ray.online.status import (
    HEARTBEAT_S,
    Clock,
    adapter_fields,
    final_record,
    iso_time,
    published_by_run,
    write_status,
)
from lift_ray.pipeline import lift_documents
from lift_ray.report import DocumentReport
from lift_ray.storage import Store, StoreError

log = logging.getLogger(__name__)

PUBLISHED_POLL_S = 2.0  # how often a running batch looks for adapters it has published
Lift = Callable[[list[Document], LiftConfig], list[DocumentReport]]


class _Watcher:
    """The thread beside a running batch: early `published` records and heartbeats, until `stop`."""

    def __init__(
        self, store: Store, running: list[dict[str, Any]], heartbeat_s: float, poll_s: float, now: Clock
    ) -> None:
        self.store, self.running, self.heartbeat_s, self.poll_s, self.now = store, running, heartbeat_s, poll_s, now
        self.stopped, self.lock = threading.Event(), threading.Lock()
        self.thread = threading.Thread(target=self._watch, name=f"lift-heartbeat-{running[0]['batch_id']}", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        last_beat = time.monotonic()
        while not self.stopped.wait(self.poll_s):
            with self.lock:
                if self.stopped.is_set():
                    return
                beat = time.monotonic() - last_beat >= self.heartbeat_s
                if beat:
                    last_beat = time.monotonic()
                for i, record in enumerate(self.running):
                    if record["status"] == "running":
                        self._look(i, record, beat)

    def _look(self, i: int, record: dict[str, Any], beat: bool) -> None:
        try:
            early = published_by_run(self.store, record, self.now)
            progress = read_progress(self.store, record["namespace"], record["id"])
            if early is None and progress is not None and progress != record.get("progress"):
                early = {**record, "progress": progress, "heartbeat_at": iso_time(self.now())}
            elif early is not None and progress is not None:
                early = {**early, "progress": progress}
            if early is not None:
                self.running[i] = early
                write_status(self.store, early)
            elif beat:
                write_status(self.store, {**record, "heartbeat_at": iso_time(self.now())})
        except StoreError as exc:  # a missed beat or look is not worth failing the run for
            log.warning("%s: status not updated: %s", record["id"], exc)

    def stop(self) -> None:
        """Stop looking; no record is written after this returns."""
        with self.lock:
            self.stopped.set()
        self.thread.join()


def run_online_lift(
    records: list[dict[str, Any]],
    documents: list[Document],
    config: LiftConfig,
    lift: Lift = lift_documents,
    heartbeat_s: float = HEARTBEAT_S,
    poll_s: float = PUBLISHED_POLL_S,
    now: Clock = time.time,
) -> list[dict[str, Any]]:
    """What the Ray task runs for one batch: record `running`, LIFT the documents in one run, record each outcome.

    `records[i]` is the queued record of `documents[i]`; returns their final records in that order. While
    the run goes on, a thread looks every `poll_s` for adapters the run has published (`published_by_run`)
    and rewrites the other records every `heartbeat_s`. `config.storage` names the store and the tenant's
    namespace.
    """
    if len(records) != len(documents) or not documents:
        raise ValueError(f"{len(records)} records for {len(documents)} documents")
    store = Store.from_uri(config.storage.root)
    at = iso_time(now())
    running = [
        {**record, "status": "running", "started_at": at, "heartbeat_at": at, "batch_size": len(documents)}
        for record in records
    ]
    for record in running:
        write_status(store, record)
    watcher = _Watcher(store, running, heartbeat_s, poll_s, now)
    try:
        reports = {report.doc_id: report for report in lift(documents, config)}
    except Exception as exc:
        log.exception("online LIFT of %s failed", ", ".join(document.doc_id for document in documents))
        reports, error = {}, f"{type(exc).__name__}: {exc}"
    else:
        error = "the run returned no report for it"
    finally:
        watcher.stop()
    finals = []
    for record in running:
        report = reports.get(record["id"])
        final = final_record(record, report, None if report else error, now)
        if record["status"] == "published" and final["status"] == "published":
            final["finished_at"] = record["finished_at"]  # servable since then
        if report is not None and report.status == "skipped":  # published with this text and config already
            manifest = read_manifest(store, config.storage.namespace, record["id"]) or {}
            final.update(adapter_fields(manifest))
        finals.append(final)
    for final in finals:
        write_status(store, final)
    return finals


# The driver part of a batch's LIFT holds no CPU (its stages reserve their own). No retries: a task that
# dies is recorded as failed by the ingress, and posting the document again reruns it.
online_lift_task = ray.remote(num_cpus=0, max_retries=0)(run_online_lift)
