"""Store behaviour over a local folder and a real (moto) S3 server, and the adapter publish/fetch layout."""

from __future__ import annotations

import json
import pickle
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lift_ray import storage
from lift_ray.documents import InvalidDocumentId
from lift_ray.layout import (
    COMPLETE_MARKER,
    MANIFEST_SCHEMA_VERSION,
    document_prefix,
    fetch_adapter,
    list_manifests,
    publish_adapter,
    read_manifest,
)
from lift_ray.storage import LocalStore, ObjectNotFound, S3Store, Store, StoreError, read_json_lines, write_json_lines


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same tests against a LocalStore and an S3Store under a prefix."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return Store.from_uri(f"{bucket}/some/prefix")


def _same_kind(store: Store, cls_mixin: type) -> Store:
    """A store of `store`'s kind at the same root, with `cls_mixin` mixed in."""
    cls = type(f"{cls_mixin.__name__}{type(store).__name__}", (cls_mixin, type(store)), {})
    return cls(store.uri)


def _make_adapter(folder: Path, weights: bytes = b"\x00\x01weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "extra").mkdir(exist_ok=True)
    (folder / "extra" / "notes.txt").write_text("nested")
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != COMPLETE_MARKER
    }


# --- choosing a store -------------------------------------------------------------------------------------------


def test_from_uri_picks_s3_for_s3_uris_and_local_otherwise(tmp_path: Path) -> None:
    s3 = Store.from_uri("s3://bucket/a/b/")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "a/b", "s3://bucket/a/b")
    assert Store.from_uri("s3://bucket").uri == "s3://bucket"
    assert isinstance(Store.from_uri(f"file://{tmp_path}"), LocalStore)
    assert Store.from_uri(f"file://{tmp_path}").uri == str(tmp_path)
    assert Store.from_uri(str(tmp_path)).uri == str(tmp_path)


def test_from_uri_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store.from_uri("gs://bucket/x")


def test_child_uri_names_the_full_location(tmp_path: Path) -> None:
    assert Store.from_uri("s3://b/p").child_uri("x/y.json") == "s3://b/p/x/y.json"
    assert Store.from_uri("s3://b").child_uri("x") == "s3://b/x"
    assert LocalStore(tmp_path).child_uri("x/y") == str(tmp_path / "x" / "y")


def test_local_store_root_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalStore("relative").uri == str(tmp_path / "relative")


# --- reading and writing ----------------------------------------------------------------------------------------


def test_bytes_text_and_json_round_trip(store: Store) -> None:
    store.write_bytes("a/blob.bin", b"\x00\xffdata")
    store.write_text("a/note.txt", "héllo ✓")
    store.write_json("a/data.json", {"b": 1, "a": [1, 2]})
    assert store.read_bytes("a/blob.bin") == b"\x00\xffdata"
    assert store.read_text("a/note.txt") == "héllo ✓"
    assert store.read_json("a/data.json") == {"b": 1, "a": [1, 2]}


def test_write_json_is_indented_with_sorted_keys(store: Store) -> None:
    store.write_json("d.json", {"b": 1, "a": 2})
    assert store.read_text("d.json") == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_write_replaces_existing_object(store: Store) -> None:
    store.write_text("k", "old")
    store.write_text("k", "new")
    assert store.read_text("k") == "new"
    assert store.list_keys() == ["k"]


def test_exists_only_for_written_keys(store: Store) -> None:
    assert not store.exists("x/y")
    store.write_bytes("x/y", b"1")
    assert store.exists("x/y")
    assert not store.exists("x")


def test_missing_key_raises_object_not_found_naming_the_uri(store: Store) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        store.read_bytes("nope/missing.txt")
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, StoreError)
    assert store.child_uri("nope/missing.txt") in str(caught.value)
    assert not str(caught.value).startswith("'")


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "a/./b", "a//b", ""])
def test_keys_that_could_escape_the_root_are_rejected(store: Store, key: str) -> None:
    with pytest.raises(ValueError):
        store.write_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.read_bytes(key)


def test_failed_local_write_keeps_previous_contents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_text("k.txt", "previous")
    with pytest.raises(TypeError):
        store.write_bytes("k.txt", "not bytes")  # type: ignore[arg-type]
    assert store.read_text("k.txt") == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.txt"]


def test_invalid_json_raises_store_error_naming_the_uri(store: Store) -> None:
    store.write_text("bad.json", "{not json")
    with pytest.raises(StoreError, match="bad.json.*not valid JSON"):
        store.read_json("bad.json")


