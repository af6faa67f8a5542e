"""plan_lift decides what is already published, and which QA caches exist, from one listing of the namespace."""

from __future__ import annotations

from pathlib import Path

from lift_ray.config import LiftConfig, load_config
from lift_ray.documents import Document, sentence_rows
from lift_ray.layout import LISTING_MIN_DOCUMENTS, manifest_key, qa_cache_path, write_qa_cache
from lift_ray.pipeline import plan_lift
from lift_ray.storage import LocalStore


class CountingStore(LocalStore):
    """A real LocalStore that counts listings, existence checks and reads (by key)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings: list[str] = []
        self.exists_calls: list[str] = []
        self.reads: list[str] = []

    def _list_sizes(self, prefix: str) -> dict[str, int]:
        self.listings.append(prefix)
        return super()._list_sizes(prefix)

    def exists(self, key: str) -> bool:
        self.exists_calls.append(key)
        return super().exists(key)

    def read_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return super().read_bytes(key)

    def reset(self) -> None:
        self.listings, self.exists_calls, self.reads = [], [], []


def _corpus(store: CountingStore, config: LiftConfig, count: int) -> tuple[list[Document], set[str], set[str]]:
    """`count` documents; every 10th published with this config, every 7th (not published) with a QA cache."""
    documents = [
        Document.from_text(f"doc{i:03d}", f"Fact number {i} is that the bell rang {i} times.") for i in range(count)
    ]
    published, cached = set(), set()
    for i, document in enumerate(documents):
        if i % 10 == 0:
            store.write_json(
                manifest_key("ns", document.doc_id),
                {"doc_sha256": document.sha256, "config_hash": config.adapter_hash(), "adapter_uri": "x"},
            )
            published.add(document.doc_id)
        elif i % 7 == 0:
            rows = [{**row, "qa_json": "[]"} for row in sentence_rows(document, 1000, 400)]
            write_qa_cache(store, qa_cache_path("ns", document, config), rows)
            cached.add(document.doc_id)
    # a stale manifest (another text) is read and trained again
    store.write_json(manifest_key("ns", "doc001"), {"doc_sha256": "old", "config_hash": config.adapter_hash()})
    return documents, published, cached


def test_plan_lift_lists_once_and_reads_only_what_exists(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    config = load_config(LiftConfig, None, [f"storage.root={tmp_path / 'store'}", "storage.namespace=ns"])
    documents, published, cached = _corpus(store, config, 100)
    store.reset()

    plan = plan_lift(documents, config, store)

    assert store.listings == ["ns"]  # one listing for 100 documents
    assert store.exists_calls == []  # no per-document existence check
    manifests = {key for key in store.reads if key.endswith("/manifest.json")}
    assert manifests == {manifest_key("ns", d) for d in published | {"doc001"}}  # only those that exist
    assert len(store.reads) == len(manifests) + len(cached)  # plus the QA caches that exist, nothing else
    assert {d for d, r in plan.reports.items() if r.status == "skipped"} == published
    assert set(plan.known_rows) == cached
    assert [d.doc_id for d in plan.to_generate] == [d.doc_id for d in documents if d.doc_id not in published | cached]


def test_a_few_documents_are_asked_for_one_by_one(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    config = load_config(LiftConfig, None, [f"storage.root={tmp_path / 'store'}", "storage.namespace=ns"])
    documents, published, _ = _corpus(store, config, LISTING_MIN_DOCUMENTS - 1)
    store.reset()
    plan = plan_lift(documents, config, store)
    assert store.listings == []  # a namespace of many adapters is not listed for a handful of documents
    assert {d for d, r in plan.reports.items() if r.status == "skipped"} == published
