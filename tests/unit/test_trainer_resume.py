"""A restarted worker group does not train again what an earlier attempt of the run already published."""

from __future__ import annotations

from pathlib import Path

from lift_ray.config import LiftConfig
from lift_ray.layout import publish_adapter
from lift_ray.storage import Store
from lift_ray.train.loop import DocumentJob
from lift_ray.train.trainer import published_by_earlier_attempt


def publish(store: Store, config: LiftConfig, job: DocumentJob, tmp_path: Path, config_hash: str) -> None:
    adapter = tmp_path / f"adapter-{config_hash}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    manifest = {"config_hash": config_hash, "doc_sha256": job.sha256, "qa_count": 7, "quality": {"holdout_score": 1.0}}
    publish_adapter(store, config.storage.namespace, job.doc_id, adapter, manifest)


def test_an_adapter_published_by_an_earlier_attempt_is_taken_not_trained(tmp_path: Path) -> None:
    config = LiftConfig(storage={"root": str(tmp_path / "store"), "namespace": "ns"})
    store = Store.from_uri(config.storage.root)
    job = DocumentJob("harbour", sha256="abc")
    assert published_by_earlier_attempt(store, config, job) is None  # nothing published: train it

    publish(store, config, job, tmp_path, "another-config")
    assert published_by_earlier_attempt(store, config, job) is None  # published with another config: train it

    publish(store, config, job, tmp_path, config.adapter_hash())
    result = published_by_earlier_attempt(store, config, job)
    assert result is not None and result.status == "published" and result.qa_count == 7
    assert result.adapter["adapter_uri"].endswith("ns/harbour/adapter")
    assert result.quality == {"holdout_score": 1.0}
    other_text = DocumentJob("harbour", sha256="changed")
    assert published_by_earlier_attempt(store, config, other_text) is None  # the document changed: train it


def test_a_worker_of_a_large_run_lists_the_namespace_once_instead_of_a_read_per_document(tmp_path: Path) -> None:
    from lift_ray.layout import LISTING_MIN_DOCUMENTS
    from lift_ray.storage import LocalStore
    from lift_ray.train.trainer import published_ids

    class CountingStore(LocalStore):
        reads = 0

        def read_bytes(self, key: str) -> bytes:
            CountingStore.reads += 1
            return super().read_bytes(key)

    config = LiftConfig(storage={"root": str(tmp_path / "store"), "namespace": "ns"})
    store = CountingStore(config.storage.root)
    jobs = [DocumentJob(f"doc{i}", sha256=f"sha{i}") for i in range(LISTING_MIN_DOCUMENTS)]
    publish(store, config, jobs[3], tmp_path, config.adapter_hash())  # by an earlier attempt
    assert published_ids(store, config, len(jobs) - 1) is None  # a small run asks per document
    listed = published_ids(store, config, len(jobs))
    assert listed == {"doc3"}
    CountingStore.reads = 0
    results = [published_by_earlier_attempt(store, config, job, listed) for job in jobs]
    assert [r is not None for r in results] == [job.doc_id == "doc3" for job in jobs]
    assert CountingStore.reads == 1  # only the manifest that exists
