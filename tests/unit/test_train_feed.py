"""RowFeed: the log of generated rows that training workers read their shares from."""

from __future__ import annotations

import subprocess
import sys

from lift_ray.train.feed import RowFeed


def rows(doc_id: str, count: int) -> list[dict]:
    return [{"doc_id": doc_id, "sentence_index": i} for i in range(count)]


def read_all(feed: RowFeed, rank: int, world_size: int) -> tuple[list[dict], bool]:
    cursor, got, finished = 0, [], False
    while not finished:
        batch, next_cursor, finished, _ = feed.read(cursor, rank, world_size, max_rows=2)
        got += batch
        if next_cursor == cursor:
            break
        cursor = next_cursor
    return got, finished


def test_each_row_goes_to_exactly_one_rank_and_the_end_is_seen_after_the_last_row():
    feed = RowFeed()
    feed.append(rows("a", 5))
    feed.append(rows("b", 2))
    shares = [read_all(feed, rank, 3)[0] for rank in range(3)]
    assert sorted(len(share) for share in shares) == [2, 2, 3]
    assert sorted((r["doc_id"], r["sentence_index"]) for share in shares for r in share) == sorted(
        [("a", i) for i in range(5)] + [("b", i) for i in range(2)]
    )
    assert read_all(feed, 0, 3)[1] is False  # not finished: more rows may come
    feed.finish()
    assert read_all(feed, 0, 3)[1] is True
    assert feed.read(0, 0, 1)[1:] == (7, True, None)


def test_a_restarted_reader_gets_every_unpublished_row_again():
    feed = RowFeed()
    feed.append(rows("a", 3) + rows("b", 3))
    feed.finish()
    assert len(read_all(feed, 0, 1)[0]) == 6
    feed.forget("a")
    again, finished = read_all(feed, 0, 1)
    assert finished and [r["doc_id"] for r in again] == ["b", "b", "b"]


def test_a_sentence_row_that_comes_twice_is_fed_once() -> None:
    feed = RowFeed()
    feed.append(rows("a", 3))
    feed.append(rows("a", 2) + rows("b", 1))  # a retried generator task emits its block again
    feed.finish()
    got, finished = read_all(feed, 0, 1)
    assert finished
    assert [(r["doc_id"], r["sentence_index"]) for r in got] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    feed.forget("a")
    feed.append(rows("a", 1))  # and after its document was published
    assert [r["doc_id"] for r in read_all(feed, 0, 1)[0]] == ["b"]


def test_run_actors_start_without_importing_torch() -> None:
    """RowFeed and ResultCollector processes import only their modules: no torch, transformers or peft."""
    probe = (
        "import sys, lift_ray.train.feed, lift_ray.train.collector\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _pump_and_train(feed: RowFeed, blocks: list[list[dict]], order: list[str], expected: dict[str, int]) -> int:
    """A pump appending `blocks` whenever the feed has room, and trainers finishing documents in `order` once
    all their rows are in; the most rows the feed held. Fails if the two wait for each other."""
    held = 0
    done: set[str] = set()
    waits = 0
    while blocks or len(done) < len(order):
        if blocks and feed.has_room():
            held = max(held, feed.append(blocks.pop(0)))
            continue
        current = next(doc for doc in order if doc not in done)
        rows, _, _, _ = feed.read(0, 0, 1, max_rows=1 << 20)
        if sum(row["doc_id"] == current for row in rows) < expected[current]:
            waits += 1
            assert waits < 1000, f"the pump waits for room while the trainers wait for {current}'s rows"
            continue
        feed.forget(current)  # trained and published
        done.add(current)
    return held


def test_the_feed_never_holds_more_than_its_bound_plus_one_block() -> None:
    order = [f"d{i:03d}" for i in range(200)]
    expected = dict.fromkeys(order, 3)
    stream = [row for doc in order for row in rows(doc, 3)]
    blocks = [stream[i : i + 4] for i in range(0, len(stream), 4)]
    bounded = _pump_and_train(RowFeed(max_rows=20, order=order, expected=expected), list(blocks), order, expected)
    assert bounded <= 20 - 1 + 4
    unbounded = _pump_and_train(RowFeed(order=order, expected=expected), list(blocks), order, expected)
    assert unbounded == len(stream)  # without a bound the pump runs to the end first: every row at once


def test_a_document_longer_than_the_bound_still_arrives_whole() -> None:
    order = ["big", "small"]
    expected = {"big": 50, "small": 2}
    blocks = [rows("big", 50)[i : i + 4] for i in range(0, 50, 4)] + [rows("small", 2)]
    assert _pump_and_train(RowFeed(max_rows=8, order=order, expected=expected), blocks, order, expected) >= 50


def test_room_comes_back_when_the_current_document_is_finished() -> None:
    feed = RowFeed(max_rows=4, order=["a", "b"], expected={"a": 3, "b": 3})
    feed.append(rows("a", 3) + rows("b", 1))
    assert not feed.has_room()  # 4 rows held and "a", the document being trained, has all of its rows
    feed.forget("a")
    assert feed.has_room() and feed.held() == 1
    feed.append(rows("a", 3))  # rows of a finished document (a retried block) are not taken again
    assert feed.held() == 1
