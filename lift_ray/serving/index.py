"""Which documents a namespace has, for `/v1/models` and for 404s, without listing the bucket per request.

`documents` lists a namespace's keys at most once every `ttl_s` seconds and reads only the manifests of
documents it has not seen yet (in parallel). `lookup` never waits for a listing: a document id it does not
know is read directly (one manifest GET), so an adapter published a moment ago is answerable at once, and a
miss is remembered for `miss_ttl_s`. A document deleted since it was seen still passes `lookup`; the replica
then finds no manifest and answers 404 itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lift_ray.documents import InvalidDocumentId, validate_doc_id
from lift_ray.layout import MANIFEST_NAME, is_draft, read_manifest
from lift_ray.storage import Store

_READERS = 16  # manifests read at once when a listing finds new documents


class ManifestIndex:
    """Manifests by namespace and document id: a cached listing refreshed on a TTL."""

    def __init__(
        self,
        store: Store,
        ttl_s: float = 30.0,
        miss_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        draft_ttl_s: float = 1.0,
    ) -> None:
        self.store, self.ttl_s, self.miss_ttl_s, self.clock = store, ttl_s, miss_ttl_s, clock
        self.draft_ttl_s = draft_ttl_s
        self._draft_read_at: dict[tuple[str, str], float] = {}
        self._documents: dict[str, dict[str, dict[str, Any]]] = {}
        self._listed_at: dict[str, float] = {}
        self._misses: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self.listings = 0  # how many times a namespace was listed (for tests and metrics)

    def _refresh(self, namespace: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            listed_at = self._listed_at.get(namespace)
            if listed_at is not None and self.clock() - listed_at < self.ttl_s:
                return self._documents[namespace]
            known = self._documents.get(namespace, {})
            doc_ids = {
                parts[1]
                for parts in (key.split("/") for key in self.store.list_keys(namespace))
                if len(parts) == 3 and parts[2] == MANIFEST_NAME
            }
            # New documents, and drafts seen before (their final adapter replaces them soon).
            new = sorted((doc_ids - set(known)) | {d for d in doc_ids & set(known) if is_draft(known[d])})
            with ThreadPoolExecutor(max_workers=_READERS) as pool:
                manifests = pool.map(lambda doc_id: read_manifest(self.store, namespace, doc_id), new)
                fresh = dict(zip(new, manifests, strict=True))
            documents = {doc_id: fresh.get(doc_id) or known.get(doc_id) for doc_id in sorted(doc_ids)}
            documents = {doc_id: manifest for doc_id, manifest in documents.items() if manifest is not None}
            self._documents[namespace] = documents
            self._listed_at[namespace] = self.clock()
            self.listings += 1
            return documents

    def documents(self, namespace: str) -> list[dict[str, Any]]:
        """The manifests of every published document in `namespace`, sorted by document id."""
        validate_doc_id(namespace, "namespace")
        documents = self._refresh(namespace)
        return [documents[doc_id] for doc_id in sorted(documents)]

    def lookup(self, namespace: str, doc_id: str) -> dict[str, Any] | None:
        """The manifest of `doc_id` in `namespace`, or None if it is not published (or not a valid id)."""
        try:
            validate_doc_id(namespace, "namespace")
            validate_doc_id(doc_id)
        except InvalidDocumentId:
            return None
        manifest = self._documents.get(namespace, {}).get(doc_id)
        if manifest is not None and not self._draft_due(namespace, doc_id, manifest):
            return manifest
        missed_at = self._misses.get((namespace, doc_id))
        if missed_at is not None and self.clock() - missed_at < self.miss_ttl_s:
            return None
        manifest = read_manifest(self.store, namespace, doc_id)
        with self._lock:
            if manifest is None:
                self._misses[(namespace, doc_id)] = self.clock()
            else:
                self._misses.pop((namespace, doc_id), None)
                self._documents.setdefault(namespace, {})[doc_id] = manifest
        return manifest

    def _draft_due(self, namespace: str, doc_id: str, manifest: dict[str, Any]) -> bool:
        """Whether a cached draft manifest is older than `draft_ttl_s` (then it is read again)."""
        if not is_draft(manifest):
            return False
        read_at = self._draft_read_at.get((namespace, doc_id))
        now = self.clock()
        if read_at is not None and now - read_at < self.draft_ttl_s:
            return False
        self._draft_read_at[(namespace, doc_id)] = now
        return True

    def forget_miss(self, namespace: str, doc_id: str) -> None:
        """Drop a remembered miss, so the next `lookup` reads the manifest (a document just published)."""
        with self._lock:
            self._misses.pop((namespace, doc_id), None)

    def remember(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Add (or replace) a document's manifest without waiting for the next listing (a fresh publish)."""
        doc_id = validate_doc_id(manifest["doc_id"])
        with self._lock:
            self._misses.pop((namespace, doc_id), None)
            self._documents.setdefault(namespace, {})[doc_id] = manifest
