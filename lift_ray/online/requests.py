"""The body of `POST /v1/documents`, its document id, and reading the document it names (URI allow-list).

Plain code: `load_document` turns a validated `DocumentRequest` into a `Document`, or raises
`RequestRejected` with the HTTP status the ingress answers with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lift_ray.corpus import DocumentTooLarge, read_document
from lift_ray.documents import Document, DocumentError, InvalidDocumentId, doc_id_from_filename, validate_doc_id
from lift_ray.storage import StoreError, clean_key


class RequestRejected(ValueError):
    """A request that cannot be taken, with the HTTP status and a message that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DocumentRequest(BaseModel):
    """The body of `POST /v1/documents`: an optional id and exactly one of `text` or `uri`."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="document id; default: the uri's file name or 'doc-<sha256 prefix>'")
    text: str | None = Field(None, description="the document itself")
    uri: str | None = Field(None, description="where to read it: s3://bucket/key or a path the cluster can read")

    @field_validator("id")
    @classmethod
    def _id_is_safe(cls, doc_id: str | None) -> str | None:
        return None if doc_id is None else validate_doc_id(doc_id)

    @field_validator("text")
    @classmethod
    def _text_has_content(cls, text: str | None) -> str | None:
        if text is not None and (not text or text.isspace()):
            raise ValueError("the document text is empty or whitespace only")
        if text is not None and "\x00" in text:
            raise ValueError("the document text contains NUL characters (binary data?)")
        return text

    @field_validator("uri")
    @classmethod
    def _uri_is_usable(cls, uri: str | None) -> str | None:
        if uri is not None and "://" in uri and not uri.lower().startswith("s3://"):
            raise ValueError(f"uri {uri!r} is not supported: use s3://bucket/key or a path")
        return uri

    @model_validator(mode="after")
    def _one_source(self) -> DocumentRequest:
        if (self.text is None) == (self.uri is None):
            raise ValueError("give exactly one of 'text' (the document) or 'uri' (where to read it)")
        return self


def derive_id(request: DocumentRequest) -> str:
    """The document id: as given, else the uri's file name stem, else 'doc-' + the text's sha256 prefix."""
    if request.id is not None:
        return request.id
    if request.uri is not None:
        try:
            return doc_id_from_filename(request.uri.rstrip("/"))
        except InvalidDocumentId as exc:
            message = f"the uri's file name is not a usable document id ({exc}); give an 'id'"
            raise RequestRejected(422, message) from None
    assert request.text is not None
    return "doc-" + hashlib.sha256(request.text.encode("utf-8")).hexdigest()[:16]


def _inside(location: str, prefix: str) -> bool:
    if location.lower().startswith("s3://") or prefix.lower().startswith("s3://"):
        if not (location.lower().startswith("s3://") and prefix.lower().startswith("s3://")):
            return False
        rest, base = location[len("s3://") :], prefix[len("s3://") :].rstrip("/")
        return rest == base or rest.startswith(base + "/")
    path, folder = Path(location).resolve(), Path(prefix).resolve()
    return path == folder or folder in path.parents


def check_uri(uri: str, prefixes: list[str]) -> str:
    """`uri` if it lies under one of `prefixes` (and has no '..'); RequestRejected (403 or 422) if not."""
    if not prefixes:
        raise RequestRejected(
            403, "this endpoint does not read documents from a uri (online_lift.uri_prefixes is empty): send 'text'"
        )
    if uri.lower().startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            clean_key(key)
        except ValueError as exc:
            raise RequestRejected(422, f"uri {uri!r} is not a usable S3 object: {exc}") from None
        if not bucket:
            raise RequestRejected(422, f"uri {uri!r} has no bucket name")
    if not any(_inside(uri, prefix) for prefix in prefixes):
        raise RequestRejected(403, f"uri {uri!r} is outside the locations this endpoint may read: {prefixes}")
    return uri


def load_document(request: DocumentRequest, max_bytes: int, uri_prefixes: list[str]) -> Document:
    """The posted document, size-checked (413), from its text or read from its uri (400 if unreadable)."""
    doc_id = derive_id(request)
    too_large = f"the document is larger than online_lift.max_document_bytes ({max_bytes:,} bytes)"
    if request.text is not None:
        size = len(request.text.encode("utf-8"))
        if size > max_bytes:
            raise RequestRejected(413, f"{too_large}: {size:,} bytes")
        return Document.from_text(doc_id, request.text)
    assert request.uri is not None
    uri = check_uri(request.uri, uri_prefixes)
    try:
        return read_document(uri, doc_id, max_bytes)
    except DocumentTooLarge:
        raise RequestRejected(413, f"{too_large}: {uri}") from None
    except DocumentError as exc:
        raise RequestRejected(422, str(exc)) from None
    except (OSError, StoreError) as exc:
        raise RequestRejected(400, f"cannot read {uri}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
