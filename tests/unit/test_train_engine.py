"""The training engine without Ray: streaming epoch 1, fresh adapters per document, variants, data parallelism."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lift_ray.config import LiftConfig, load_config
from lift_ray.models import load_tokenizer
from lift_ray.train.dataset import raw_segments, segment_starts
from lift_ray.train.loop import (
    AdapterTrainer,
    BufferedRowSource,
    DocumentJob,
    DocumentResult,
    allocate,
)

FACTS = ["red kite", "blue boat", "green lamp", "gold ring", "grey wall", "pink shell"]


def _config(**overrides: Any) -> LiftConfig:
    base = {"train.epochs": 2, "train.batch_size": 4, "train.holdout_share": 0}
    return load_config(LiftConfig, None, [f"{k}={v}" for k, v in {**base, **overrides}.items()])


def _rows(doc_id: str, facts: list[str]) -> list[dict[str, Any]]:
    """One sentence row per fact, two QA pairs each (as the generator writes them)."""
    return [
        {
            "doc_id": doc_id,
            "sentence_index": i,
            "qa_json": json.dumps(
                [
                    {"question": f"What is item {i} of {doc_id}?", "answer": f"A {fact}."},
                    {"question": f"Which thing is number {i} in {doc_id}?", "answer": f"The {fact}."},
                ]
            ),
            "malformed": 0,
            "retried": False,
            "dropped": 0,
        }
        for i, fact in enumerate(facts)
    ]


def _adapter_state(trainer: AdapterTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_allocate_fills_the_batch_from_whoever_has_examples() -> None:
    assert allocate([4, 4], 8) == [4, 4]
    assert allocate([10, 0], 8) == [8, 0]  # a worker without rows of this document yet does not hold a step back
    assert allocate([1, 9], 8) == [1, 7]
    assert allocate([2, 1], 8) == [2, 1]  # the last, partial batch
    assert allocate([3, 3, 3], 8) == [3, 3, 2]
    for available in ([0, 0], [5, 2, 9], [1, 1, 1, 1]):
        assert sum(allocate(available, 4)) == min(4, sum(available))


def test_raw_segments_overlap_with_a_stride_of_three_eighths(embedded_model_dir: Path) -> None:
    assert segment_starts(300, 128) == [0, 48, 96, 144, 172]
    assert segment_starts(100, 128) == [0]
    tokenizer = load_tokenizer(embedded_model_dir)
    text = " ".join(f"Sentence {i} says the {fact}." for i, fact in enumerate(FACTS * 8))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    segments = raw_segments(tokenizer, text, 32)
    assert all(len(s["input_ids"]) == 32 and s["labels"] == s["input_ids"] for s in segments)
    assert segments[1]["input_ids"][: 32 - 12] == segments[0]["input_ids"][12:]  # overlap of 5/8 l
    assert segments[-1]["input_ids"] == ids[-32:]  # the document's end is learned too


def test_epoch_one_trains_on_rows_as_they_arrive_and_later_epochs_reuse_them(tiny_model_dir: Path) -> None:
    config = _config(**{"train.epochs": 3, "train.poll_s": 0.01})
    trainer = AdapterTrainer(tiny_model_dir, config)
    rows = _rows("doc", FACTS)
    arrivals: list[float] = []

    def slow_generator():  # a producer: one sentence row every 0.3 s, another document's row mixed in
        for row in rows:
            time.sleep(0.3)
            arrivals.append(time.perf_counter())
            yield row
            yield {**row, "doc_id": "other"}

    steps: list[float] = []
    trainer.after_step = lambda _doc, _n: steps.append(time.perf_counter())
    cached: list[list[dict[str, Any]]] = []
    job = DocumentJob("doc", expected_rows=len(rows))
    result = trainer.train_document(job, BufferedRowSource(slow_generator()), on_rows=lambda _j, r: cached.append(r))

    assert result.qa_count == 12 and result.counters["sentences"] == 6
    assert [r["sentence_index"] for r in cached[0]] == list(range(6))  # the cache gets every row, in order
    assert len(result.history.epoch_losses) == 3
    assert len(result.history.step_losses) == 3 * 3  # 12 pairs, batch 4: 3 steps per epoch, epoch 1 included
    assert steps[0] < arrivals[-1]  # training began before generation ended
    assert result.timings["wait_s"] > 0.5  # and waited for the producer in between


def test_a_stream_that_ends_before_every_sentence_arrived_fails_the_document_and_caches_nothing(
    tiny_model_dir: Path,
) -> None:
    """A stopped job's generator may end its stream early; the partial QA must not be cached as complete."""
    trainer = AdapterTrainer(tiny_model_dir, _config(**{"train.poll_s": 0.01}))
    rows = _rows("doc", FACTS)
    cached: list[list[dict[str, Any]]] = []
    adapters: list[str] = []
    result = trainer.train_document(
        DocumentJob("doc", expected_rows=len(rows)),
        BufferedRowSource(iter(rows[:4])),  # 4 of 6 sentences, then the end
        on_rows=lambda _j, r: cached.append(r),
        on_adapter=lambda job, _dir, _r: adapters.append(job.doc_id) or {},
    )
    assert result.status == "failed"
    assert result.error is not None and "4 of 6 sentences" in result.error
    assert result.counters["sentences"] == 4
    assert cached == [] and adapters == []  # nothing cached, nothing published

    duplicated = AdapterTrainer(tiny_model_dir, _config(**{"train.poll_s": 0.01}))
    again = duplicated.train_document(
        DocumentJob("doc", expected_rows=len(rows)), BufferedRowSource(iter(rows[:5] + rows[:1]))
    )  # a retried generator task repeats a row: six rows, five sentences
    assert again.status == "failed" and "5 of 6 sentences" in (again.error or "")


