"""The store's layout: every key lift-ray reads or writes, and the rule for when an adapter is current.

```
<root>/<namespace>/<doc_id>/manifest.json        written last: a document is published iff this exists
<root>/<namespace>/<doc_id>/adapter/...          the PEFT folder (the final adapter)
<root>/<namespace>/<doc_id>/draft/...            a draft adapter (`train.draft_after_epochs`), until the final one
<root>/<namespace>/<doc_id>/document.txt         the document's text (the endpoint's with_context)
<root>/<qa_namespace>/<doc_id>/qa/<key>.jsonl    the document's QA cache, one row per sentence
<root>/<namespace>/<doc_id>/lift_status.json     online LIFT's status record
<root>/<namespace>/<doc_id>/lift_progress.json   sentences generated and epochs trained (storage.progress)
<root>/_sentence_qa/<namespace>/<key>.json       the sentence QA cache (generator.sentence_cache)
<root>/_reports/<run_id>/{report.jsonl,summary.json}   a `lift-ray lift` run's report
```

Folders that start with '_' cannot be namespaces (ids start with a letter or digit), so they never mix with
adapters. `lift_ray.storage` is the generic key -> bytes store these keys live in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lift_ray.documents import validate_doc_id
from lift_ray.storage import ObjectNotFound, Store, StoreError, read_json_lines, write_json_lines

if TYPE_CHECKING:
    from lift_ray.config import LiftConfig
    from lift_ray.documents import Document

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DOCUMENT_TEXT_NAME = "document.txt"
ADAPTER_FOLDER = "adapter"
DRAFT_FOLDER = "draft"
QA_CACHE_FOLDER = "qa"
STATUS_NAME = "lift_status.json"
PROGRESS_NAME = "lift_progress.json"
SENTENCE_CACHE_FOLDER = "_sentence_qa"
REPORTS_FOLDER = "_reports"
REPORT_NAME = "report.jsonl"
SUMMARY_NAME = "summary.json"
COMPLETE_MARKER = ".lift-ray-complete"
FETCH_ATTEMPTS = 3
# From this many documents on, a run lists the namespace once (`manifest_ids`) instead of asking for each
# document's manifest and QA cache; for fewer, asking costs less than listing a namespace of many adapters.
LISTING_MIN_DOCUMENTS = 32


# ---------------------------------------------------------------- keys


def document_prefix(namespace: str, doc_id: str) -> str:
    """The folder of one document's adapter and manifest: '<namespace>/<doc_id>'."""
    return f"{validate_doc_id(namespace, 'namespace')}/{validate_doc_id(doc_id)}"


def manifest_key(namespace: str, doc_id: str) -> str:
    """Store key of a document's manifest: '<namespace>/<doc_id>/manifest.json'."""
    return f"{document_prefix(namespace, doc_id)}/{MANIFEST_NAME}"


def adapter_prefix(namespace: str, doc_id: str) -> str:
    """Store folder of a document's PEFT adapter: '<namespace>/<doc_id>/adapter'."""
    return f"{document_prefix(namespace, doc_id)}/{ADAPTER_FOLDER}"


def draft_prefix(namespace: str, doc_id: str) -> str:
    """Store folder of a document's draft adapter: '<namespace>/<doc_id>/draft'."""
    return f"{document_prefix(namespace, doc_id)}/{DRAFT_FOLDER}"


def manifest_adapter_prefix(namespace: str, doc_id: str, manifest: dict[str, Any]) -> str:
    """The store folder a manifest's adapter files are in: the draft folder for a draft, else the adapter's."""
    return draft_prefix(namespace, doc_id) if is_draft(manifest) else adapter_prefix(namespace, doc_id)


def document_text_key(namespace: str, doc_id: str) -> str:
    """Store key of the text published with a document's adapter: '<namespace>/<doc_id>/document.txt'."""
    return f"{document_prefix(namespace, doc_id)}/{DOCUMENT_TEXT_NAME}"


def online_status_key(namespace: str, doc_id: str) -> str:
    """Store key of a document's online LIFT status record: '<namespace>/<doc_id>/lift_status.json'."""
    return f"{document_prefix(namespace, doc_id)}/{STATUS_NAME}"


def progress_key(namespace: str, doc_id: str) -> str:
    """Store key of a document's progress: '<namespace>/<doc_id>/lift_progress.json'."""
    return f"{document_prefix(namespace, doc_id)}/{PROGRESS_NAME}"


def write_progress(store: Store, namespace: str, doc_id: str, progress: dict[str, Any]) -> None:
    """Store a document's progress (`lift_ray.progress.ProgressWriter` decides when)."""
    store.write_json(progress_key(namespace, doc_id), progress)


def read_progress(store: Store, namespace: str, doc_id: str) -> dict[str, Any] | None:
    """A document's progress, or None when none was written."""
    try:
        progress = store.read_json(progress_key(namespace, doc_id))
    except ObjectNotFound:
        return None
    return progress if isinstance(progress, dict) else None


