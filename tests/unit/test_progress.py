"""Per-document progress (sentences generated, epochs trained) in the store, and in online LIFT's status."""

from __future__ import annotations

import time
from pathlib import Path

import lift_ray.online as online
from lift_ray.config import LiftConfig, load_config
from lift_ray.documents import Document
from lift_ray.layout import read_progress
from lift_ray.progress import ProgressWriter
from lift_ray.report import DocumentReport
from lift_ray.storage import Store


def test_sentences_are_counted_once_each_and_writes_are_throttled_but_the_last_is_kept(tmp_path: Path) -> None:
    store = Store.from_uri(tmp_path / "store")
    now = [0.0]
    writer = ProgressWriter(store, "ns", {"bridge": 3}, min_interval_s=2.0, clock=lambda: now[0])
    writer.rows([{"doc_id": "bridge", "sentence_index": 0}])
    assert read_progress(store, "ns", "bridge") == {"sentences_done": 1, "sentences_total": 3}
    now[0] = 0.5
    writer.rows([{"doc_id": "bridge", "sentence_index": 1}, {"doc_id": "bridge", "sentence_index": 1}])
    assert read_progress(store, "ns", "bridge")["sentences_done"] == 1  # within 2 s of the last write
    now[0] = 0.6
    writer.rows([{"doc_id": "bridge", "sentence_index": 2}])  # the last sentence: written at once
    assert read_progress(store, "ns", "bridge") == {"sentences_done": 3, "sentences_total": 3}
    writer.epoch("bridge", 1, 4)
    assert read_progress(store, "ns", "bridge") == {"sentences_done": 3, "sentences_total": 3, "epoch": 1, "epochs": 4}
    assert read_progress(store, "ns", "mill") is None


def test_a_running_record_shows_the_progress_the_run_writes(tmp_path: Path) -> None:
    store = Store.from_uri(tmp_path / "store")
    config: LiftConfig = load_config(LiftConfig, None, [f"storage.root={store.uri}", "storage.namespace=ns"])
    document = Document.from_text("bridge", "The bridge opened in 1903. Its engineer was Mara Lind.")
    record = online.new_record(document, "ns", config.adapter_hash(), "text")
    seen: list[dict] = []

    def lift(documents, lift_config):
        writer = ProgressWriter(store, "ns", {"bridge": 2}, min_interval_s=0)
        writer.rows([{"doc_id": "bridge", "sentence_index": 0}, {"doc_id": "bridge", "sentence_index": 1}])
        writer.epoch("bridge", 1, 2)
        deadline = time.monotonic() + 5
        while not (online.read_status(store, "ns", "bridge") or {}).get("progress") and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(online.read_status(store, "ns", "bridge"))
        return [DocumentReport("bridge", "published", qa_count=2)]

    [final] = online.run_online_lift([record], [document], config, lift=lift, poll_s=0.01)
    assert seen[0]["status"] == "running"
    assert seen[0]["progress"] == {"sentences_done": 2, "sentences_total": 2, "epoch": 1, "epochs": 2}
    assert final["status"] == "published" and final["adapter_stage"] == "final"
