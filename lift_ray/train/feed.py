"""The generator's rows handed to the training workers as they are produced (training while generating).

Why not give the generator's Ray Dataset to TorchTrainer (`datasets=`)? Ray Data's `streaming_split`
starts executing only once every worker has asked for its first block, so generation would wait for the
worker group's start-up (worker processes, imports, process group: ~12 s on 2 CPUs), and the generator's
own start-up (the vLLM engine) would queue behind that. Instead the driver iterates the dataset from the
moment the run starts (`pump_rows`, on a thread) and appends its rows to a `RowFeed` actor; each worker
reads its share from the feed (`feed_rows`: row i goes to rank i % world_size, over any node). The feed
keeps a document's rows until the document is published, so a restarted worker group (FailureConfig)
reads the unfinished documents' rows again and never waits for rows that were handed to a dead worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class RowFeed:
    """An append-only log of QA rows with per-rank reading; rows of published documents are dropped."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any] | None] = []
        self._positions: dict[str, list[int]] = {}
        self._seen: set[tuple[str, int]] = set()
        self._done = False
        self._error: str | None = None

    def append(self, rows: list[dict[str, Any]]) -> int:
        """Add rows at the end, dropping repeats of a sentence (a retried generator task can emit a block twice).

        Returns how many rows the feed holds positions for.
        """
        for row in rows:
            doc_id, sentence = str(row["doc_id"]), int(row["sentence_index"])
            if (doc_id, sentence) in self._seen:
                continue
            self._seen.add((doc_id, sentence))
            self._positions.setdefault(doc_id, []).append(len(self._rows))
            self._rows.append(row)
        return len(self._rows)

    def finish(self, error: str | None = None) -> None:
        """No more rows will come; `error` says why generation stopped early, if it did."""
        self._done, self._error = True, error

    def read(
        self, cursor: int, rank: int, world_size: int, max_rows: int = 4096
    ) -> tuple[list[dict[str, Any]], int, bool, str | None]:
        """Rows of `rank`'s share at positions from `cursor` on: (rows, next cursor, finished, error)."""
        end = min(len(self._rows), cursor + max_rows)
        rows = [row for i in range(cursor, end) if i % world_size == rank and (row := self._rows[i]) is not None]
        return rows, end, self._done and end == len(self._rows), self._error

    def forget(self, doc_id: str) -> None:
        """Drop the rows of a published document (a restarted worker group skips it)."""
        for position in self._positions.pop(doc_id, []):
            self._rows[position] = None


def feed_rows(feed: Any, rank: int, world_size: int, poll_s: float = 0.05) -> Iterator[dict[str, Any]]:
    """Yields `rank`'s rows from a `RowFeed` actor as they arrive, until the feed is finished."""
    import ray

    cursor = 0
    while True:
        rows, next_cursor, finished, error = ray.get(feed.read.remote(cursor, rank, world_size))
        if error:
            raise RuntimeError(f"QA generation stopped: {error}")
        yield from rows
        if finished:
            return
        if next_cursor == cursor:
            time.sleep(poll_s)
        cursor = next_cursor


def pump_rows(stream: Any, feed: Any, stop: threading.Event) -> None:
    """Iterates the generator's Ray Dataset into `feed`, one block at a time, until done or `stop` is set."""
    import ray

    error = None
    try:
        # prefetch_batches=0: with Ray Data's default of 1, a block reached the feed only once the next was made
        for batch in stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            ray.get(feed.append.remote(batch.to_pylist()))
            if stop.is_set():
                error = "the training run ended before generation finished"
                break
    except Exception as exc:  # the workers raise it; the run reports it
        log.exception("QA generation failed")
        error = f"{type(exc).__name__}: {exc}"
    if not ray.is_initialized():  # the driver is shutting down (a stopped job): its actors go with it
        return
    ray.get(feed.finish.remote(error))