def qa_cache_key(document: Document, config: LiftConfig) -> str:
    """Cache key of a document's synthetic QA: its content and everything about the generator that matters."""
    parts = {
        "doc_sha256": document.sha256,
        **config.generator_fingerprint(),
        "sentences": config.sentences.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def qa_cache_path(namespace: str, document: Document, config: LiftConfig) -> str:
    """Store key of a document's QA cache (JSONL, one row per sentence): '<ns>/<doc_id>/qa/<key>.jsonl'."""
    return f"{document_prefix(namespace, document.doc_id)}/{QA_CACHE_FOLDER}/{qa_cache_key(document, config)}.jsonl"


def sentence_cache_prefix(namespace: str) -> str:
    """Store folder of a namespace's sentence QA cache: '_sentence_qa/<namespace>'."""
    return f"{SENTENCE_CACHE_FOLDER}/{validate_doc_id(namespace, 'namespace')}"


def sentence_cache_key(namespace: str, digest: str) -> str:
    """Store key of one sentence's cached QA: '_sentence_qa/<namespace>/<digest>.json'."""
    return f"{sentence_cache_prefix(namespace)}/{digest}.json"


def report_prefix(run_id: str) -> str:
    """Store folder of a run's report: '_reports/<run_id>'."""
    return f"{REPORTS_FOLDER}/{validate_doc_id(run_id, 'run id')}"


def report_key(run_id: str, name: str) -> str:
    """Store key of a file in a run's report folder: `_reports/<run_id>/<name>`."""
    return f"{report_prefix(run_id)}/{name}"


# ---------------------------------------------------------------- rules


def is_draft(manifest: dict[str, Any] | None) -> bool:
    """Whether a manifest is of a draft adapter (published after the first epochs; the final one replaces it)."""
    return bool(manifest) and manifest.get("stage") == "draft"


def is_of(manifest: dict[str, Any] | None, doc_sha256: str, config_hash: str) -> bool:
    """Whether a manifest (final or draft) is of this document text (sha256) trained with this config."""
    return bool(manifest) and (manifest.get("doc_sha256"), manifest.get("config_hash")) == (doc_sha256, config_hash)


def adapter_is_current(manifest: dict[str, Any] | None, doc_sha256: str, config_hash: str) -> bool:
    """Whether a published manifest is the final adapter of this document text (sha256) with this config.

    A current adapter is not trained again: a rerun skips it, and online LIFT treats it as this run's. A draft
    is never current: a run that stopped after its draft trains the document again.
    """
    return is_of(manifest, doc_sha256, config_hash) and not is_draft(manifest)


def published_at(manifest: dict[str, Any]) -> datetime | None:
    """When a manifest was published (its `published_at`), or None when it does not say or is unreadable."""
    try:
        return datetime.fromisoformat(manifest["published_at"]) if manifest.get("published_at") else None
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- adapters


def publish_adapter(
    store: Store,
    namespace: str,
    doc_id: str,
    adapter_dir: Path,
    manifest: dict,
    document_text: str | None = None,
    draft: bool = False,
) -> dict:
    """Upload an adapter folder (and the document's text, which the endpoint's `with_context` reads) and
    then, last, its manifest; returns the manifest as written.

    A draft goes to its own folder, so the final adapter's upload never touches the files a draft manifest
    points at: the document stays answerable (by its draft) until the final manifest replaces the draft's, and
    the draft's files are deleted after that.
    """
    adapter_folder = draft_prefix(namespace, doc_id) if draft else adapter_prefix(namespace, doc_id)
    adapter_dir = Path(adapter_dir)
    files = sorted(p for p in adapter_dir.rglob("*") if p.is_file()) if adapter_dir.is_dir() else []
    if not files:
        raise ValueError(f"adapter folder {adapter_dir} has no files to publish")
    current = read_manifest(store, namespace, doc_id)
    if current is not None and is_draft(current) == draft:
        # Manifest first, so that a republish that dies halfway leaves nothing a reader would trust.
        store.delete(manifest_key(namespace, doc_id))
    store.delete_prefix(adapter_folder)
    keys = store.upload_dir(adapter_dir, adapter_folder)
    text_fields = {}
    if document_text is not None:
        store.write_text(document_text_key(namespace, doc_id), document_text)
        text_fields = {"document_text": DOCUMENT_TEXT_NAME}
    written = {
        **manifest,
        **text_fields,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "namespace": namespace,
        "doc_id": doc_id,
        "stage": "draft" if draft else "final",
        "adapter_uri": store.child_uri(adapter_folder),
        "adapter_bytes": sum(p.stat().st_size for p in files),
        "adapter_files": [key[len(adapter_folder) + 1 :] for key in keys],
        "published_at": datetime.now(UTC).isoformat(timespec="microseconds"),
    }
    store.write_json(manifest_key(namespace, doc_id), written)
    if not draft:
        store.delete_prefix(draft_prefix(namespace, doc_id))
    return written


def read_manifest(store: Store, namespace: str, doc_id: str) -> dict | None:
    """The published manifest of a document, or None when it has none."""
    try:
        manifest = store.read_json(manifest_key(namespace, doc_id))
    except ObjectNotFound:
        return None
    if not isinstance(manifest, dict):
        raise StoreError(f"{store.child_uri(manifest_key(namespace, doc_id))} is not a JSON object")
    return manifest


def read_document_text(store: Store, namespace: str, doc_id: str) -> str | None:
    """The text published with a document's adapter, or None when it was published without it."""
    try:
        return store.read_text(document_text_key(namespace, doc_id))
    except ObjectNotFound:
        return None


def manifest_ids(keys: Iterable[str], namespace: str) -> set[str]:
    """The ids of the documents with a manifest among `keys` (a listing of `namespace`'s folder)."""
    return {
        parts[1]
        for parts in (key.split("/") for key in keys)
        if len(parts) == 3 and parts[0] == namespace and parts[2] == MANIFEST_NAME
    }


def list_manifests(store: Store, namespace: str) -> list[dict]:
    """The manifests of every published document in a namespace, sorted by document id."""
    validate_doc_id(namespace, "namespace")
    manifests = []
    for doc_id in sorted(manifest_ids(store.list_keys(namespace), namespace)):
        # A document unpublished between listing and reading is simply skipped.
        manifest = read_manifest(store, namespace, doc_id)
        if manifest is not None:
            manifests.append(manifest)
    return manifests


def read_manifests(store: Store, namespace: str, doc_ids: Iterable[str], threads: int = 16) -> dict[str, dict]:
    """doc id -> manifest for each of `doc_ids` that has one (read `threads` at a time; a missing one is left out).

    For many documents: list the namespace once (`manifest_ids`), then read only the manifests that exist.
    """
    from concurrent.futures import ThreadPoolExecutor

    wanted = sorted(set(doc_ids))
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(wanted)))) as pool:
        found = pool.map(lambda doc_id: read_manifest(store, namespace, doc_id), wanted)
        return {doc_id: manifest for doc_id, manifest in zip(wanted, found, strict=True) if manifest is not None}


