"""API keys → namespaces. Keys are kept only as SHA-256 digests and never logged or echoed."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from lift_ray.config import TenantSettings
from lift_ray.documents import validate_doc_id


class Unauthorized(PermissionError):
    """No API key, or one this endpoint does not know."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_key_list(text: str) -> dict[str, list[str]]:
    """'ns=key,ns2=key2' (commas or newlines) as namespace -> keys; ValueError names the bad entry's position."""
    keys: dict[str, list[str]] = {}
    entries = [entry.strip() for entry in text.replace("\n", ",").split(",") if entry.strip()]
    for position, entry in enumerate(entries, start=1):
        namespace, sep, key = entry.partition("=")
        if not sep or not namespace.strip() or not key.strip():
            raise ValueError(f"API key entry {position} must look like namespace=key")  # never echo the key
        keys.setdefault(validate_doc_id(namespace.strip(), "namespace"), []).append(key.strip())
    return keys


class Tenants:
    """Which namespace a request may use, from its `Authorization: Bearer <key>` header."""

    def __init__(self, keys: Mapping[str, list[str]], default_namespace: str) -> None:
        self._digests = [(_digest(key), namespace) for namespace, values in keys.items() for key in values]
        self.default_namespace = default_namespace

    @classmethod
    def from_settings(cls, settings: TenantSettings, default_namespace: str, environ: Mapping[str, str]) -> Tenants:
        """Keys from the config plus those in the environment variable `settings.api_keys_env`."""
        keys = {ns: [key.get_secret_value() for key in values] for ns, values in settings.api_keys.items()}
        if settings.api_keys_env and environ.get(settings.api_keys_env):
            try:
                extra = parse_key_list(environ[settings.api_keys_env])
            except ValueError as exc:
                raise ValueError(f"{settings.api_keys_env}: {exc}") from None
            for namespace, values in extra.items():
                keys.setdefault(namespace, []).extend(values)
        return cls(keys, default_namespace)

    @property
    def open(self) -> bool:
        """Whether no keys are configured (every request uses the default namespace)."""
        return not self._digests

    def namespaces(self) -> list[str]:
        """The namespaces reachable through this endpoint."""
        return sorted({ns for _, ns in self._digests}) if self._digests else [self.default_namespace]

    def namespace_for(self, authorization: str | None) -> str:
        """The namespace of the key in an Authorization header value; Unauthorized when keys are required."""
        if self.open:
            return self.default_namespace
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        digest = _digest(key.strip())
        found = None
        for known, namespace in self._digests:
            if hmac.compare_digest(known, digest):  # every key compared: the time taken says nothing
                found = namespace
        if found is None:
            raise Unauthorized("the API key is not valid")
        return found