def test_each_document_gets_a_fresh_adapter_on_the_same_base_model(tiny_model_dir: Path) -> None:
    config = _config()
    first, second = _rows("first", FACTS[:4]), _rows("second", FACTS[2:])
    reused = AdapterTrainer(tiny_model_dir, config)
    reused.train_document(DocumentJob("first", rows=first))
    reused.train_document(DocumentJob("second", rows=second))
    alone = AdapterTrainer(tiny_model_dir, config)
    alone.train_document(DocumentJob("second", rows=second))
    after_both, after_one = _adapter_state(reused), _adapter_state(alone)
    assert all(torch.allclose(after_both[k], after_one[k], atol=1e-6) for k in after_one)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after_one.items() if "lora_B" in k)


def test_variants_finetune_raw_and_lift_mixed(tiny_model_dir: Path) -> None:
    text = " ".join(f"The {fact} is in room {i}." for i, fact in enumerate(FACTS * 4))
    raw = AdapterTrainer(tiny_model_dir, _config(**{"train.variant": "finetune_raw", "train.segment_tokens": 32}))
    result = raw.train_document(DocumentJob("raw", text=text, rows=[]))
    assert result.status == "trained" and result.qa_count == 0 and result.segment_count >= 3
    assert result.history.trained_tokens == 2 * 32 * result.segment_count  # every segment, every epoch

    mixed_config = _config(**{"train.variant": "lift_mixed", "train.segment_tokens": 32, "train.gamma": 0.0})
    mixed = AdapterTrainer(tiny_model_dir, mixed_config)
    result = mixed.train_document(DocumentJob("mixed", text=text, rows=_rows("mixed", FACTS)))
    assert result.qa_count == 12 and result.segment_count >= 3
    # gamma=0: the QA pairs are in the batches but weigh nothing in the loss.
    examples = mixed.qa_examples(_rows("mixed", FACTS))
    assert examples and all(e["weight"] == 0.0 for e in examples)

    qa_only = AdapterTrainer(tiny_model_dir, _config())
    assert qa_only.segment_examples(text) == []  # plain lift learns no raw text
    failed = qa_only.train_document(DocumentJob("empty", rows=[{"sentence_index": 0, "qa_json": "[]"}]))
    assert failed.status == "failed" and "no valid QA pairs" in failed.error


def _dp_worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from lift_ray.train.loop import TorchCollective

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    trainer = AdapterTrainer(Path(model_dir), _config(), TorchCollective())
    rows = _rows("doc", FACTS)
    # Uneven, unordered shards: rank 0 gets one sentence (late), rank 1 the other five.
    mine = rows[:1] if rank == 0 else rows[1:]

    def shard():
        if rank == 0:
            time.sleep(1.0)
        yield from reversed(mine)

    result: DocumentResult = trainer.train_document(
        DocumentJob("doc", expected_rows=len(rows)), BufferedRowSource(shard())
    )
    torch.save({"state": _adapter_state(trainer), "losses": result.history.step_losses}, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_with_uneven_streamed_shards_stay_in_sync(tiny_model_dir: Path, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1))
    assert zero["losses"] == one["losses"] and len(zero["losses"]) == 6  # 12 pairs, batch 4, 2 epochs
    assert all(torch.equal(zero["state"][k], one["state"][k]) for k in zero["state"])  # one model, two ranks
