"""Draft adapters: published after the first epochs, served until the final adapter replaces them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig, ServeConfig, load_config
from lift_ray.layout import (
    adapter_is_current,
    fetch_adapter,
    is_draft,
    manifest_key,
    publish_adapter,
    read_manifest,
)
from lift_ray.online.run_config import lift_config_for
from lift_ray.online.status import published_by_run
from lift_ray.serving.index import ManifestIndex
from lift_ray.serving.openai_api import model_list
from lift_ray.storage import LocalStore, Store
from lift_ray.train.loop import AdapterTrainer, DocumentJob, DocumentResult
from lift_ray.train.trainer import StorePublisher


class RecordingStore(LocalStore):
    """A real local store that remembers which keys were deleted and in what order things happened."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str]] = []

    def delete(self, key: str) -> bool:
        self.events.append(("delete", key))
        return super().delete(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self.events.append(("write", key))
        super().write_bytes(key, data)


def _adapter(tmp_path: Path, name: str, weights: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_text(weights)
    return folder


MANIFEST = {"config_hash": "h1", "doc_sha256": "s1", "qa_count": 3}


def test_a_draft_is_served_until_the_final_adapter_replaces_it_and_is_never_current(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    draft = publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a1", "draft"), MANIFEST, draft=True)
    assert is_draft(draft) and draft["adapter_uri"].endswith("ns/doc/draft")
    assert not adapter_is_current(draft, "s1", "h1")  # a rerun trains the document again
    cached = fetch_adapter(store, "ns", "doc", tmp_path / "cache")
    assert (cached / "adapter_model.safetensors").read_text() == "draft"

    store.events.clear()
    final = publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a2", "final"), MANIFEST)
    assert final["stage"] == "final" and final["adapter_uri"].endswith("ns/doc/adapter")
    assert adapter_is_current(final, "s1", "h1")
    # The draft's manifest was never deleted: the document stayed answerable while the final one uploaded.
    assert ("delete", manifest_key("ns", "doc")) not in store.events
    manifest_written = store.events.index(("write", manifest_key("ns", "doc")))
    draft_deleted = [i for i, (what, key) in enumerate(store.events) if what == "delete" and "/draft/" in key]
    assert draft_deleted and min(draft_deleted) > manifest_written  # its files go only after the switch
    assert not list((tmp_path / "store" / "ns" / "doc").glob("draft/*"))
    cached = fetch_adapter(store, "ns", "doc", tmp_path / "cache")
    assert (cached / "adapter_model.safetensors").read_text() == "final"

    # Republishing a final adapter still takes the old manifest away first (its files are overwritten).
    store.events.clear()
    publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a3", "again"), MANIFEST)
    assert store.events[0] == ("delete", manifest_key("ns", "doc"))


def _rows(count: int) -> list[dict[str, Any]]:
    pairs = [{"question": "Who built the bridge?", "answer": "Anna Varn"}]
    return [{"doc_id": "doc", "sentence_index": i, "qa_json": json.dumps(pairs)} for i in range(count)]


def test_the_trainer_hands_over_a_draft_after_the_set_epochs_only(tiny_model_dir: Path) -> None:
    drafts: list[tuple[int, list[str]]] = []

    def on_draft(job: DocumentJob, adapter_dir: Path, result: DocumentResult) -> dict[str, Any]:
        drafts.append((len(result.history.epoch_losses), sorted(p.name for p in adapter_dir.iterdir())))
        return {}

    def config(draft_after: int) -> LiftConfig:
        settings = {
            "train.epochs": 3,
            "train.batch_size": 2,
            "train.holdout_share": 0,
            "train.draft_after_epochs": draft_after,
        }
        return load_config(LiftConfig, None, [f"{k}={v}" for k, v in settings.items()])

    trainer = AdapterTrainer(tiny_model_dir, config(2))
    epochs: list[tuple[int, int]] = []
    result = trainer.train_document(
        DocumentJob("doc", rows=_rows(2)),
        on_draft=on_draft,
        on_epoch=lambda job, done, total: epochs.append((done, total)),
    )
    assert epochs == [(1, 3), (2, 3), (3, 3)]  # progress after each epoch
    assert [epochs for epochs, _ in drafts] == [2]  # once, after the second of three epochs
    assert "adapter_model.safetensors" in drafts[0][1]
    assert result.timings["draft_at"] <= result.timings.get("done_at", float("inf"))
    assert config(2).adapter_hash() == config(0).adapter_hash()  # the final adapter is the same either way

    drafts.clear()
    AdapterTrainer(tiny_model_dir, config(3)).train_document(DocumentJob("doc", rows=_rows(2)), on_draft=on_draft)
    assert drafts == []  # a draft after the last epoch would be the final adapter


def test_store_publisher_publishes_the_draft_where_serving_finds_it(tmp_path: Path) -> None:
    config = LiftConfig(storage={"root": str(tmp_path / "store"), "namespace": "ns"})
    result = DocumentResult("doc", qa_count=4)
    result.history.epoch_losses.append(1.5)
    StorePublisher(config).draft(DocumentJob("doc", sha256="s1"), _adapter(tmp_path, "a", "w"), result)
    manifest = read_manifest(Store.from_uri(config.storage.root), "ns", "doc")
    assert manifest is not None and is_draft(manifest) and manifest["draft_after_epochs"] == 1
    assert manifest["config_hash"] == config.adapter_hash()
    assert model_list("ns", [manifest])["data"][1]["lift"]["stage"] == "draft"


def test_the_index_reads_a_draft_again_and_keeps_a_final_manifest(tmp_path: Path) -> None:
    now = [0.0]
    store = Store.from_uri(tmp_path / "store")
    index = ManifestIndex(store, ttl_s=30.0, clock=lambda: now[0], draft_ttl_s=1.0)
    publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a1", "d"), MANIFEST, draft=True)
    assert is_draft(index.lookup("ns", "doc"))
    assert index.documents("ns")[0]["stage"] == "draft"
    publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a2", "f"), MANIFEST)
    now[0] = 2.0  # past draft_ttl_s, well within ttl_s
    assert index.lookup("ns", "doc")["stage"] == "final"
    now[0] = 40.0
    assert index.documents("ns")[0]["stage"] == "final"
    publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a3", "f2"), {**MANIFEST, "qa_count": 9})
    now[0] = 45.0
    assert index.lookup("ns", "doc")["qa_count"] == 3  # a final manifest is not read per request


def test_an_online_record_shows_the_draft_then_the_final_adapter(tmp_path: Path) -> None:
    store = Store.from_uri(tmp_path / "store")
    record = {
        "id": "doc",
        "namespace": "ns",
        "status": "running",
        "doc_sha256": "s1",
        "config_hash": "h1",
        "submitted_at": "2026-01-01T00:00:00.000+00:00",
        "started_at": "2026-01-01T00:00:00.000+00:00",
    }
    assert published_by_run(store, record) is None
    publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a1", "d"), MANIFEST, draft=True)
    with_draft = published_by_run(store, record)
    assert with_draft is not None and with_draft["status"] == "running" and with_draft["adapter_stage"] == "draft"
    assert with_draft["draft_s"] > 0 and with_draft["draft_at"]
    assert published_by_run(store, with_draft) is None  # nothing new to write
    publish_adapter(store, "ns", "doc", _adapter(tmp_path, "a2", "f"), MANIFEST)
    final = published_by_run(store, with_draft)
    assert final is not None and final["status"] == "published" and final["adapter_stage"] == "final"
    assert final["draft_s"] == with_draft["draft_s"]  # both times stay on the record


def test_online_runs_draft_after_one_epoch_unless_their_config_says_otherwise(tmp_path: Path) -> None:
    lift_yaml = tmp_path / "lift.yaml"
    lift_yaml.write_text("train:\n  epochs: 3\n")
    serve = ServeConfig(online_lift={"enabled": True, "config": str(lift_yaml)})
    assert lift_config_for(serve).train.draft_after_epochs == 1
    lift_yaml.write_text("train:\n  epochs: 3\n  draft_after_epochs: 0\n")
    assert lift_config_for(serve).train.draft_after_epochs == 0
    serve = ServeConfig(online_lift={"enabled": True, "config": str(lift_yaml), "draft_after_epochs": 2})
    assert lift_config_for(serve).train.draft_after_epochs == 0  # the LIFT config's own setting wins
