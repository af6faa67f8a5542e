"""A minimal OpenAI-compatible HTTP client for the lift-ray endpoint (standard library only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class EndpointError(RuntimeError):
    """The endpoint answered with an HTTP error; `status` and `detail` say which."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def post_json(url: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """POST `body` as JSON and return the decoded reply, raising EndpointError on HTTP errors."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        payload = exc.read().decode(errors="replace")
        try:
            detail = json.loads(payload).get("detail", payload)
        except json.JSONDecodeError:
            detail = payload
        raise EndpointError(exc.code, str(detail)) from None


def ask(base_url: str, model: str, question: str, max_tokens: int = 48, timeout: float = 300.0) -> str:
    """Ask one question of `model` (a document id, or 'base') and return the answer text."""
    reply = post_json(
        f"{base_url.rstrip('/')}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens},
        timeout=timeout,
    )
    return reply["choices"][0]["message"]["content"]


def wait_until_healthy(base_url: str, timeout: float = 120.0) -> None:
    """Poll GET /healthz until it answers 200 or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url.rstrip('/')}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = exc
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} did not become healthy in {timeout:.0f} s (last error: {last_error})")
