"""Reading a corpus: local files and folders, s3:// prefixes and manifest.jsonl files, one bad item at a time.

`read_corpus(inputs)` is a plain function (no Ray): every input is resolved first (folders and S3 prefixes
listed, manifests found), so an unusable input root raises `CorpusError` before anything is read; then
documents are read 16 at a time on threads (`READ_THREADS`: an S3 GET waits on the network), their results
taken in input order. A bad item (empty, binary, not UTF-8, unsafe or duplicate id, an S3 read error, a bad
manifest line) becomes a `ReadFailure` with its reason and never stops the others.

Manifest lines are `{"id": ..., "uri": ...}` (a local path, relative to the manifest's folder, or s3://)
or `{"id": ..., "text": ...}`. Manifests are streamed line by line; each document is held once as bytes
while it is decoded (at most `READ_THREADS` x `READ_WINDOW` documents are read ahead) and then only as its
text.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from lift_ray.documents import (
    DOCUMENT_SUFFIXES,
    Document,
    DocumentError,
    doc_id_from_filename,
    split_sentences,
    validate_doc_id,
)
from lift_ray.storage import S3Store, StoreError, clean_key

MANIFEST_SUFFIX = ".jsonl"
PROGRESS_EVERY = 100
READ_THREADS = 16  # documents read at once (S3 GETs and local files)
READ_WINDOW = 4  # entries queued per thread beyond the oldest unfinished read
_CHUNK_BYTES = 1 << 20

InputKind = Literal["file", "folder", "s3-object", "s3-prefix", "manifest"]
Progress = Callable[[str], None]


class CorpusError(ValueError):
    """An input root that cannot be used at all (missing folder, bucket or manifest; nothing to read)."""


@dataclass(frozen=True)
class ReadFailure:
    """One item that could not be read: where it came from, its document id if known, and why."""

    source: str
    reason: str
    doc_id: str | None = None

    @property
    def name(self) -> str:
        """The document id when known, else the source: what a report line calls this item."""
        return self.doc_id or self.source


@dataclass
class Corpus:
    """What `read_corpus` found: the documents in input order, the failures, and where each document came from."""

    documents: list[Document] = field(default_factory=list)
    failures: list[ReadFailure] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedInput:
    """One input after resolving it: its kind and what to read (paths or s3:// URIs; a manifest's own location)."""

    input: str
    kind: InputKind
    locations: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    """One document to read: its source, its id (or why it has none) and how to read it."""

    source: str
    doc_id: str | None
    read: Callable[[], Document] | None = None
    error: str | None = None


class BucketStores:
    """One S3Store (and so one boto3 client) per bucket, shared by resolving and reading."""

    def __init__(self) -> None:
        self._stores: dict[str, S3Store] = {}

    def locate(self, uri: str) -> tuple[S3Store, str]:
        """The bucket's store and the key of `uri` in it ('' for the bucket root)."""
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} has no bucket name")
        if bucket not in self._stores:
            self._stores[bucket] = S3Store(f"s3://{bucket}")
        return self._stores[bucket], key


def _is_s3(location: str) -> bool:
    return location.lower().startswith("s3://")


def _is_document_name(name: str) -> bool:
    return name.lower().endswith(DOCUMENT_SUFFIXES)


def _is_manifest_name(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIX)


# --- resolving inputs -----------------------------------------------------------------------------------------


def resolve_inputs(inputs: Sequence[str | Path], buckets: BucketStores | None = None) -> list[ResolvedInput]:
    """Resolve every input (list folders and prefixes, check manifests exist); CorpusError for an unusable one."""
    if not inputs:
        raise CorpusError("no inputs given")
    buckets = buckets or BucketStores()
    return [_resolve(str(item), buckets) for item in inputs]


def _resolve(item: str, buckets: BucketStores) -> ResolvedInput:
    if _is_s3(item):
        return _resolve_s3(item, buckets)
    if "://" in item and not item.lower().startswith("file://"):
        raise CorpusError(f"unsupported input {item!r}: use a local path, s3://bucket/prefix or a manifest.jsonl")
    path = Path(unquote(urlparse(item).path)) if item.lower().startswith("file://") else Path(item)
    if path.is_dir():
        try:
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_document_name(p.name))
        except OSError as exc:
            raise CorpusError(f"cannot list input folder {path}: {exc.strerror or exc}") from None
        if not files:
            raise CorpusError(f"input folder {path} has no .txt or .md files")
        return ResolvedInput(item, "folder", tuple(str(p) for p in files))
    if path.is_file():
        return ResolvedInput(item, "manifest" if _is_manifest_name(path.name) else "file", (str(path),))
    raise CorpusError(f"input {item!r} does not exist (no such file or folder)")


