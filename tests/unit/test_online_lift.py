"""Online LIFT without Ray: request bodies, ids, reading uris, status records and their transitions."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from lift_ray import online
from lift_ray.config import ConfigError, OnlineLiftSettings, ServeConfig, StorageSettings, load_config
from lift_ray.documents import Document
from lift_ray.layout import list_manifests, publish_adapter, read_manifest
from lift_ray.online import DocumentRequest, RequestRejected
from lift_ray.pipeline import DocumentReport
from lift_ray.serving.index import ManifestIndex
from lift_ray.storage import Store

TEXT = "The Quell bridge opened in 1903. Its engineer was Mara Lind."


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.from_uri(tmp_path / "store")


def _publish(store: Store, namespace: str, doc_id: str, tmp_path: Path, **manifest: object) -> dict:
    adapter = tmp_path / f"adapter-{doc_id}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    return publish_adapter(store, namespace, doc_id, adapter, dict(manifest))


def _lift_config(store: Store, namespace: str = "ns"):
    from lift_ray.config import LiftConfig

    return load_config(LiftConfig, None, [f"storage.root={store.uri}", f"storage.namespace={namespace}"])


# ---------------------------------------------------------------- bodies and ids


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "exactly one of 'text'"),
        ({"text": TEXT, "uri": "s3://b/k.txt"}, "exactly one of 'text'"),
        ({"id": "../etc", "text": TEXT}, "is not allowed"),
        ({"id": "a/b", "text": TEXT}, "is not allowed"),
        ({"text": "  \n "}, "empty or whitespace"),
        ({"text": "a\x00b"}, "NUL"),
        ({"uri": "http://example.com/x.txt"}, "not supported"),
        ({"text": TEXT, "colour": "red"}, "Extra inputs"),
    ],
    ids=["no-source", "two-sources", "dotdot-id", "slash-id", "blank", "nul", "http-uri", "extra-field"],
)
def test_bad_bodies_are_refused_with_a_message(body, message):
    with pytest.raises(ValidationError) as caught:
        DocumentRequest.model_validate(body)
    assert message in str(caught.value)


def test_ids_come_from_the_body_the_file_name_or_the_text():
    assert online.derive_id(DocumentRequest(id="given", text=TEXT)) == "given"
    assert online.derive_id(DocumentRequest(uri="s3://bucket/docs/bridge-notes.txt")) == "bridge-notes"
    derived = online.derive_id(DocumentRequest(text=TEXT))
    assert derived == "doc-" + hashlib.sha256(TEXT.encode()).hexdigest()[:16]
    assert online.derive_id(DocumentRequest(text=TEXT)) == derived  # stable
    assert online.derive_id(DocumentRequest(text=TEXT + " More.")) != derived
    with pytest.raises(RequestRejected) as caught:
        online.derive_id(DocumentRequest(uri="s3://bucket/docs/_hidden.txt"))
    assert caught.value.status == 422 and "give an 'id'" in str(caught.value)


def test_text_over_the_limit_is_413(tmp_path):
    document = online.load_document(DocumentRequest(id="d", text=TEXT), max_bytes=len(TEXT), uri_prefixes=[])
    assert document.doc_id == "d" and document.sha256 == hashlib.sha256(TEXT.encode()).hexdigest()
    with pytest.raises(RequestRejected) as caught:
        online.load_document(DocumentRequest(text=TEXT), max_bytes=len(TEXT) - 1, uri_prefixes=[])
    assert caught.value.status == 413 and "max_document_bytes" in str(caught.value)


def test_local_uris_are_read_only_under_the_allowed_folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir(), outside.mkdir()
    (allowed / "bridge.txt").write_text(TEXT)
    (allowed / "big.txt").write_text(TEXT * 10)
    (allowed / "binary.txt").write_bytes(b"\x00\x01\x02")
    (outside / "secret.txt").write_text("secret")

    def load(uri: Path | str, prefixes: list[str]) -> Document:
        return online.load_document(DocumentRequest(uri=str(uri)), max_bytes=len(TEXT) * 2, uri_prefixes=prefixes)

    document = load(allowed / "bridge.txt", [str(allowed)])
    assert document.doc_id == "bridge" and document.text == TEXT
    for uri, prefixes, status in [
        (allowed / "bridge.txt", [], 403),  # no prefixes: uris are off
        (outside / "secret.txt", [str(allowed)], 403),
        (f"{allowed}/../outside/secret.txt", [str(allowed)], 403),
        (allowed / "missing.txt", [str(allowed)], 400),
        (allowed / "big.txt", [str(allowed)], 413),
        (allowed / "binary.txt", [str(allowed)], 422),
    ]:
        with pytest.raises(RequestRejected) as caught:
            load(uri, prefixes)
        assert caught.value.status == status, (uri, caught.value)


def test_s3_uris_are_read_from_the_bucket_under_an_allowed_prefix(s3_bucket):
    store = Store.from_uri(s3_bucket)
    store.write_text("inbox/bridge.txt", TEXT)
    store.write_text("private/other.txt", TEXT)

    def load(uri: str) -> Document:
        return online.load_document(DocumentRequest(uri=uri), max_bytes=1000, uri_prefixes=[f"{s3_bucket}/inbox/"])

    assert load(f"{s3_bucket}/inbox/bridge.txt").text == TEXT
    for uri, status in [
        (f"{s3_bucket}/private/other.txt", 403),
        (f"{s3_bucket}/inbox/../private/other.txt", 422),
        (f"{s3_bucket}/inbox/missing.txt", 400),
    ]:
        with pytest.raises(RequestRejected) as caught:
            load(uri)
        assert caught.value.status == status, (uri, caught.value)


# ---------------------------------------------------------------- config


def test_online_lift_is_off_by_default_and_its_config_must_fit_the_served_model(tmp_path):
    assert ServeConfig().online_lift.enabled is False
    serve = ServeConfig(storage=StorageSettings(root=str(tmp_path / "s"), namespace="ns"))

    def with_overrides(*overrides: str) -> ServeConfig:
        return serve.model_copy(update={"online_lift": OnlineLiftSettings(enabled=True, overrides=list(overrides))})

    lift = online.lift_config_for(with_overrides("train.epochs=1"))
    assert lift.storage.root == serve.storage.root and lift.train.epochs == 1
    assert online.for_namespace(lift, "tenant-b").storage.namespace == "tenant-b"
    with pytest.raises(ConfigError, match="serves 'embedded'"):
        online.lift_config_for(with_overrides("model.base_model=/models/other"))
    with pytest.raises(ConfigError, match="storage.root"):
        online.lift_config_for(with_overrides(f"storage.root={tmp_path / 'elsewhere'}"))
    assert online.lift_config_for(with_overrides(f"storage.root={tmp_path / 's'}")).storage.namespace == "ns"
    # A rank the endpoint's vLLM engine would refuse for every adapter stops the endpoint at start.
    vllm = serve.model_copy(update={"engine": "vllm", "max_lora_rank": 8})
    vllm_online = vllm.model_copy(update={"online_lift": OnlineLiftSettings(enabled=True, overrides=["lora.rank=16"])})
    with pytest.raises(ConfigError, match="lora.rank=16 .* max_lora_rank=8"):
        online.lift_config_for(vllm_online)
    fits = vllm.model_copy(update={"online_lift": OnlineLiftSettings(enabled=True, overrides=["lora.rank=8"])})
    assert online.lift_config_for(fits).lora.rank == 8
    hf_any_rank = serve.model_copy(update={"online_lift": OnlineLiftSettings(enabled=True, overrides=["lora.rank=64"])})
    assert online.lift_config_for(hf_any_rank).lora.rank == 64  # the hf engine has no rank limit
    # Queued records do not beat during the window, and read as stale after 180 s: windows stay short.
    with pytest.raises(ValidationError, match="batch_window_s"):
        OnlineLiftSettings(batch_window_s=600)


# ---------------------------------------------------------------- status records


def test_a_run_goes_queued_running_published_with_the_reports_timings(store):
    config = _lift_config(store)
    document = Document.from_text("bridge", TEXT)
    record = online.new_record(document, "ns", config.adapter_hash(), "text")
    online.write_status(store, record)
    assert online.read_status(store, "ns", "bridge")["status"] == "queued"
    seen: list[str] = []

    def lift(documents, lift_config):
        seen.append(online.read_status(store, "ns", documents[0].doc_id)["status"])
        assert lift_config.storage.namespace == "ns"
        timings = {"generate_s": 1.5, "train_s": 2.0}
        return [DocumentReport("bridge", "published", qa_count=3, adapter_uri="s3://x/a", timings=timings)]

    [final] = online.run_online_lift([record], [document], config, lift=lift)
    assert seen == ["running"]
    stored = online.read_status(store, "ns", "bridge")
    assert stored == final
    assert final["status"] == "published" and final["report_status"] == "published"
    assert final["timings"] == {"generate_s": 1.5, "train_s": 2.0} and final["qa_count"] == 3
    assert final["adapter_uri"] == "s3://x/a" and final["error"] is None
    assert final["submitted_at"] <= final["started_at"] <= final["finished_at"]


@pytest.mark.parametrize("outcome", ["report-failed", "raises"])
def test_a_failed_run_is_recorded_with_its_error(store, outcome):
    config = _lift_config(store)
    document = Document.from_text("bridge", TEXT)
    record = online.new_record(document, "ns", config.adapter_hash(), "text")

    def lift(documents, lift_config):
        if outcome == "raises":
            raise RuntimeError("the cluster caught fire")
        return [DocumentReport("bridge", "failed", error="no valid QA pairs from 2 sentences")]

    [final] = online.run_online_lift([record], [document], config, lift=lift)
    expected = "the cluster caught fire" if outcome == "raises" else "no valid QA pairs"
    assert final["status"] == "failed" and expected in final["error"]
    assert online.read_status(store, "ns", "bridge")["status"] == "failed"


def test_a_skipped_document_reports_published_with_the_manifests_counts(store, tmp_path):
    config = _lift_config(store)
    document = Document.from_text("bridge", TEXT)
    _publish(store, "ns", "bridge", tmp_path, qa_count=7, final_loss=0.25)
    record = online.new_record(document, "ns", config.adapter_hash(), "text")

    def lift(documents, lift_config):
        return [DocumentReport("bridge", "skipped", adapter_uri="somewhere")]

    [final] = online.run_online_lift([record], [document], config, lift=lift)
    assert final["status"] == "published" and final["report_status"] == "skipped"
    assert final["qa_count"] == 7 and final["final_loss"] == 0.25


def test_a_batch_is_lifted_in_one_call_and_each_document_gets_its_own_outcome(store):
    config = _lift_config(store)
    documents = [Document.from_text(doc_id, f"{TEXT} {doc_id}.") for doc_id in ("bridge", "mill", "ferry")]
    records = [online.new_record(d, "ns", config.adapter_hash(), "text", batch_id="b1") for d in documents]
    calls: list[list[str]] = []

    def lift(batch, lift_config):
        calls.append([document.doc_id for document in batch])
        assert {online.read_status(store, "ns", d.doc_id)["batch_size"] for d in batch} == {3}
        # Out of order, one failed, one missing: each record must still get its own document's outcome.
        return [
            DocumentReport("mill", "failed", error="no valid QA pairs"),
            DocumentReport("bridge", "published", qa_count=4, adapter_uri="s3://x/bridge"),
        ]

    finals = online.run_online_lift(records, documents, config, lift=lift)
    assert calls == [["bridge", "mill", "ferry"]]
    assert [final["id"] for final in finals] == ["bridge", "mill", "ferry"]
    assert [final["status"] for final in finals] == ["published", "failed", "failed"]
    assert finals[0]["qa_count"] == 4 and finals[0]["adapter_uri"] == "s3://x/bridge"
    assert "no valid QA pairs" in finals[1]["error"] and "no report" in finals[2]["error"]
    assert {final["batch_id"] for final in finals} == {"b1"}
    assert [online.read_status(store, "ns", d.doc_id) for d in documents] == finals
    with pytest.raises(ValueError, match="2 records for 3 documents"):
        online.run_online_lift(records[:2], documents, config, lift=lift)


def test_a_document_of_a_batch_reads_published_once_its_adapter_is(store, tmp_path):
    config = _lift_config(store)
    documents = [Document.from_text(doc_id, f"{TEXT} {doc_id}.") for doc_id in ("bridge", "mill")]
    records = [online.new_record(d, "ns", config.adapter_hash(), "text", batch_id="b2") for d in documents]
    # An older adapter of "mill" from another text: not this run's, so "mill" must stay running.
    _publish(store, "ns", "mill", tmp_path, doc_sha256="other-text", config_hash=config.adapter_hash())
    seen: dict[str, str] = {}

    def lift(batch, lift_config):
        time.sleep(0.05)
        identity = {"doc_sha256": documents[0].sha256, "config_hash": config.adapter_hash(), "qa_count": 5}
        _publish(store, "ns", "bridge", tmp_path, **identity)
        deadline = time.monotonic() + 5
        while online.read_status(store, "ns", "bridge")["status"] != "published" and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.update({d.doc_id: online.read_status(store, "ns", d.doc_id)["status"] for d in batch})
        time.sleep(0.05)
        return [DocumentReport("bridge", "published", qa_count=5), DocumentReport("mill", "published", qa_count=2)]

    bridge, mill = online.run_online_lift(records, documents, config, lift=lift, poll_s=0.01)
    assert seen == {"bridge": "published", "mill": "running"}
    assert bridge["status"] == mill["status"] == "published" and bridge["qa_count"] == 5
    assert bridge["finished_at"] < mill["finished_at"]  # servable from its own publish, not the batch's end


def test_a_running_task_beats_and_stops_beating_once_final(store):
    config = _lift_config(store)
    document = Document.from_text("bridge", TEXT)
    record = online.new_record(document, "ns", config.adapter_hash(), "text")
    beats: list[str] = []

    def lift(documents, lift_config):
        for _ in range(6):
            time.sleep(0.05)
            beats.append(online.read_status(store, "ns", "bridge")["heartbeat_at"])
        return [DocumentReport("bridge", "published", qa_count=1)]

    [final] = online.run_online_lift([record], [document], config, lift=lift, heartbeat_s=0.02, poll_s=0.01)
    assert len(set(beats)) >= 3, beats  # the heartbeat moved while the run went on
    time.sleep(0.1)
    assert online.read_status(store, "ns", "bridge") == final  # nothing overwrote the final record
    assert not [t for t in threading.enumerate() if t.name.startswith("lift-heartbeat-")]


def test_status_reads_the_record_the_manifest_or_nothing(store, tmp_path):
    assert online.document_status(store, "ns", "nothing") is None
    _publish(store, "ns", "bulk", tmp_path, qa_count=4)
    bulk = online.document_status(store, "ns", "bulk")
    assert bulk["status"] == "published" and bulk["qa_count"] == 4 and bulk["adapter_uri"]
    assert online.document_status(store, "other-ns", "bulk") is None  # namespaces do not see each other

    document = Document.from_text("fresh", TEXT)
    record = online.new_record(document, "ns", "hash", "text")
    online.write_status(store, record)
    assert online.document_status(store, "ns", "fresh")["status"] == "queued"
    later = online.document_status(store, "ns", "fresh", now=lambda: time.time() + online.STALE_AFTER_S + 1)
    assert later["status"] == "failed" and "stopped reporting" in later["error"]

    failed = online.final_record(record, None, "boom", now=lambda: time.time() - 60)
    online.write_status(store, failed)
    assert online.document_status(store, "ns", "fresh")["status"] == "failed"
    _publish(store, "ns", "fresh", tmp_path, qa_count=2)  # republished (by the bulk job) after the failure
    assert online.document_status(store, "ns", "fresh")["status"] == "published"


def test_admit_answers_with_the_run_in_flight_and_refuses_other_text():
    document = Document.from_text("bridge", TEXT)
    queued = online.new_record(document, "ns", "hash", "text")
    assert online.admit(None, document) is None
    assert online.admit(queued, document) is queued
    assert online.admit({**queued, "status": "running"}, document)["status"] == "running"
    with pytest.raises(RequestRejected) as caught:
        online.admit(queued, Document.from_text("bridge", TEXT + " Changed."))
    assert caught.value.status == 409 and "different text" in str(caught.value)
    assert online.admit({**queued, "status": "published"}, document) is None
    assert online.admit({**queued, "status": "failed"}, document) is None
    assert online.admit(queued, document, now=lambda: time.time() + online.STALE_AFTER_S + 1) is None


def test_a_dead_task_is_recorded_failed_unless_the_record_moved_on(store):
    document = Document.from_text("bridge", TEXT)
    record = online.new_record(document, "ns", "hash", "text")
    online.write_status(store, {**record, "status": "running"})
    failed = online.mark_crashed(store, record, "WorkerCrashedError: gone")
    assert failed["status"] == "failed" and "WorkerCrashedError" in failed["error"]
    assert online.read_status(store, "ns", "bridge")["status"] == "failed"
    published = {**record, "status": "published"}
    online.write_status(store, published)
    assert online.mark_crashed(store, record, "late") == published
    newer = online.new_record(document, "ns", "hash", "text")
    online.write_status(store, newer)
    assert online.mark_crashed(store, record, "old run") == newer


def test_listings_ignore_status_records_and_a_fresh_publish_is_not_hidden_by_a_miss(store, tmp_path):
    document = Document.from_text("bridge", TEXT)
    online.write_status(store, online.new_record(document, "ns", "hash", "text"))
    index = ManifestIndex(store, ttl_s=3600, miss_ttl_s=3600)
    assert index.documents("ns") == [] and list_manifests(store, "ns") == []
    assert index.lookup("ns", "bridge") is None  # remembered as a miss for an hour
    _publish(store, "ns", "bridge", tmp_path, qa_count=1)
    assert index.lookup("ns", "bridge") is None
    index.forget_miss("ns", "bridge")
    assert index.lookup("ns", "bridge")["doc_id"] == "bridge"
    _publish(store, "ns", "second", tmp_path, qa_count=1)
    listings = index.listings
    index.remember("ns", read_manifest(store, "ns", "second"))
    assert [m["doc_id"] for m in index.documents("ns")] == ["bridge", "second"] and index.listings == listings


# ---------------------------------------------------------------- batches


def _batch_runner(batcher_args: dict, scenario) -> list[tuple[str, list[str]]]:
    """Run `scenario(batcher, add)` on an event loop; each run's (namespace, doc ids), in the order they ran."""
    runs: list[tuple[str, list[str]]] = []
    release = {}

    async def run(batch):
        runs.append((batch.namespace, [d.doc_id for d in batch.documents]))
        gate = release.get(batch.documents[0].doc_id)
        if gate is not None:
            await gate.wait()

    async def beat(batch):
        release.setdefault("beats", []).append([d.doc_id for d in batch.documents])

    async def main():
        batcher = online.Batcher(run=run, beat=beat, **batcher_args)

        async def add(namespace, doc_id):
            async with batcher.lock:
                batch = batcher.open_batch(namespace, lambda: _lift_config_for_batches(namespace))
                document = Document.from_text(doc_id, f"{TEXT} {doc_id}.")
                record = online.new_record(document, namespace, "hash", "text", batch.batch_id)
                await asyncio.sleep(0)  # the ingress writes the queued record here
                return batcher.added(batch, record, document)

        await scenario(batcher, add, release)

    asyncio.run(main())
    return runs


