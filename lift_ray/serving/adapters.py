"""The disk tier of the adapter cache: adapters downloaded from the store once, checked, kept LRU by size.

Memory (adapters attached to the engine) sits above this tier and the store (S3 or a folder) below it.
Concurrent requests for the same cold adapter share one download (`SingleFlight`); different adapters
download in parallel.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from lift_ray.documents import InvalidDocumentId, validate_doc_id
from lift_ray.layout import COMPLETE_MARKER, fetch_adapter, manifest_version, read_manifest
from lift_ray.storage import ObjectNotFound, Store, StoreError

log = logging.getLogger(__name__)
Result = TypeVar("Result")
_LAST_USED = ".last-used"


class UnknownDocument(LookupError):
    """No published adapter for this document id in this namespace (or the id is not valid)."""


class AdapterUnusable(RuntimeError):
    """The document's adapter is published but cannot be used (corrupt or too large); says what to do."""


@dataclass
class _Call(Generic[Result]):
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class SingleFlight(Generic[Result]):
    """Concurrent `run(key, fn)` calls with the same key share one call of `fn`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call] = {}

    def run(self, key: Any, function: Callable[[], Result]) -> tuple[Result, bool]:
        """`function()`'s result, and whether this caller ran it (False: it waited for another caller's run)."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result, False
        try:
            call.result = function()
            return call.result, True
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


@dataclass(frozen=True)
class FetchedAdapter:
    """A checked adapter folder on local disk and where it came from."""

    path: Path
    manifest: dict[str, Any]
    source: Literal["disk", "store"]
    seconds: float


def check_adapter(path: Path, max_rank: int | None = None) -> int:
    """The rank of the PEFT adapter in `path`; AdapterUnusable with the reason if it cannot be loaded."""
    from safetensors import safe_open

    try:
        config = json.loads((path / "adapter_config.json").read_text())
        rank = int(config["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterUnusable(f"adapter_config.json is missing or invalid ({type(exc).__name__}: {exc})") from None
    if max_rank is not None and rank > max_rank:
        raise AdapterUnusable(f"its rank {rank} is above this endpoint's max_lora_rank {max_rank}")
    weights = path / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as tensors:
            names = list(tensors.keys())
            if not names:
                raise AdapterUnusable("adapter_model.safetensors holds no tensors")
            for name in names:
                tensors.get_slice(name).get_shape()  # a truncated file fails at open already
    except AdapterUnusable:
        raise
    except Exception as exc:
        raise AdapterUnusable(f"adapter_model.safetensors cannot be read ({type(exc).__name__}: {exc})") from None
    return rank


class AdapterFetcher:
    """Adapters of published documents as checked local folders, downloaded once and evicted LRU by size."""

    def __init__(self, store: Store, cache_dir: Path, max_bytes: int, max_rank: int | None = None) -> None:
        self.store, self.cache_dir, self.max_bytes, self.max_rank = store, Path(cache_dir), max_bytes, max_rank
        self._flight: SingleFlight[FetchedAdapter] = SingleFlight()
        self._unusable: dict[Path, str] = {}  # version folder -> reason, so a bad adapter is not re-downloaded
        self._evict_lock = threading.Lock()
        self._stamp_lock, self._last_stamp_ns = threading.Lock(), 0

    def fetch(self, namespace: str, doc_id: str) -> FetchedAdapter:
        """The adapter of `doc_id`: from local disk when the cached copy matches the manifest, else the store."""
        try:
            validate_doc_id(namespace, "namespace")
            validate_doc_id(doc_id)
        except InvalidDocumentId as exc:
            raise UnknownDocument(str(exc)) from None
        fetched, _ = self._flight.run((namespace, doc_id), lambda: self._fetch(namespace, doc_id))
        return fetched

    def _fetch(self, namespace: str, doc_id: str) -> FetchedAdapter:
        started = time.perf_counter()
        manifest = read_manifest(self.store, namespace, doc_id)
        if manifest is None:
            raise UnknownDocument(f"no LIFTed document {doc_id!r}")
        target = self.cache_dir / namespace / doc_id / manifest_version(manifest)
        if target in self._unusable:
            raise AdapterUnusable(self._unusable[target])
        source: Literal["disk", "store"] = "disk" if (target / COMPLETE_MARKER).exists() else "store"
        try:
            path = fetch_adapter(self.store, namespace, doc_id, self.cache_dir)
        except ObjectNotFound as exc:
            raise AdapterUnusable(
                f"the adapter files of document {doc_id!r} are missing ({exc}); republish it"
            ) from None
        except StoreError as exc:
            raise AdapterUnusable(f"the adapter of document {doc_id!r} cannot be downloaded: {exc}") from None
        try:
            check_adapter(path, self.max_rank)
        except AdapterUnusable as exc:
            reason = f"the adapter of document {doc_id!r} cannot be used: {exc}; republish it"
            self._unusable[path] = reason
            shutil.rmtree(path, ignore_errors=True)
            raise AdapterUnusable(reason) from None
        self._mark_used(path)
        if source == "store":
            self.evict(keep=path)
        return FetchedAdapter(path, manifest, source, time.perf_counter() - started)

    def _mark_used(self, folder: Path) -> None:
        # An explicit, strictly increasing nanosecond stamp: `touch()` takes the kernel's coarse clock
        # (a few ms per tick), so two uses within one tick would tie and evict the wrong adapter.
        with self._stamp_lock:
            self._last_stamp_ns = max(time.time_ns(), self._last_stamp_ns + 1)
            stamp = self._last_stamp_ns
        (folder / _LAST_USED).touch()
        os.utime(folder / _LAST_USED, ns=(stamp, stamp))

    def cached_folders(self) -> list[tuple[int, int, Path]]:
        """(last used in ns, bytes, folder) of every complete adapter on disk, least recently used first."""
        folders = []
        for marker in self.cache_dir.glob(f"*/*/*/{COMPLETE_MARKER}"):
            folder = marker.parent
            try:
                used = (
                    (folder / _LAST_USED).stat().st_mtime_ns
                    if (folder / _LAST_USED).exists()
                    else marker.stat().st_mtime_ns
                )
                size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            except FileNotFoundError:
                continue  # evicted meanwhile by another replica on this node
            folders.append((used, size, folder))
        return sorted(folders)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used adapters until the disk tier fits `max_bytes`; the folders deleted."""
        with self._evict_lock:
            folders = self.cached_folders()
            total = sum(size for _, size, _ in folders)
            evicted = []
            for _, size, folder in folders:
                if total <= self.max_bytes:
                    break
                if folder == keep:
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                total -= size
                evicted.append(folder)
            if evicted:
                log.info("disk cache: evicted %d adapter(s), %d bytes kept", len(evicted), total)
            return evicted