def test_json_lines_round_trip(store: Store) -> None:
    rows = [{"q": "what?", "a": "that"}, {"q": "ünïcode", "n": 2}]
    write_json_lines(store, "qa/doc.jsonl", rows)
    assert read_json_lines(store, "qa/doc.jsonl") == rows
    write_json_lines(store, "qa/empty.jsonl", [])
    assert read_json_lines(store, "qa/empty.jsonl") == []


def test_json_lines_error_names_the_line(store: Store) -> None:
    store.write_text("bad.jsonl", '{"ok": 1}\n\n{oops\n')
    with pytest.raises(StoreError, match="line 3"):
        read_json_lines(store, "bad.jsonl")


# --- listing, sizes, deletion -----------------------------------------------------------------------------------


def test_list_keys_is_recursive_relative_and_sorted(store: Store) -> None:
    for key in ["b/2", "a/z/deep", "a/1", "top"]:
        store.write_bytes(key, b"x")
    assert store.list_keys() == ["a/1", "a/z/deep", "b/2", "top"]
    assert store.list_keys("a") == ["a/1", "a/z/deep"]
    assert store.list_keys("missing") == []


def test_list_keys_treats_prefix_as_a_folder(store: Store) -> None:
    for key in ["run/a", "run/sub/b", "run2/c", "runner"]:
        store.write_bytes(key, b"x")
    assert store.list_keys("run") == ["run/a", "run/sub/b"]
    assert store.list_keys("run/") == ["run/a", "run/sub/b"]


def test_store_root_is_a_folder_too(store: Store) -> None:
    sibling = Store.from_uri(store.uri + "2")
    sibling.write_text("other", "not mine")
    store.write_text("mine", "mine")
    assert store.list_keys() == ["mine"]
    assert sibling.list_keys() == ["other"]


def test_size_and_delete_prefix_cover_only_that_folder(store: Store) -> None:
    store.write_bytes("p/a", b"123")
    store.write_bytes("p/q/b", b"45")
    store.write_bytes("p2/c", b"6789")
    assert store.size_of_prefix("p") == 5
    assert store.size_of_prefix("") == 9
    assert store.delete_prefix("p") == 2
    assert store.list_keys() == ["p2/c"]
    assert store.delete_prefix("p") == 0


def test_delete_reports_whether_the_object_existed(store: Store) -> None:
    store.write_bytes("k", b"x")
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert not store.exists("k")


