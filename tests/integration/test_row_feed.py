"""The row feed on a real local Ray: generated rows reach readers while generation runs, and so do failures."""

from __future__ import annotations

import threading
import time

import pytest

from lift_ray.train.feed import RowFeed, feed_rows, pump_rows

pytestmark = pytest.mark.integration


def test_rows_reach_the_reader_while_later_rows_are_still_being_generated(ray_cluster):
    import ray

    def slow_generator(batch: dict) -> dict:
        time.sleep(1.0)
        return {**batch, "generated_at": [time.time()] * len(batch["doc_id"])}

    items = [{"doc_id": f"d{i}", "sentence_index": 0} for i in range(4)]
    stream = ray.data.from_items(items, override_num_blocks=4).map_batches(slow_generator, batch_size=1, concurrency=1)
    feed = ray.remote(num_cpus=0)(RowFeed).remote()
    pump = threading.Thread(target=pump_rows, args=(stream, feed, threading.Event()))
    pump.start()
    arrivals = [(time.time(), row) for row in feed_rows(feed, rank=0, world_size=1, poll_s=0.02)]
    pump.join()
    assert sorted(row["doc_id"] for _, row in arrivals) == ["d0", "d1", "d2", "d3"]
    last_generated = max(row["generated_at"] for _, row in arrivals)
    assert arrivals[0][0] < last_generated - 1.5  # the first row was read ~2 generations before the last was made


def test_a_failed_generation_reaches_the_readers_with_its_reason(ray_cluster):
    import ray

    def broken_generator(batch: dict) -> dict:
        raise ValueError("generator actor died")

    stream = ray.data.from_items([{"doc_id": "a", "sentence_index": 0}]).map_batches(broken_generator)
    feed = ray.remote(num_cpus=0)(RowFeed).remote()
    pump_rows(stream, feed, threading.Event())
    with pytest.raises(RuntimeError, match="generator actor died"):
        list(feed_rows(feed, rank=0, world_size=1))


def test_one_documents_qa_reaches_the_reader_batch_by_batch(ray_cluster, lift_config):
    """The real QA stream over one document, pumped into a feed: each generator batch is read as soon as it is made.

    (The split emits one block per document, and Ray Data's iterator held each block until the next was made:
    a document's QA reached the trainer only once all of it was generated.)
    """
    import ray

    from lift_ray.documents import Document
    from lift_ray.pipeline import build_qa_stream, sentence_count
    from testkit.chat_stub import ChatStub, serving

    text = " ".join(f"Fact number {i} is that {i} plus {i} is {2 * i}." for i in range(6))
    document = Document.from_text("six", text)
    stub = ChatStub(delay_s=1.5)  # well above Ray Data's lag in handing a block on
    with serving() as start:
        generator = lift_config.generator.model_copy(
            update={
                "engine": "openai",
                "openai": lift_config.generator.openai.model_copy(update={"base_url": start(stub)}),
                "batch_size": 2,
                "max_retries": 0,
                "answer_aware": "off",
                "verify_answers": False,
                "sentence_cache": False,
            }
        )
        config = lift_config.model_copy(update={"generator": generator})
        assert sentence_count(document, config) == 6
        feed = ray.remote(num_cpus=0)(RowFeed).remote()
        pump = threading.Thread(target=pump_rows, args=(build_qa_stream([document], config), feed, threading.Event()))
        pump.start()
        arrivals = [(time.time(), len(stub.bodies)) for _ in feed_rows(feed, rank=0, world_size=1, poll_s=0.02)]
        pump.join()
    assert len(arrivals) == 6 and len(stub.bodies) == 6  # one request per sentence, no retries
    assert arrivals[0][1] < 6  # the first rows were read before the last batch was asked for
    assert arrivals[-1][0] - arrivals[0][0] >= 1.5  # ... at least one batch's latency before the last rows


def test_cutting_into_batches_runs_beside_actors_that_hold_all_but_a_quarter_cpu(ray_cluster):
    """`blocks_of`' tasks take the CPU they are given: `repartition`'s default of 1 CPU waited forever here."""
    import ray

    from lift_ray.pipeline import blocks_of

    @ray.remote
    class Holder:
        def ready(self) -> bool:
            return True

    spare = 0.3
    holder = Holder.options(num_cpus=ray.available_resources()["CPU"] - spare).remote()
    try:
        ray.get(holder.ready.remote())
        rows = ray.data.from_items([{"doc": 0}]).flat_map(lambda r: [{"i": i} for i in range(6)], num_cpus=0.25)
        sizes: list[int] = []
        reader = threading.Thread(
            target=lambda: sizes.extend(
                b.num_rows for b in blocks_of(rows, 2, 0.25).iter_batches(batch_size=None, batch_format="pyarrow")
            ),
            daemon=True,
        )
        reader.start()
        reader.join(timeout=120)
        assert sizes == [2, 2, 2], "the cutting tasks did not run beside the actors"
    finally:
        ray.kill(holder)
