"""One key -> bytes store over local folders and s3:// (boto3); what the keys mean is `lift_ray.layout`'s."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

_TMP_PREFIX = ".lift-ray-tmp-"
_S3_DELETE_BATCH = 1000
_S3_LIST_PAGE_SIZE = 1000


class StoreError(RuntimeError):
    """A storage operation failed; the message says which URI and why."""


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist; the message names the full URI."""

    def __str__(self) -> str:
        # KeyError's own __str__ would quote the message like a dict key.
        return str(self.args[0]) if self.args else ""


def clean_key(key: str, allow_empty: bool = False) -> str:
    """`key` as a normalised '/'-separated relative path, or ValueError if it could escape the store root."""
    if not isinstance(key, str):
        raise ValueError(f"storage key must be a string, not {type(key).__name__}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"storage key {key!r} must be a relative '/'-separated path")
    stripped = key.rstrip("/")
    if not stripped:
        if allow_empty:
            return ""
        raise ValueError("storage key must not be empty")
    parts = stripped.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"storage key {key!r} must not contain empty, '.' or '..' components")
    return stripped


def _join(prefix: str, rest: str) -> str:
    """Two key parts joined with '/', either of which may be empty."""
    return f"{prefix}/{rest}" if prefix and rest else prefix or rest