def test_s3_listing_and_deletion_work_across_pages_and_batches(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_S3_LIST_PAGE_SIZE", 3)
    monkeypatch.setattr(storage, "_S3_DELETE_BATCH", 3)
    store = Store.from_uri(f"{s3_bucket}/many")
    keys = [f"f/{i:02d}" for i in range(10)]
    for key in keys:
        store.write_bytes(key, b"x")
    assert store.list_keys("f") == keys
    assert store.delete_prefix("f") == 10
    assert store.list_keys() == []


# --- folders ----------------------------------------------------------------------------------------------------


def test_upload_dir_and_download_dir_round_trip_a_nested_folder(store: Store, tmp_path: Path) -> None:
    source = _make_adapter(tmp_path / "src")
    keys = store.upload_dir(source, "models/m1")
    assert keys == ["models/m1/adapter_config.json", "models/m1/adapter_model.safetensors", "models/m1/extra/notes.txt"]
    paths = store.download_dir("models/m1", tmp_path / "dst")
    assert sorted(paths) == sorted((tmp_path / "dst" / k.removeprefix("models/m1/")) for k in keys)
    assert _tree(tmp_path / "dst") == _tree(source)


def test_download_dir_with_empty_prefix_fetches_the_whole_root(store: Store, tmp_path: Path) -> None:
    source = _make_adapter(tmp_path / "model")
    store.upload_dir(source, "")
    store.download_dir("", tmp_path / "copy")
    assert _tree(tmp_path / "copy") == _tree(source)


def test_download_dir_of_an_empty_prefix_raises_object_not_found(store: Store, tmp_path: Path) -> None:
    store.write_bytes("elsewhere/x", b"x")
    with pytest.raises(ObjectNotFound, match="nothing stored under"):
        store.download_dir("nothing/here", tmp_path / "dst")


def test_upload_dir_of_a_missing_folder_raises_store_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a folder"):
        store.upload_dir(tmp_path / "missing", "x")


# --- S3 errors --------------------------------------------------------------------------------------------------


def test_missing_bucket_raises_a_readable_store_error(s3_server: str) -> None:
    missing = f"lift-missing-{uuid.uuid4().hex[:12]}"
    store = Store.from_uri(f"s3://{missing}/p")
    for action in (lambda: store.read_bytes("k"), lambda: store.write_bytes("k", b"x"), store.list_keys):
        with pytest.raises(StoreError) as caught:
            action()
        assert not isinstance(caught.value, ObjectNotFound)
        assert f"bucket {missing!r} does not exist" in str(caught.value)
        assert f"s3://{missing}/p" in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_unreachable_endpoint_raises_a_readable_store_error(s3_server: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )
    store = S3Store("s3://bucket/p", client=client)
    with pytest.raises(StoreError, match=f"cannot reach the S3 endpoint http://127.0.0.1:{port}"):
        store.read_bytes("k")


def test_s3_store_survives_pickling_for_ray_workers(s3_bucket: str) -> None:
    store = Store.from_uri(f"{s3_bucket}/p")
    store.write_text("k", "v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri
    assert clone.read_text("k") == "v"


# --- adapter publish / fetch ------------------------------------------------------------------------------------


class RecordingWrites:
    """Records every key written, in order (uploads included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: list[str] = []

    def write_bytes(self, key: str, data: bytes) -> None:
        self.written.append(key)
        super().write_bytes(key, data)

    def _upload_file(self, path: Path, key: str) -> None:
        self.written.append(key)
        super()._upload_file(path, key)


class FailingSecondUpload:
    """Fails on the second uploaded file, like a network drop midway through an adapter upload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uploads = 0

    def _upload_file(self, path: Path, key: str) -> None:
        self.uploads += 1
        if self.uploads == 2:
            raise StoreError(f"simulated failure writing {key}")
        super()._upload_file(path, key)


class CountingDownloads:
    """Counts download_dir calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.downloads = 0

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        self.downloads += 1
        return super().download_dir(prefix, local_dir)


def test_publish_adapter_writes_the_manifest_last(store: Store, tmp_path: Path) -> None:
    recording = _same_kind(store, RecordingWrites)
    publish_adapter(recording, "ns", "doc1", _make_adapter(tmp_path / "a"), {"base_model": "embedded"})
    assert recording.written[-1] == "ns/doc1/manifest.json"
    assert sorted(recording.written[:-1]) == [
        "ns/doc1/adapter/adapter_config.json",
        "ns/doc1/adapter/adapter_model.safetensors",
        "ns/doc1/adapter/extra/notes.txt",
    ]


def test_publish_adapter_adds_layout_fields_to_the_manifest(store: Store, tmp_path: Path) -> None:
    adapter = _make_adapter(tmp_path / "a")
    written = publish_adapter(store, "ns", "doc1", adapter, {"base_model": "embedded", "doc_sha256": "abc"})
    assert written == read_manifest(store, "ns", "doc1")
    assert written["schema_version"] == MANIFEST_SCHEMA_VERSION
    assert (written["namespace"], written["doc_id"], written["base_model"]) == ("ns", "doc1", "embedded")
    assert written["adapter_uri"] == store.child_uri("ns/doc1/adapter")
    assert (
        written["adapter_bytes"]
        == sum(len(v) for v in _tree(adapter).values())
        == store.size_of_prefix("ns/doc1/adapter")
    )
    assert written["published_at"].endswith("+00:00")


def test_failed_republish_leaves_no_manifest(store: Store, tmp_path: Path) -> None:
    publish_adapter(store, "ns", "doc1", _make_adapter(tmp_path / "v1"), {"v": 1})
    failing = _same_kind(store, FailingSecondUpload)
    with pytest.raises(StoreError, match="simulated failure"):
        publish_adapter(failing, "ns", "doc1", _make_adapter(tmp_path / "v2", b"v2"), {"v": 2})
    assert read_manifest(store, "ns", "doc1") is None
    with pytest.raises(ObjectNotFound):
        fetch_adapter(store, "ns", "doc1", tmp_path / "cache")


def test_republish_removes_files_the_new_adapter_does_not_have(store: Store, tmp_path: Path) -> None:
    publish_adapter(store, "ns", "doc1", _make_adapter(tmp_path / "v1"), {})
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "adapter_model.safetensors").write_bytes(b"only")
    publish_adapter(store, "ns", "doc1", v2, {})
    assert store.list_keys("ns/doc1/adapter") == ["ns/doc1/adapter/adapter_model.safetensors"]


def test_publish_adapter_refuses_an_empty_folder(store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        publish_adapter(store, "ns", "doc1", tmp_path / "empty", {})
    assert store.list_keys() == []


def test_read_manifest_is_none_when_absent(store: Store) -> None:
    assert read_manifest(store, "ns", "never-published") is None


@pytest.mark.parametrize("namespace, doc_id", [("../ns", "doc"), ("ns", "a/b"), ("ns", ".."), ("", "doc")])
def test_unsafe_namespace_or_doc_id_is_rejected(store: Store, tmp_path: Path, namespace: str, doc_id: str) -> None:
    with pytest.raises(InvalidDocumentId):
        document_prefix(namespace, doc_id)
    with pytest.raises(InvalidDocumentId):
        publish_adapter(store, namespace, doc_id, _make_adapter(tmp_path / "a"), {})


def test_list_manifests_ignores_folders_without_a_manifest(store: Store, tmp_path: Path) -> None:
    adapter = _make_adapter(tmp_path / "a")
    publish_adapter(store, "ns", "doc-b", adapter, {})
    publish_adapter(store, "ns", "doc-a", adapter, {})
    publish_adapter(store, "other", "doc-c", adapter, {})
    store.upload_dir(adapter, "ns/half-uploaded/adapter")
    store.write_json("ns/stray.json", {"not": "a document"})
    assert [m["doc_id"] for m in list_manifests(store, "ns")] == ["doc-a", "doc-b"]
    assert list_manifests(store, "empty-namespace") == []


def test_fetch_adapter_downloads_once_and_then_uses_the_cache(store: Store, tmp_path: Path) -> None:
    adapter = _make_adapter(tmp_path / "a")
    publish_adapter(store, "ns", "doc1", adapter, {})
    counting = _same_kind(store, CountingDownloads)
    first = fetch_adapter(counting, "ns", "doc1", tmp_path / "cache")
    second = fetch_adapter(counting, "ns", "doc1", tmp_path / "cache")
    assert counting.downloads == 1
    assert first == second
    assert first.parent == tmp_path / "cache" / "ns" / "doc1"
    assert _tree(first) == _tree(adapter)
    assert (first / COMPLETE_MARKER).exists()
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging folders left behind


def test_fetch_adapter_downloads_again_after_a_republish(store: Store, tmp_path: Path) -> None:
    publish_adapter(store, "ns", "doc1", _make_adapter(tmp_path / "v1", b"one"), {})
    first = fetch_adapter(store, "ns", "doc1", tmp_path / "cache")
    publish_adapter(store, "ns", "doc1", _make_adapter(tmp_path / "v2", b"two"), {})
    second = fetch_adapter(store, "ns", "doc1", tmp_path / "cache")
    assert first != second
    assert (second / "adapter_model.safetensors").read_bytes() == b"two"


def test_fetch_adapter_without_a_manifest_raises_object_not_found(store: Store, tmp_path: Path) -> None:
    store.upload_dir(_make_adapter(tmp_path / "a"), "ns/doc1/adapter")
    with pytest.raises(ObjectNotFound, match="no adapter published at .*ns/doc1"):
        fetch_adapter(store, "ns", "doc1", tmp_path / "cache")


def test_fetch_adapter_retries_when_the_adapter_is_republished_during_download(tmp_path: Path) -> None:
    class RepublishDuringFirstDownload(LocalStore):
        republished = False

        def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
            paths = super().download_dir(prefix, local_dir)
            if not self.republished:
                self.republished = True
                publish_adapter(self, "ns", "doc1", _make_adapter(tmp_path / "v2", b"two"), {})
            return paths

    store = RepublishDuringFirstDownload(tmp_path / "store")
    publish_adapter(store, "ns", "doc1", _make_adapter(tmp_path / "v1", b"one"), {})
    fetched = fetch_adapter(store, "ns", "doc1", tmp_path / "cache")
    assert (fetched / "adapter_model.safetensors").read_bytes() == b"two"
    assert fetched.name == fetch_adapter(store, "ns", "doc1", tmp_path / "cache").name


def test_concurrent_fetches_of_the_same_adapter_all_get_one_complete_copy(store: Store, tmp_path: Path) -> None:
    adapter = _make_adapter(tmp_path / "a")
    publish_adapter(store, "ns", "doc1", adapter, {})
    barrier = threading.Barrier(6)
    results: list[Path] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            barrier.wait()
            results.append(fetch_adapter(Store.from_uri(store.uri), "ns", "doc1", tmp_path / "cache"))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert _tree(results[0]) == _tree(adapter)
    assert len(list((tmp_path / "cache" / "ns" / "doc1").iterdir())) == 1