def _lift_config_for_batches(namespace: str):
    from lift_ray.config import LiftConfig

    return load_config(LiftConfig, None, [f"storage.namespace={namespace}"])


def test_documents_posted_within_the_window_share_one_run_per_namespace():
    async def scenario(batcher, add, release):
        started = time.monotonic()
        first = await add("ns", "a")
        await add("ns", "b")
        await add("other", "c")  # another tenant: its own batch
        assert first is await add("ns", "d")  # the same batch task
        await first
        assert time.monotonic() - started >= 0.2  # it waited for the window
        await asyncio.sleep(0.3)
        await (await add("ns", "e"))  # after the run started: a new batch

    runs = _batch_runner({"window_s": 0.2, "max_documents": 8, "max_running": 2}, scenario)
    assert sorted(runs[:2]) == [("ns", ["a", "b", "d"]), ("other", ["c"])]
    assert runs[2:] == [("ns", ["e"])]


def test_a_full_batch_starts_without_waiting_and_the_next_document_opens_another():
    async def scenario(batcher, add, release):
        started = time.monotonic()
        first = await add("ns", "a")
        await add("ns", "b")
        second = await add("ns", "c")
        assert second is not first
        await first
        assert time.monotonic() - started < 5  # well before the 30 s window
        second.cancel()

    runs = _batch_runner({"window_s": 30, "max_documents": 2, "max_running": 1}, scenario)
    assert runs == [("ns", ["a", "b"])]


def test_a_batch_waiting_for_a_running_one_keeps_taking_documents():
    async def scenario(batcher, add, release):
        release["a"] = asyncio.Event()
        first = await add("ns", "a")
        await asyncio.sleep(0.1)  # a's window passed: a runs, and holds the only slot
        second = await add("ns", "b")
        await asyncio.sleep(0.2)  # b's window passed too, but a still runs
        assert await add("ns", "c") is second  # so b's batch still takes documents
        await asyncio.sleep(0.1)
        release["a"].set()
        await first
        await second
        beats = release.pop("beats")
        assert ["b"] in beats and ["b", "c"] in beats  # its queued records were kept alive while it waited
        assert not [b for b in beats if "a" in b]  # a never waited

    runs = _batch_runner({"window_s": 0.05, "max_documents": 8, "max_running": 1, "beat_s": 0.03}, scenario)
    assert runs == [("ns", ["a"]), ("ns", ["b", "c"])]
