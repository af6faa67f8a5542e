"""Per-document progress in the store (`<namespace>/<doc_id>/lift_progress.json`), for online LIFT's status.

Sentences generated so far (written by the driver as rows arrive) and epochs trained (written by rank 0 after
each epoch), each at most every `min_interval_s` per document except the last: a run with
`storage.progress` on; online runs turn it on, bulk jobs leave it off (a PUT per document per epoch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lift_ray.layout import write_progress
from lift_ray.storage import Store, StoreError

log = logging.getLogger(__name__)


class ProgressWriter:
    """Writes what is known of each document's progress; a failed write is logged, never raised."""

    def __init__(
        self,
        store: Store,
        namespace: str,
        expected_sentences: dict[str, int] | None = None,
        min_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.namespace, self.min_interval_s, self.clock = store, namespace, min_interval_s, clock
        self.expected = dict(expected_sentences or {})
        self.sentences: dict[str, set[int]] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self.written_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def rows(self, rows: list[dict[str, Any]]) -> None:
        """Generated rows arrived (one per sentence): count each document's distinct sentences."""
        touched = set()
        with self.lock:
            for row in rows:
                doc_id = row["doc_id"]
                self.sentences.setdefault(doc_id, set()).add(int(row["sentence_index"]))
                touched.add(doc_id)
        for doc_id in sorted(touched):
            done, total = len(self.sentences[doc_id]), self.expected.get(doc_id)
            self._update(doc_id, {"sentences_done": done, "sentences_total": total}, final=done == total)

    def epoch(self, doc_id: str, done: int, total: int) -> None:
        """`done` of `total` epochs of a document are trained."""
        self._update(doc_id, {"epoch": done, "epochs": total}, final=True)

    def _update(self, doc_id: str, fields: dict[str, Any], final: bool) -> None:
        with self.lock:
            state = {**self.state.get(doc_id, {}), **fields}
            self.state[doc_id] = state
            now = self.clock()
            if not final and now - self.written_at.get(doc_id, float("-inf")) < self.min_interval_s:
                return
            self.written_at[doc_id] = now
        try:
            write_progress(self.store, self.namespace, doc_id, state)
        except (StoreError, OSError) as exc:
            log.warning("%s: progress not written: %s", doc_id, exc)