def manifest_version(manifest: dict) -> str:
    """A short name for one published version of an adapter (changes whenever the manifest does)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fetch_adapter(store: Store, namespace: str, doc_id: str, cache_dir: Path) -> Path:
    """The published adapter as a local folder under `cache_dir`, downloaded only if not cached already."""
    manifest = read_manifest(store, namespace, doc_id)
    for _attempt in range(FETCH_ATTEMPTS):
        if manifest is None:
            raise ObjectNotFound(f"no adapter published at {store.child_uri(document_prefix(namespace, doc_id))}")
        target = Path(cache_dir) / namespace / doc_id / manifest_version(manifest)
        if (target / COMPLETE_MARKER).exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
        try:
            store.download_dir(manifest_adapter_prefix(namespace, doc_id, manifest), staging)
            # A republish during the download could have mixed two versions: only keep what matches the manifest.
            current = read_manifest(store, namespace, doc_id)
            if current != manifest:
                manifest = current
                continue
            missing = [name for name in manifest.get("adapter_files", []) if not (staging / name).is_file()]
            if missing:
                raise StoreError(
                    f"adapter at {manifest.get('adapter_uri')} is missing files listed in its manifest: {missing}"
                )
            (staging / COMPLETE_MARKER).write_text(manifest.get("published_at", ""))
            return _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise StoreError(
        f"adapter at {store.child_uri(document_prefix(namespace, doc_id))} kept changing while being downloaded"
    )


def _move_into_place(staging: Path, target: Path) -> Path:
    """Rename `staging` to `target`; if another process got there first with a complete copy, use theirs."""
    try:
        staging.rename(target)
    except OSError:
        # Only complete downloads are ever renamed into place, so an existing target is the winner's copy.
        if not (target / COMPLETE_MARKER).exists():
            raise StoreError(f"adapter cache folder {target} exists but is incomplete; delete it and retry") from None
    return target


# ---------------------------------------------------------------- QA cache


def read_qa_cache(store: Store, key: str, listed: set[str] | None = None) -> list[dict[str, Any]] | None:
    """The rows of a document's QA cache, or None when there is none.

    `listed`: the keys of a listing that covers `key`'s folder, made earlier; then a key not in it is not asked
    for (no request), and one in it is read (None if it went away since).
    """
    if listed is None:
        return read_json_lines(store, key) if store.exists(key) else None
    if key not in listed:
        return None
    try:
        return read_json_lines(store, key)
    except ObjectNotFound:
        return None


def write_qa_cache(store: Store, key: str, rows: list[dict[str, Any]]) -> None:
    """Store a document's QA cache: its generator rows (one per sentence) as JSON lines."""
    write_json_lines(store, key, rows)
