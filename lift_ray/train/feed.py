"""The generator's rows handed to the training workers as they are produced (training while generating).

Why not give the generator's Ray Dataset to TorchTrainer (`datasets=`)? Ray Data's `streaming_split`
starts executing only once every worker has asked for its first block, so generation would wait for the
worker group's start-up (worker processes, imports, process group: ~12 s on 2 CPUs), and the generator's
own start-up (the vLLM engine) would queue behind that. Instead the driver iterates the dataset from the
moment the run starts (`pump_rows`, on a thread) and appends its rows to a `RowFeed` actor; each worker
reads its share from the feed (`feed_rows`: row i goes to rank i % world_size, over any node). The feed
keeps a document's rows until the document is finished, so a restarted worker group (FailureConfig)
reads the unfinished documents' rows again and never waits for rows that were handed to a dead worker.
The feed is bounded (`train.feed_max_rows`): the pump waits while it holds that many rows of unfinished
documents, unless the document being trained still lacks rows, so generation runs at most that far ahead
of training and memory does not grow with the number of documents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class RowFeed:
    """An append-only log of QA rows with per-rank reading and a bound on the rows it holds.

    Rows are kept until their document is finished (`forget`), so a restarted reader reads them again. The
    bound (`max_rows`, 0: none) is what `pump_rows` waits on (`has_room`): the feed takes more rows while it
    holds fewer than `max_rows` rows of unfinished documents, or while the document the trainers are on (the
    first unfinished one of `order`, the run's streamed documents in training order) does not have all its
    `expected` rows yet, so the trainers never wait for rows that the bound holds back. Memory is the held rows
    plus one id per finished document: a published document's rows, positions and seen-sentence set go.
    """

    def __init__(
        self, max_rows: int = 0, order: list[str] | None = None, expected: dict[str, int] | None = None
    ) -> None:
        self.max_rows = max_rows
        self._order = list(order or [])
        self._expected = dict(expected or {})
        self._next = 0  # index in _order of the first unfinished document
        self._rows: dict[int, dict[str, Any]] = {}  # position -> row, for unfinished documents only
        self._end = 0  # positions handed out so far
        self._positions: dict[str, list[int]] = {}
        self._seen: dict[str, set[int]] = {}  # sentence indexes per unfinished document
        self._finished: set[str] = set()
        self._done = False
        self._error: str | None = None
        self.peak_rows = 0

    def append(self, rows: list[dict[str, Any]]) -> int:
        """Add rows at the end, dropping repeats of a sentence (a retried generator task can emit a block twice)
        and rows of finished documents. Returns how many rows the feed holds now."""
        for row in rows:
            doc_id, sentence = str(row["doc_id"]), int(row["sentence_index"])
            seen = self._seen.setdefault(doc_id, set()) if doc_id not in self._finished else None
            if seen is None or sentence in seen:
                continue
            seen.add(sentence)
            self._positions.setdefault(doc_id, []).append(self._end)
            self._rows[self._end] = row
            self._end += 1
        self.peak_rows = max(self.peak_rows, len(self._rows))
        return len(self._rows)

    def has_room(self) -> bool:
        """Whether the pump may append its next block: under the bound, or the current document is incomplete."""
        if not self.max_rows or len(self._rows) < self.max_rows:
            return True
        while self._next < len(self._order) and self._order[self._next] in self._finished:
            self._next += 1
        if self._next == len(self._order):
            return True
        current = self._order[self._next]
        return len(self._seen.get(current, ())) < self._expected.get(current, 1)

    def finish(self, error: str | None = None) -> None:
        """No more rows will come; `error` says why generation stopped early, if it did."""
        self._done, self._error = True, error

    def read(
        self, cursor: int, rank: int, world_size: int, max_rows: int = 4096
    ) -> tuple[list[dict[str, Any]], int, bool, str | None]:
        """Rows of `rank`'s share at positions from `cursor` on: (rows, next cursor, finished, error)."""
        end = min(self._end, cursor + max_rows)
        rows = [row for i in range(cursor, end) if i % world_size == rank and (row := self._rows.get(i)) is not None]
        return rows, end, self._done and end == self._end, self._error

    def forget(self, doc_id: str) -> None:
        """Drop the rows of a finished document (published or failed: a restarted worker group skips it)."""
        self._finished.add(doc_id)
        self._seen.pop(doc_id, None)
        for position in self._positions.pop(doc_id, []):
            self._rows.pop(position, None)

    def held(self) -> int:
        """How many rows the feed holds now (rows of unfinished documents)."""
        return len(self._rows)

    def peak(self) -> int:
        """The most rows the feed held at once."""
        return self.peak_rows


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


def wait_for_room(feed: Any, stop: threading.Event, poll_s: float = 0.05) -> bool:
    """Block until `feed` has room for another block (backpressure); False if `stop` was set meanwhile."""
    import ray

    while not ray.get(feed.has_room.remote()):
        if stop.wait(poll_s):
            return False
    return True


def pump_rows(
    stream: Any,
    feed: Any,
    stop: threading.Event,
    poll_s: float = 0.05,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> None:
    """Iterates the generator's Ray Dataset into `feed`, one block at a time, until done or `stop` is set;
    `on_rows` (progress) sees each block once the feed has it.

    Before each block it waits until the feed has room (`RowFeed.has_room`): while it waits it takes no
    more blocks, so Ray Data's own backpressure stops the generator once its output buffers are full.
    """
    import ray

    error = None
    try:
        # prefetch_batches=0: with Ray Data's default of 1, a block reached the feed only once the next was made
        for batch in stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            if not wait_for_room(feed, stop, poll_s):
                error = "the training run ended before generation finished"
                break
            rows = batch.to_pylist()
            ray.get(feed.append.remote(rows))
            if on_rows is not None:
                on_rows(rows)
            if stop.is_set():
                error = "the training run ended before generation finished"
                break
    except Exception as exc:  # the workers raise it; the run reports it
        log.exception("QA generation failed")
        error = f"{type(exc).__name__}: {exc}"
    if not ray.is_initialized():  # the driver is shutting down (a stopped job): its actors go with it
        return
    ray.get(feed.finish.remote(error))
