"""Documents: ids, reading, and splitting into sentences that carry their preceding paragraph."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DOCUMENT_SUFFIXES = (".txt", ".md")
_PRESPLIT_CHARS = 20_000


class InvalidDocumentId(ValueError):
    """A document id (or namespace) that could escape its folder or is otherwise unsafe."""


class DocumentError(ValueError):
    """A document that cannot be LIFTed (empty, not UTF-8, ...), with the reason."""


def validate_doc_id(doc_id: str, what: str = "document id") -> str:
    """Return `doc_id` if it is safe as a storage path component, else raise InvalidDocumentId."""
    if not isinstance(doc_id, str) or not SAFE_ID.match(doc_id) or ".." in doc_id:
        raise InvalidDocumentId(
            f"{what} {doc_id!r} is not allowed: use 1-128 letters, digits, '-', '_' and '.', "
            "starting with a letter or digit, with no '..' and no path separators"
        )
    return doc_id


def doc_id_from_filename(name: str) -> str:
    """The document id for a file: its name without the extension, validated."""
    base = name.rsplit("/", 1)[-1]
    stem = base[: -len(Path(base).suffix)] if Path(base).suffix else base
    return validate_doc_id(stem)


@dataclass(frozen=True)
class Document:
    """A document to LIFT: its id, its text and the sha256 of its bytes."""

    doc_id: str
    text: str
    sha256: str

    @classmethod
    def from_text(cls, doc_id: str, text: str) -> Document:
        """A document from text already in memory."""
        validate_doc_id(doc_id)
        return cls(doc_id=doc_id, text=text, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())

    @classmethod
    def from_bytes(cls, doc_id: str, data: bytes) -> Document:
        """A document from raw bytes, which must be UTF-8 text with something in it."""
        validate_doc_id(doc_id)
        if not data:
            raise DocumentError(f"document {doc_id!r} is empty (0 bytes)")
        # Checked on the bytes, before decoding: binary files are usually not valid UTF-8 either, and
        # "binary" is the more useful reason.
        if b"\x00" in data:
            raise DocumentError(f"document {doc_id!r} looks binary (it contains NUL bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"document {doc_id!r} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        document = cls(doc_id=doc_id, text=text, sha256=hashlib.sha256(data).hexdigest())
        document.check_not_empty()
        return document

    def check_not_empty(self) -> None:
        """Raise DocumentError if the document has no text to learn from."""
        # isspace() instead of strip(): no copy of a document that may be tens of MB.
        if not self.text or self.text.isspace():
            raise DocumentError(f"document {self.doc_id!r} is empty or whitespace only")


def read_document_file(path: str | Path, doc_id: str | None = None) -> Document:
    """Read one local text file as a Document (id from its file name unless given)."""
    path = Path(path)
    return Document.from_bytes(doc_id or doc_id_from_filename(path.name), path.read_bytes())


def _cut_at_whitespace(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters, preferring whitespace boundaries.

    Works on positions in `text` rather than on shrinking copies of it, so a multi-MB paragraph costs
    one pass, not one copy of the remainder per piece.
    """
    pieces: list[str] = []
    start, end = _skip_space(text, 0, len(text)), len(text)
    while end > start and text[end - 1].isspace():
        end -= 1
    while end - start > limit:
        space = text.rfind(" ", start + limit // 2, start + limit)
        cut = space if space > start else start + limit
        pieces.append(text[start:cut].strip())
        start = _skip_space(text, cut, end)
    if end > start:
        pieces.append(text[start:end])
    return pieces


def _skip_space(text: str, start: int, end: int) -> int:
    """The first position at or after `start` (before `end`) that is not whitespace."""
    while start < end and text[start].isspace():
        start += 1
    return start


_WHITESPACE = re.compile(r"\s+")
_segmenter = None


def split_sentences(text: str, max_sentence_chars: int = 1000) -> list[str]:
    """Split text into sentences (pysbd), cutting any longer than `max_sentence_chars`."""
    global _segmenter
    if _segmenter is None:
        import pysbd

        _segmenter = pysbd.Segmenter(language="en", clean=False)
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        # One substitution, not a list of every word: paragraphs can be megabytes long.
        paragraph = _WHITESPACE.sub(" ", paragraph).strip()
        if not paragraph:
            continue
        # pysbd slows down badly on huge unpunctuated blocks: bound its input first.
        for block in _cut_at_whitespace(paragraph, _PRESPLIT_CHARS):
            for sentence in _segmenter.segment(block):
                sentences.extend(_cut_at_whitespace(sentence, max_sentence_chars))
    return [s for s in sentences if s]


def _tail(text: str, limit: int) -> str:
    """The last `limit` characters of `text`, starting at a word boundary."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < limit // 4 else tail


def sentence_rows(
    document: Document, context_chars: int = 2000, max_sentence_chars: int = 1000
) -> list[dict[str, Any]]:
    """One row per sentence: the sentence, its preceding paragraph as context, and where it came from."""
    document.check_not_empty()
    sentences = split_sentences(document.text, max_sentence_chars)
    rows: list[dict[str, Any]] = []
    preceding = ""
    for index, sentence in enumerate(sentences):
        rows.append(
            {
                "doc_id": document.doc_id,
                "doc_sha256": document.sha256,
                "sentence_index": index,
                "sentence": sentence,
                "context": _tail(preceding, context_chars) if context_chars else "",
            }
        )
        preceding = f"{preceding} {sentence}".strip()[-(context_chars * 2 + 1) :] if context_chars else ""
    return rows