def _resolve_s3(uri: str, buckets: BucketStores) -> ResolvedInput:
    try:
        store, key = buckets.locate(uri)
        if _is_manifest_name(key) or _is_document_name(key):
            if not store.exists(key):
                # HEAD answers 404 without a body for a missing bucket too, so name both.
                raise CorpusError(f"input {uri} does not exist (no such object, or no such bucket)")
            return ResolvedInput(uri, "manifest" if _is_manifest_name(key) else "s3-object", (store.child_uri(key),))
        keys = [k for k in store.list_keys(key) if _is_document_name(k)]
    except CorpusError:
        raise
    except (StoreError, ValueError) as exc:
        raise CorpusError(f"cannot read input {uri}: {exc}") from None
    if not keys:
        raise CorpusError(f"input {uri} has no .txt or .md objects under it")
    return ResolvedInput(uri, "s3-prefix", tuple(store.child_uri(k) for k in keys))


# --- reading --------------------------------------------------------------------------------------------------


def _document_entry(
    location: str, buckets: BucketStores, limit: int, doc_id: str | None = None, source: str | None = None
) -> _Entry:
    """An entry for one local file or S3 object; the id comes from the file name unless given."""
    source = source or location
    if doc_id is None:
        try:
            doc_id = doc_id_from_filename(location)
        except ValueError as exc:
            return _Entry(source, None, error=str(exc))
    if _is_s3(location):
        return _Entry(source, doc_id, read=lambda: _read_s3_document(location, doc_id, buckets, limit))
    return _Entry(source, doc_id, read=lambda: _read_local_document(location, doc_id, limit))


class DocumentTooLarge(DocumentError):
    """A document over the size limit (not read)."""


def _check_size(doc_id: str, size: int, limit: int) -> None:
    """DocumentTooLarge if a document of `size` bytes is over the limit (0: no limit)."""
    if limit and size > limit:
        raise DocumentTooLarge(
            f"document {doc_id!r} is {size:,} bytes, more than corpus.max_document_bytes ({limit:,}): "
            "not read; raise the limit to LIFT it"
        )


def _read_local_document(path: str, doc_id: str, limit: int) -> Document:
    _check_size(doc_id, Path(path).stat().st_size, limit)
    return Document.from_bytes(doc_id, Path(path).read_bytes())


def _read_s3_document(uri: str, doc_id: str, buckets: BucketStores, limit: int) -> Document:
    store, key = buckets.locate(uri)
    if not limit:
        return Document.from_bytes(doc_id, store.read_bytes(key))
    # One GET: its Content-Length decides before the body is read, so an oversized object is never downloaded.
    with store.open_object(key) as (size, chunks):
        _check_size(doc_id, size, limit)
        data = b"".join(chunks)
    return Document.from_bytes(doc_id, data)


def read_document(location: str, doc_id: str | None = None, max_document_bytes: int = 0) -> Document:
    """One local file or S3 object as a Document (id from its file name unless given), size-checked first."""
    entry = _document_entry(location, BucketStores(), max_document_bytes, doc_id)
    if entry.read is None:
        raise DocumentError(entry.error or f"cannot read {location}")
    return entry.read()


