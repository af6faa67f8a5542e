"""Serving without Ray: single-flight downloads, the disk tier's LRU, adapter checks, the manifest index, tenants."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lift_ray.config import TenantSettings
from lift_ray.layout import publish_adapter
from lift_ray.serving import AdapterFetcher, AdapterUnusable, ManifestIndex, SingleFlight, Tenants, Unauthorized
from lift_ray.serving.adapters import UnknownDocument, check_adapter
from lift_ray.serving.tenants import parse_key_list
from lift_ray.storage import S3Store, Store
from testkit.bench_adapters import write_random_adapter

NAMESPACE = "tenant"
# A tiny config.json of the embedded model's family, so adapters are made without the model itself.
TINY_LLAMA = (
    '{"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,'
    ' "num_hidden_layers": 2}'
)


class CountingS3Store(S3Store):
    """The real S3 store, counting object downloads."""

    downloads = 0

    def _download_file(self, key: str, path: Path) -> None:
        type(self).downloads += 1
        time.sleep(0.05)  # widen the window in which concurrent callers overlap
        super()._download_file(key, path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text(TINY_LLAMA)
    return folder


def publish_random(store: Store, model_dir: Path, tmp: Path, doc_id: str, rank: int = 4, **manifest: Any) -> Path:
    adapter = write_random_adapter(model_dir, tmp / "made" / doc_id, rank=rank, seed=hash(doc_id) % 1000)
    publish_adapter(store, NAMESPACE, doc_id, adapter, {"system_prompt": "s", **manifest})
    return adapter


# ---------------------------------------------------------------- single flight


def test_single_flight_runs_a_key_once_for_concurrent_callers_and_shares_errors():
    flight: SingleFlight[int] = SingleFlight()
    calls, started = [], threading.Event()

    def slow() -> int:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return 42

    results: list[tuple[int, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(flight.run("k", slow))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(results) == [(42, False)] * 5 + [(42, True)]

    def broken() -> int:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        flight.run("k", broken)
    assert flight.run("k", lambda: 7) == (7, True)  # a failed call is not remembered


# ---------------------------------------------------------------- the disk tier


def test_concurrent_cold_fetches_of_one_adapter_download_it_once(s3_bucket: str, model_dir: Path, tmp_path: Path):
    store = CountingS3Store(f"{s3_bucket}/lift")
    publish_random(store, model_dir, tmp_path, "doc")
    fetcher = AdapterFetcher(store, tmp_path / "cache", max_bytes=10**9)
    CountingS3Store.downloads = 0
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetcher.fetch(NAMESPACE, "doc"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({r.path for r in results}) == 1
    assert CountingS3Store.downloads == 2  # adapter_config.json + adapter_model.safetensors, once
    again = fetcher.fetch(NAMESPACE, "doc")
    assert again.source == "disk" and CountingS3Store.downloads == 2


def test_disk_tier_evicts_least_recently_used_adapters_beyond_its_size(s3_bucket: str, model_dir: Path, tmp_path: Path):
    store = Store.from_uri(f"{s3_bucket}/lift")
    for doc in ("a", "b", "c"):
        publish_random(store, model_dir, tmp_path, doc)
    one = AdapterFetcher(store, tmp_path / "probe", 10**9).fetch(NAMESPACE, "a")
    size = sum(p.stat().st_size for p in one.path.iterdir() if p.is_file())
    fetcher = AdapterFetcher(store, tmp_path / "cache", max_bytes=int(2.5 * size))
    first = fetcher.fetch(NAMESPACE, "a")
    fetcher.fetch(NAMESPACE, "b")
    assert fetcher.fetch(NAMESPACE, "a").source == "disk"  # 'a' is now the most recently used, within the same ms
    fetcher.fetch(NAMESPACE, "c")  # over the limit: 'b' goes
    on_disk = {folder.parent.name for _, _, folder in fetcher.cached_folders()}
    assert on_disk == {"a", "c"}
    assert first.path.exists()
    assert fetcher.fetch(NAMESPACE, "b").source == "store"


def test_republished_adapter_is_downloaded_again(s3_bucket: str, model_dir: Path, tmp_path: Path):
    store = Store.from_uri(f"{s3_bucket}/lift")
    publish_random(store, model_dir, tmp_path, "doc", version=1)
    fetcher = AdapterFetcher(store, tmp_path / "cache", max_bytes=10**9)
    old = fetcher.fetch(NAMESPACE, "doc")
    publish_random(store, model_dir, tmp_path, "doc", version=2)
    new = fetcher.fetch(NAMESPACE, "doc")
    assert new.source == "store" and new.path != old.path and new.manifest["version"] == 2


def test_unknown_and_invalid_document_ids_are_unknown_documents(s3_bucket: str, tmp_path: Path):
    fetcher = AdapterFetcher(Store.from_uri(f"{s3_bucket}/lift"), tmp_path / "cache", max_bytes=10**9)
    with pytest.raises(UnknownDocument, match="'nope'"):
        fetcher.fetch(NAMESPACE, "nope")
    with pytest.raises(UnknownDocument):
        fetcher.fetch(NAMESPACE, "../etc")


def test_corrupt_adapter_is_refused_with_the_document_named_and_not_downloaded_again(
    s3_bucket: str, model_dir: Path, tmp_path: Path
):
    store = CountingS3Store(f"{s3_bucket}/lift")
    adapter = write_random_adapter(model_dir, tmp_path / "made", rank=4)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated upload
    publish_adapter(store, NAMESPACE, "broken", adapter, {})
    fetcher = AdapterFetcher(store, tmp_path / "cache", max_bytes=10**9)
    with pytest.raises(AdapterUnusable, match=r"'broken'.*cannot be read.*republish"):
        fetcher.fetch(NAMESPACE, "broken")
    downloads = CountingS3Store.downloads
    with pytest.raises(AdapterUnusable, match="'broken'"):
        fetcher.fetch(NAMESPACE, "broken")
    assert CountingS3Store.downloads == downloads


def test_check_adapter_reads_the_rank_and_refuses_bad_configs_and_ranks(model_dir: Path, tmp_path: Path):
    adapter = write_random_adapter(model_dir, tmp_path / "a", rank=8)
    assert check_adapter(adapter) == 8
    with pytest.raises(AdapterUnusable, match="rank 8 is above.*max_lora_rank 4"):
        check_adapter(adapter, max_rank=4)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterUnusable, match="adapter_config.json"):
        check_adapter(adapter)
    other = write_random_adapter(model_dir, tmp_path / "b", rank=8)
    (other / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(AdapterUnusable, match="cannot be read"):
        check_adapter(other)


# ---------------------------------------------------------------- the manifest index


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_index_lists_a_namespace_once_per_ttl_and_finds_new_documents_at_once(
    s3_bucket: str, model_dir: Path, tmp_path: Path
):
    store = Store.from_uri(f"{s3_bucket}/lift")
    publish_random(store, model_dir, tmp_path, "a")
    clock = Clock()
    index = ManifestIndex(store, ttl_s=30, miss_ttl_s=2, clock=clock)
    assert [m["doc_id"] for m in index.documents(NAMESPACE)] == ["a"]
    for _ in range(5):
        index.documents(NAMESPACE)
        assert index.lookup(NAMESPACE, "a") is not None
    assert index.listings == 1
    assert index.lookup(NAMESPACE, "b") is None
    publish_random(store, model_dir, tmp_path, "b")
    assert index.lookup(NAMESPACE, "b") is None  # the miss is remembered for miss_ttl_s
    clock.now = 3
    assert index.lookup(NAMESPACE, "b")["doc_id"] == "b"  # found without waiting for the next listing
    assert [m["doc_id"] for m in index.documents(NAMESPACE)] == ["a", "b"] and index.listings == 1
    store.delete_prefix(f"{NAMESPACE}/a")
    clock.now = 31
    assert [m["doc_id"] for m in index.documents(NAMESPACE)] == ["b"] and index.listings == 2
    assert index.lookup(NAMESPACE, "../x") is None and index.documents("other") == []


# ---------------------------------------------------------------- tenants


def test_keys_map_to_namespaces_from_config_and_environment():
    settings = TenantSettings(api_keys={"alpha": ["key-a"]}, api_keys_env="KEYS")
    tenants = Tenants.from_settings(settings, "default", {"KEYS": "beta=key-b, alpha=key-a2"})
    assert not tenants.open and tenants.namespaces() == ["alpha", "beta"]
    assert tenants.namespace_for("Bearer key-a") == "alpha"
    assert tenants.namespace_for("bearer key-a2") == "alpha"
    assert tenants.namespace_for("Bearer key-b") == "beta"
    for header in (None, "", "Bearer ", "Basic key-a", "Bearer key-c"):
        with pytest.raises(Unauthorized):
            tenants.namespace_for(header)


def test_without_keys_every_request_uses_the_default_namespace():
    tenants = Tenants.from_settings(TenantSettings(), "default", {})
    assert tenants.open and tenants.namespace_for(None) == "default" == tenants.namespace_for("Bearer x")


def test_keys_never_appear_in_errors_or_config_dumps():
    with pytest.raises(ValueError) as raised:
        parse_key_list("alpha=ok,secret-key-without-namespace")
    assert "secret-key" not in str(raised.value) and "entry 2" in str(raised.value)
    settings = TenantSettings(api_keys={"alpha": ["very-secret"]})
    assert "very-secret" not in settings.model_dump_json() and "very-secret" not in repr(settings)
    with pytest.raises(ValueError, match="namespace"):
        TenantSettings(api_keys={"../x": ["k"]})