class Store(ABC):
    """A flat key -> bytes store rooted at a URI; keys are '/'-separated relative paths."""

    uri: str

    @staticmethod
    def from_uri(root: str | Path) -> Store:
        """An S3Store for 's3://bucket/prefix', a LocalStore for 'file:///path' or a plain path."""
        if isinstance(root, Path):
            return LocalStore(root)
        if root.lower().startswith("s3://"):
            return S3Store(root)
        if root.lower().startswith("file://"):
            parsed = urlparse(root)
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URI {root!r} names a remote host; only local file:// URIs are supported")
            return LocalStore(unquote(parsed.path))
        if "://" in root:
            raise ValueError(f"unsupported storage URI {root!r}: use s3://bucket/prefix, file:///path or a local path")
        return LocalStore(root)

    @abstractmethod
    def child_uri(self, key: str) -> str:
        """The full URI of `key`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The bytes at `key`; ObjectNotFound if there are none."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` at `key`, replacing it atomically."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete the object at `key`; whether there was one."""

    @abstractmethod
    def _list_sizes(self, prefix: str) -> dict[str, int]:
        """Key -> size in bytes for every object under the (already cleaned) folder `prefix`."""

    def read_text(self, key: str) -> str:
        """The UTF-8 text at `key`."""
        data = self.read_bytes(key)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StoreError(f"{self.child_uri(key)} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None

    def write_text(self, key: str, text: str) -> None:
        """Store `text` at `key` as UTF-8."""
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        """The JSON value at `key`."""
        text = self.read_text(key)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.child_uri(key)} is not valid JSON: {exc}") from None

    def write_json(self, key: str, value: Any) -> None:
        """Store `value` at `key` as indented JSON with sorted keys."""
        self.write_text(key, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under the folder `prefix` (recursive), relative to the store root, sorted."""
        return sorted(self._list_sizes(clean_key(prefix, allow_empty=True)))

    def size_of_prefix(self, prefix: str) -> int:
        """Total bytes of every object under the folder `prefix`."""
        return sum(self._list_sizes(clean_key(prefix, allow_empty=True)).values())

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder `prefix`; how many were deleted."""
        return sum(self.delete(key) for key in self.list_keys(prefix))

    def upload_dir(self, local_dir: Path, prefix: str) -> list[str]:
        """Copy every file under `local_dir` to `prefix/<relative path>`; the keys written."""
        prefix = clean_key(prefix, allow_empty=True)
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreError(f"cannot upload {local_dir} to {self.child_uri(prefix)}: it is not a folder")
        keys: list[str] = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = _join(prefix, path.relative_to(local_dir).as_posix())
            self._upload_file(path, key)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: Path) -> list[Path]:
        """Copy every key under `prefix` to `local_dir/<relative path>`; ObjectNotFound if there are none."""
        prefix = clean_key(prefix, allow_empty=True)
        keys = self.list_keys(prefix)
        if not keys:
            raise ObjectNotFound(f"nothing stored under {self.child_uri(prefix)}")
        local_dir = Path(local_dir)
        paths: list[Path] = []
        for key in keys:
            relative = clean_key(key[len(prefix) + 1 :] if prefix else key)
            path = local_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            self._download_file(key, path)
            paths.append(path)
        return paths

    def _upload_file(self, path: Path, key: str) -> None:
        """Store the local file `path` at `key`."""
        self.write_bytes(key, path.read_bytes())

    def _download_file(self, key: str, path: Path) -> None:
        """Write the object at `key` to the local file `path`."""
        path.write_bytes(self.read_bytes(key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    """A store in a local folder (also what a shared filesystem such as NFS looks like)."""

    def __init__(self, root: str | Path) -> None:
        # Absolute, because Ray workers do not share the driver's working directory.
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str, allow_empty: bool = False) -> Path:
        key = clean_key(key, allow_empty=allow_empty)
        return self.root / key if key else self.root

    def child_uri(self, key: str) -> str:
        """The absolute path of `key`."""
        return str(self._path(key, allow_empty=True))

    def exists(self, key: str) -> bool:
        """Whether a file is stored at `key`."""
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        """The bytes of the file at `key`; ObjectNotFound if there is none."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object at {path}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write to a temporary file in the same folder, then rename it over `key`."""
        path = self._path(key)
        self._write_atomically(path, lambda handle: handle.write(data))

    def delete(self, key: str) -> bool:
        """Delete the file at `key`; whether there was one."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc.strerror or exc}") from None
        self._prune_empty_dirs(path.parent)
        return True

    def _list_sizes(self, prefix: str) -> dict[str, int]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return {}
        sizes: dict[str, int] = {}
        try:
            for dirpath, _dirnames, filenames in os.walk(base):
                for name in filenames:
                    if name.startswith(_TMP_PREFIX):
                        continue
                    path = Path(dirpath, name)
                    sizes[path.relative_to(self.root).as_posix()] = path.stat().st_size
        except OSError as exc:
            raise StoreError(f"cannot list {base}: {exc.strerror or exc}") from None
        return sizes

    def _upload_file(self, path: Path, key: str) -> None:
        target = self._path(key)
        with open(path, "rb") as source:
            self._write_atomically(target, lambda handle: shutil.copyfileobj(source, handle))

    def _download_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        try:
            shutil.copyfile(source, path)
        except FileNotFoundError:
            raise ObjectNotFound(f"no object at {source}") from None

    def _write_atomically(self, path: Path, write: Any) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX + path.name + ".")
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; keep files readable like a plain write would
            os.replace(tmp_name, path)
        except BaseException as exc:
            Path(tmp_name).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
            raise

    def _prune_empty_dirs(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


class S3Store(Store):
    """A store under s3://bucket/prefix; the client comes from boto3's standard env/config chain unless given."""

    def __init__(self, uri: str, client: Any = None) -> None:
        if not uri.lower().startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} has no bucket name")
        self.bucket = bucket
        self.prefix = clean_key(prefix, allow_empty=True)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use."""
        if self._client is None:
            import boto3

            # A session per store: boto3.client() shares a default session that is not safe to build from threads.
            self._client = boto3.session.Session().client("s3")
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # boto3 clients do not pickle; a Ray worker builds its own from its (inherited) environment.
        return {**self.__dict__, "_client": None}

    def _key(self, key: str, allow_empty: bool = False) -> str:
        return _join(self.prefix, clean_key(key, allow_empty=allow_empty))

    def child_uri(self, key: str) -> str:
        """The s3:// URI of `key`."""
        return _join(self.uri, clean_key(key, allow_empty=True))

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        uri = self.child_uri(key)
        try:
            with self._errors("check", uri):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return False
        return True

    def read_bytes(self, key: str) -> bytes:
        """The bytes of the object at `key`; ObjectNotFound if there is none."""
        with self._errors("read", self.child_uri(key)):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()

    @contextmanager
    def open_object(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[tuple[int, Iterator[bytes]]]:
        """One GET: the object's size (its Content-Length) and its body in chunks, read only as they are taken.

        The size comes before any of the body is downloaded, so a caller can refuse an oversized object; the body
        is closed on leaving the block. Errors are StoreError/ObjectNotFound naming the object.
        """
        uri = self.child_uri(key)
        with self._errors("read", uri):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]

        def chunks() -> Iterator[bytes]:
            with self._errors("read", uri):
                yield from body.iter_chunks(chunk_bytes)

        try:
            yield int(response["ContentLength"]), chunks()
        finally:
            body.close()

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` at `key` (a single PUT, which S3 applies atomically)."""
        with self._errors("write", self.child_uri(key)):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def delete(self, key: str) -> bool:
        """Delete the object at `key`; whether there was one."""
        existed = self.exists(key)
        with self._errors("delete", self.child_uri(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return existed

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder `prefix` in batches; how many were deleted."""
        keys = [self._key(key) for key in self.list_keys(prefix)]
        for start in range(0, len(keys), _S3_DELETE_BATCH):
            batch = keys[start : start + _S3_DELETE_BATCH]
            with self._errors("delete", self.child_uri(prefix)):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
                )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"cannot delete {len(errors)} object(s) under {self.child_uri(prefix)}, e.g. "
                    f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        return len(keys)

    def _list_sizes(self, prefix: str) -> dict[str, int]:
        folder = self._key(prefix, allow_empty=True)
        # A trailing '/' so that prefix 'run' does not also match 'run2/...'.
        s3_prefix = folder + "/" if folder else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        sizes: dict[str, int] = {}
        with self._errors("list", self.child_uri(prefix)):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=s3_prefix, PaginationConfig={"PageSize": _S3_LIST_PAGE_SIZE}
            ):
                for item in page.get("Contents", []):
                    # Keys ending in '/' are folder placeholders made by consoles, not objects.
                    if not item["Key"].endswith("/"):
                        sizes[item["Key"][strip:]] = int(item["Size"])
        return sizes

    def _upload_file(self, path: Path, key: str) -> None:
        # upload_file switches to multipart for large files (model weights).
        with self._errors("write", self.child_uri(key)):
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def _download_file(self, key: str, path: Path) -> None:
        with self._errors("read", self.child_uri(key)):
            self.client.download_file(self.bucket, self._key(key), str(path))

    @contextmanager
    def _errors(self, action: str, uri: str) -> Iterator[None]:
        """Turn botocore/boto3 exceptions into StoreError/ObjectNotFound that name `uri`."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action, uri) from None
        except Boto3Error as exc:
            # boto3's transfer errors (S3UploadFailedError, ...) wrap the ClientError that explains them.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                raise self._client_error(cause, action, uri) from None
            raise StoreError(f"cannot {action} {uri}: {exc}") from exc
        except BotoCoreError as exc:
            raise self._botocore_error(exc, action, uri) from None

    def _client_error(self, exc: Any, action: str, uri: str) -> StoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = error.get("Message") or code or f"HTTP {status}"
        if code == "NoSuchBucket":
            return StoreError(f"cannot {action} {uri}: bucket {self.bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
            return ObjectNotFound(f"no object at {uri}")
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
            return StoreError(
                f"cannot {action} {uri}: access denied ({detail}); check the AWS credentials and the bucket policy"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return StoreError(f"cannot {action} {uri}: the AWS credentials were rejected ({code}: {detail})")
        return StoreError(f"cannot {action} {uri}: {code or 'error'}: {detail}")

    def _botocore_error(self, exc: Exception, action: str, uri: str) -> StoreError:
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )
        from botocore.exceptions import (
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"cannot {action} {uri}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials"
            )
        if isinstance(exc, NoRegionError):
            return StoreError(f"cannot {action} {uri}: no AWS region configured; set AWS_DEFAULT_REGION")
        if isinstance(exc, BotoConnectionError):
            endpoint = getattr(self.client.meta, "endpoint_url", "?")
            return StoreError(f"cannot {action} {uri}: cannot reach the S3 endpoint {endpoint} ({exc})")
        return StoreError(f"cannot {action} {uri}: {exc}")


def write_json_lines(store: Store, key: str, rows: list[dict]) -> None:
    """Store rows as JSON lines at `key`."""
    store.write_text(key, "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows))


def read_json_lines(store: Store, key: str) -> list[dict]:
    """The rows of the JSON-lines object at `key` (blank lines skipped)."""
    rows = []
    for number, line in enumerate(store.read_text(key).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{store.child_uri(key)} line {number} is not valid JSON: {exc.msg}") from None
    return rows
