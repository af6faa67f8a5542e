"""Fixtures of the unit tests: an OpenAI-compatible HTTP server on loopback that misbehaves on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FlakyServer:
    """Answers /v1/chat/completions; the first `failures` requests per prompt get `fail_status`.

    `reply` is the text of every answer, or a function of the prompt (default: an echo of the prompt)."""

    def __init__(
        self,
        failures: int = 0,
        fail_status: int = 503,
        delay_s: float = 0.0,
        reply: str | Callable[[str], str] | None = None,
    ):
        self.failures, self.fail_status, self.delay_s, self.reply = failures, fail_status, delay_s, reply
        self.attempts: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.bodies.append(body)
            self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
            attempt = self.attempts[prompt]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            if attempt <= self.failures:
                payload, status = json.dumps({"detail": "try later"}).encode(), self.fail_status
            else:
                text = f"echo: {prompt}" if self.reply is None else self.reply
                text = text(prompt) if callable(text) else text
                reply = {"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 7}}
                payload, status = json.dumps(reply).encode(), 200
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def serve_fake_llm() -> Iterator:
    """Start a FlakyServer on a free loopback port; yields a function (server) -> base_url."""
    servers: list[ThreadingHTTPServer] = []

    def start(behaviour: FlakyServer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                behaviour.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