def _text_document(doc_id: str, text: str, limit: int) -> Document:
    """A document from a manifest's inline text, with the same checks as one read from bytes."""
    _check_size(doc_id, len(text.encode("utf-8")), limit)
    if not text:
        raise DocumentError(f"document {doc_id!r} is empty (0 bytes)")
    if "\x00" in text:
        raise DocumentError(f"document {doc_id!r} looks binary (it contains NUL bytes)")
    document = Document.from_text(doc_id, text)
    document.check_not_empty()
    return document


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (without their '\\n') from a stream of byte chunks, in time linear in the total size."""
    parts: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:end])
            yield b"".join(parts)
            parts = []
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts)


def _manifest_chunks(location: str, buckets: BucketStores) -> Iterator[bytes]:
    """The bytes of a manifest in chunks, from a local file or an S3 object."""
    if _is_s3(location):
        store, key = buckets.locate(location)
        with store.open_object(key, _CHUNK_BYTES) as (_, chunks):
            yield from chunks
        return
    with open(location, "rb") as handle:
        yield from iter(lambda: handle.read(_CHUNK_BYTES), b"")


def _manifest_target(manifest: str, uri: str) -> str:
    """Where a manifest's `uri` points: s3:// as is, a path relative to the manifest's own folder (or key prefix)."""
    if _is_s3(uri):
        return uri
    if uri.lower().startswith("file://"):
        return unquote(urlparse(uri).path)
    if "://" in uri:
        raise ValueError(f"unsupported uri {uri!r}: use a local path or s3://bucket/key")
    if _is_s3(manifest):
        # Only keys next to the manifest: an object in a bucket must not make the driver read its own files.
        return f"{manifest.rsplit('/', 1)[0]}/{clean_key(uri)}"
    return str(Path(manifest).parent / uri)


def _manifest_line_entry(manifest: str, number: int, line: bytes, buckets: BucketStores, limit: int) -> _Entry | None:
    """The entry for one manifest line (None for a blank line)."""
    source = f"{manifest}:{number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Entry(source, None, error=f"manifest line {number} is not UTF-8 (byte {exc.start}: {exc.reason})")
    if not text.strip():
        return None
    try:
        row: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return _Entry(source, None, error=f"manifest line {number} is not valid JSON ({exc.msg})")
    if not isinstance(row, dict):
        return _Entry(source, None, error=f"manifest line {number} must be a JSON object with 'id' and 'uri' or 'text'")
    if "id" not in row:
        return _Entry(source, None, error=f"manifest line {number} has no 'id'")
    doc_id = row["id"]
    if not isinstance(doc_id, str):
        return _Entry(source, None, error=f"manifest line {number}: 'id' must be a string, not {type(doc_id).__name__}")
    try:
        validate_doc_id(doc_id)
    except ValueError as exc:
        return _Entry(source, None, error=f"manifest line {number}: {exc}")
    has_uri, has_text = "uri" in row, "text" in row
    if has_uri == has_text:
        return _Entry(source, doc_id, error=f"manifest line {number} needs exactly one of 'uri' and 'text'")
    value = row["uri"] if has_uri else row["text"]
    if not isinstance(value, str):
        name = "uri" if has_uri else "text"
        return _Entry(source, doc_id, error=f"manifest line {number}: {name!r} must be a string")
    if has_text:
        return _Entry(source, doc_id, read=lambda: _text_document(doc_id, value, limit))
    try:
        target = _manifest_target(manifest, value)
    except ValueError as exc:
        return _Entry(source, doc_id, error=f"manifest line {number}: {exc}")
    return _document_entry(target, buckets, limit, doc_id=doc_id, source=f"{source} ({target})")


def _manifest_entries(manifest: str, buckets: BucketStores, limit: int) -> Iterator[_Entry]:
    number = 0
    try:
        for number, line in enumerate(split_lines(_manifest_chunks(manifest, buckets)), start=1):
            entry = _manifest_line_entry(manifest, number, line, buckets, limit)
            if entry is not None:
                yield entry
    except Exception as exc:  # the manifest went away or the connection dropped: the rest of it fails as one item
        reason = f"cannot read manifest {manifest} after line {number}: {exc}"
        yield _Entry(f"{manifest}:{number + 1}", None, error=reason)


def _entries(resolved: ResolvedInput, buckets: BucketStores, limit: int) -> Iterator[_Entry]:
    for location in resolved.locations:
        if resolved.kind == "manifest":
            yield from _manifest_entries(location, buckets, limit)
        else:
            yield _document_entry(location, buckets, limit)


def _reason(exc: Exception, source: str) -> str:
    """A one-line reason for a failed read."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read {exc.filename or source}: {exc.strerror}"
    if isinstance(exc, (ValueError, StoreError, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def read_resolved(
    resolved: Sequence[ResolvedInput],
    progress: Progress | None = None,
    buckets: BucketStores | None = None,
    max_document_bytes: int = 0,
    threads: int = READ_THREADS,
) -> Corpus:
    """Read already-resolved inputs (e.g. a listing made earlier); every bad item becomes a ReadFailure.

    Documents are read `threads` at a time (S3 GETs wait on the network, not the CPU), at most `threads`
    x `READ_WINDOW` ahead of the oldest one not yet done; documents and failures come out in input order, as
    a one-by-one read would give them. Documents over `max_document_bytes` (0: no limit) fail without being
    read.
    """
    buckets = buckets or BucketStores()
    say = progress or (lambda _message: None)
    corpus = Corpus()
    first_seen: dict[str, str] = {}

    def fail(source: str, reason: str, doc_id: str | None) -> None:
        corpus.failures.append(ReadFailure(source, reason, doc_id))
        say(f"read failed: {source}: {reason}")

    def settle(entry: _Entry, outcome: Future[Document] | str) -> None:
        """Record one entry's outcome: a failure reason decided before reading, or its read."""
        if isinstance(outcome, str):
            fail(entry.source, outcome, entry.doc_id)
            return
        try:
            document = outcome.result()
        except Exception as exc:  # one item's failure must not stop the others
            fail(entry.source, _reason(exc, entry.source), entry.doc_id)
            return
        corpus.documents.append(document)
        corpus.sources[document.doc_id] = entry.source
        if len(corpus.documents) % PROGRESS_EVERY == 0:
            say(f"read {len(corpus.documents)} documents, {len(corpus.failures)} failed so far")

    pending: deque[tuple[_Entry, Future[Document] | str]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="corpus-read") as pool:
        for item in resolved:
            count = f", {len(item.locations)} to read" if item.kind != "manifest" else ""
            say(f"reading {item.input} ({item.kind}{count})")
            for entry in _entries(item, buckets, max_document_bytes):
                if entry.error is not None or entry.read is None or entry.doc_id is None:
                    pending.append((entry, entry.error or "unreadable"))
                elif entry.doc_id in first_seen:
                    # Checked before reading, so a duplicate costs no download.
                    pending.append((entry, f"duplicate id, first seen at {first_seen[entry.doc_id]}"))
                else:
                    first_seen[entry.doc_id] = entry.source
                    pending.append((entry, pool.submit(entry.read)))
                while len(pending) > max(1, threads) * READ_WINDOW or (pending and _settled(pending[0][1])):
                    settle(*pending.popleft())
            while pending:  # an input's messages before the next input's
                settle(*pending.popleft())
    say(f"read {len(corpus.documents)} documents, {len(corpus.failures)} failed")
    return corpus


def _settled(outcome: Future[Document] | str) -> bool:
    return isinstance(outcome, str) or outcome.done()


def read_corpus(
    inputs: Sequence[str | Path],
    progress: Progress | None = None,
    max_document_bytes: int = 0,
    threads: int = READ_THREADS,
) -> Corpus:
    """Resolve then read every input (`threads` documents at a time, results in input order); CorpusError if an
    input root is unusable, ReadFailures for bad items.

    Documents over `max_document_bytes` (0: no limit) fail without being read.
    """
    buckets = BucketStores()
    return read_resolved(resolve_inputs(inputs, buckets), progress, buckets, max_document_bytes, threads)


def fail_long_documents(corpus: Corpus, max_sentences: int, max_sentence_chars: int) -> list[ReadFailure]:
    """Move documents with more than `max_sentences` sentences (as the pipeline splits them) to the failures.

    A cost guard for bulk jobs: every sentence costs generator calls, so a stray log file or a book-sized
    single line fails here, with its sentence count, before any QA is generated. 0 means no limit.
    """
    if not max_sentences:
        return []
    failed: list[ReadFailure] = []
    kept: list[Document] = []
    for document in corpus.documents:
        count = len(split_sentences(document.text, max_sentence_chars))
        if count <= max_sentences:
            kept.append(document)
            continue
        reason = (
            f"document {document.doc_id!r} has {count:,} sentences after splitting, more than "
            f"corpus.max_sentences ({max_sentences:,}); raise the limit to LIFT it"
        )
        failed.append(ReadFailure(corpus.sources.get(document.doc_id, document.doc_id), reason, document.doc_id))
    corpus.documents = kept
    corpus.failures.extend(failed)
    return failed
