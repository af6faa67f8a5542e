"""An OpenAI-compatible `/v1/chat/completions` server on loopback whose replies you choose.

For the tests (a server that fails, stalls or answers in a given way on purpose) and for the pipeline
benchmark (a stand-in for a generator on other hardware: recorded pairs replayed after a set latency).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatStub:
    """Answers /v1/chat/completions after `delay_s`; the first `failures` requests per prompt get `fail_status`.

    `reply` is the text of every answer, or a function of the last message (default: an echo of it).
    `bodies` and `headers` record every request, in arrival order.
    """

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
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one request."""
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.bodies.append(body)
            self.headers.append({name.lower(): value for name, value in handler.headers.items()})
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


@contextmanager
def serving() -> Iterator[Callable[[ChatStub], str]]:
    """Yields `start(stub) -> base_url` (up to and including /v1); every server started is shut down on exit."""
    servers: list[ThreadingHTTPServer] = []

    def start(stub: ChatStub) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                stub.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def replay_recorded_pairs(rows: list[dict[str, Any]]) -> Callable[[str], str]:
    """A `ChatStub` reply: the pairs recorded for the prompt's last sentence (QA cache rows), or an empty list."""
    recorded = {row["sentence"]: json.loads(row["qa_json"]) for row in rows}

    def reply(prompt: str) -> str:
        sentence = prompt.split("Last sentence:\n", 1)[-1].split("\n\nWrite ", 1)[0]
        return json.dumps({"qa_list": recorded.get(sentence, [])})

    return reply
