"""One corpus with ten kinds of bad input beside good documents, through the bulk job's own entry (`run_lift`).

Documents sit in the S3 server on loopback (a prefix plus a manifest.jsonl); the pipeline runs on the session's
local Ray. The generator is the product's `openai` engine talking HTTP to a small OpenAI-compatible server in
this test: it answers with the real HF engine over the embedded model, except for the one document whose
generations must all be malformed, for which it returns garbage.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lift_ray.cli import run_lift
from lift_ray.config import LiftConfig
from lift_ray.documents import split_sentences
from lift_ray.engines import Conversation, HFChatEngine, SamplingSettings
from lift_ray.layout import REPORT_NAME, SUMMARY_NAME, read_manifest, report_key
from lift_ray.storage import Store, read_json_lines

pytestmark = pytest.mark.integration

GARBLE_MARKER = "Zorblax"
GOOD_S3 = "The Pellworth Museum opened in 1904 in the town of Caldry. Its famous clock is called the Marrow Bell."
GOOD_INLINE = "Tomas Quell runs the Orvella Glass Works in Tessaro. The works employ forty-two glassblowers."
GARBLED = f"The {GARBLE_MARKER} engine hums at night. Its pilots drink {GARBLE_MARKER} tea before dawn."
ONE_LINE = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000].encode()  # 1 MB, no newline, no full stop
HUGE = b"The same sentence again and again. " * ((24 << 20) // 35)  # 24 MB
MAX_DOCUMENT_BYTES = 2 << 20
MAX_SENTENCES = 50


class ChatServer:
    """`/v1/chat/completions` on 127.0.0.1 in front of a real engine; requests arriving together are batched.

    Conversations that mention GARBLE_MARKER get a reply no parser can use, so that one document's
    generations are all malformed while the others get real model output.
    """

    def __init__(self, engine: HFChatEngine) -> None:
        self.engine = engine
        self.requests: queue.Queue[tuple[Conversation, SamplingSettings, Future[str]]] = queue.Queue()
        self.garbled = 0
        self.answered = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = server.reply(body)
                data = json.dumps(
                    {
                        "choices": [{"message": {"role": "assistant", "content": text}}],
                        "usage": {"completion_tokens": 8},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        threading.Thread(target=self._generate_loop, daemon=True).start()

    def reply(self, body: dict[str, Any]) -> str:
        """The assistant's text for one chat request."""
        conversation = body["messages"]
        if any(GARBLE_MARKER in message["content"] for message in conversation[-1:]):
            self.garbled += 1
            return "qa_list: [[ question -> ??? ]] }{ not json"
        sampling = SamplingSettings(
            max_new_tokens=int(body.get("max_tokens", 64)),
            temperature=float(body.get("temperature", 0.0)),
            seed=int(body.get("seed", 0)),
        )
        future: Future[str] = Future()
        self.requests.put((conversation, sampling, future))
        return future.result(timeout=600)

    def _generate_loop(self) -> None:
        while True:
            batch = [self.requests.get()]
            time.sleep(0.05)  # let the rest of a concurrent burst arrive
            while not self.requests.empty() and len(batch) < 16:
                batch.append(self.requests.get())
            groups: dict[tuple[int, float], list[tuple[Conversation, SamplingSettings, Future[str]]]] = {}
            for item in batch:
                groups.setdefault((item[1].max_new_tokens, item[1].temperature), []).append(item)
            for items in groups.values():
                try:
                    generations = self.engine.generate([c for c, _, _ in items], items[0][1])
                except Exception as exc:  # a failed batch must not leave its requests waiting forever
                    for _, _, future in items:
                        future.set_exception(exc)
                    continue
                for (_, _, future), generation in zip(items, generations, strict=True):
                    self.answered += 1
                    future.set_result(generation.text)

    def close(self) -> None:
        self.http.shutdown()


@pytest.fixture(scope="module")
def chat_server(embedded_model_dir: Path) -> Iterator[ChatServer]:
    """The test's OpenAI-compatible server over the embedded model (HF engine, fp32, CPU)."""
    server = ChatServer(HFChatEngine(embedded_model_dir, max_batch_size=16))
    yield server
    server.close()


def _put_corpus(bucket: str) -> list[str]:
    """Upload ten kinds of bad input and two good documents; the job's inputs."""
    import boto3

    s3 = boto3.client("s3")
    objects = {
        "docs/good-museum.txt": GOOD_S3.encode(),
        "docs/empty.txt": b"",
        "docs/blank.txt": b"  \n\t  \n ",
        "docs/binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00",
        "docs/latin1.txt": "Caf\u00e9 cr\u00e8me at the Pellworth Museum.".encode("latin-1"),
        "docs/one-line.txt": ONE_LINE,
        "docs/garbled.txt": GARBLED.encode(),
        "docs/huge.txt": HUGE,
        "batch/manifest.jsonl": "\n".join(
            json.dumps(line)
            for line in [
                {"id": "good-orvella", "text": GOOD_INLINE},
                {"id": "good-museum", "text": "A second document that claims an id already taken."},
                {"id": "../../etc/passwd", "text": "An id that tries to leave its folder."},
                {"id": "vanished", "uri": "vanished.txt"},  # no such object: the read fails
            ]
        ).encode(),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return [f"s3://{bucket}/docs/", f"s3://{bucket}/batch/manifest.jsonl"]


def test_ten_kinds_of_bad_input_each_fail_alone_and_every_good_document_is_published(
    ray_cluster: None, lift_config: LiftConfig, chat_server: ChatServer, s3_bucket: str
) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    inputs = _put_corpus(bucket)
    config = lift_config.model_copy(
        update={
            "generator": lift_config.generator.model_copy(
                update={
                    "engine": "openai",
                    "qa_per_sentence": 1,
                    "max_new_tokens": 64,
                    "max_retries": 1,
                    "require_grounded": False,  # any parsed pair counts: fewer calls, no flaky good documents
                    "answer_aware": "off",
                    "verify_answers": False,
                    "batch_size": 8,
                    "openai": lift_config.generator.openai.model_copy(
                        update={"base_url": chat_server.url, "max_concurrency": 8, "timeout_s": 600}
                    ),
                }
            ),
            "train": lift_config.train.model_copy(update={"epochs": 1, "batch_size": 2, "max_seq_len": 128}),
            "lora": lift_config.lora.model_copy(update={"rank": 4, "alpha": 8}),
            "storage": lift_config.storage.model_copy(update={"root": f"{s3_bucket}/lift", "namespace": "bad"}),
            "corpus": lift_config.corpus.model_copy(
                update={"max_document_bytes": MAX_DOCUMENT_BYTES, "max_sentences": MAX_SENTENCES}
            ),
        }
    )

    assert run_lift(config, inputs, run_id="bad") == 1  # documents failed; the job still finished

    store = Store.from_uri(config.storage.root)
    rows = read_json_lines(store, report_key("bad", REPORT_NAME))
    assert len(rows) == 12 and len({row["source"] for row in rows}) == 12

    def row(source: str) -> dict[str, Any]:
        [found] = [r for r in rows if r["source"] == source]
        return found

    docs, manifest = f"s3://{bucket}/docs", f"s3://{bucket}/batch/manifest.jsonl"
    one_line = len(split_sentences(ONE_LINE.decode(), config.sentences.max_sentence_chars))
    expected_errors = {
        f"{docs}/empty.txt": "document 'empty' is empty (0 bytes)",
        f"{docs}/blank.txt": "document 'blank' is empty or whitespace only",
        f"{docs}/binary.txt": "document 'binary' looks binary (it contains NUL bytes)",
        f"{docs}/latin1.txt": "document 'latin1' is not UTF-8 text (byte 3: invalid continuation byte)",
        f"{docs}/one-line.txt": f"document 'one-line' has {one_line:,} sentences after splitting, more than "
        f"corpus.max_sentences ({MAX_SENTENCES}); raise the limit to LIFT it",
        f"{docs}/huge.txt": f"document 'huge' is {len(HUGE):,} bytes, more than corpus.max_document_bytes "
        f"({MAX_DOCUMENT_BYTES:,}): not read; raise the limit to LIFT it",
        f"{manifest}:2": f"duplicate id, first seen at {docs}/good-museum.txt",
        f"{manifest}:3": "manifest line 3: document id '../../etc/passwd' is not allowed: use 1-128 letters, "
        "digits, '-', '_' and '.', starting with a letter or digit, with no '..' and no path separators",
        f"{manifest}:4 (s3://{bucket}/batch/vanished.txt)": f"no object at s3://{bucket}/batch/vanished.txt",
    }
    for source, error in expected_errors.items():
        assert row(source)["status"] == "failed", row(source)
        assert row(source)["error"] == error, (source, row(source)["error"])
    assert 1000 <= one_line <= 1100  # 1 MB cut into pieces of at most max_sentence_chars (1000)

    # Generation returned garbage for every sentence of this one: it fails with its counts, not a crash.
    garbled = row(f"{docs}/garbled.txt")
    assert garbled["status"] == "failed" and garbled["qa_count"] == 0
    assert garbled["error"] == f"no valid QA pairs from 2 sentences ({garbled['malformed_outputs']} malformed)"
    assert garbled["malformed_outputs"] >= 2 and chat_server.garbled >= 2
    assert read_manifest(store, "bad", "garbled") is None

    # Every good document is published, from the prefix and from the manifest's inline text.
    for source, doc_id in ((f"{docs}/good-museum.txt", "good-museum"), (f"{manifest}:1", "good-orvella")):
        good = row(source)
        assert good["doc_id"] == doc_id and good["status"] == "published", good
        published = read_manifest(store, "bad", doc_id)
        assert published is not None and published["qa_count"] == good["qa_count"] >= 1
        assert good["adapter_uri"] == published["adapter_uri"]
    assert chat_server.answered >= 2  # the good documents' pairs came from the real model

    # Nothing was written for the bad documents but the garbled one's QA cache (what its generator said).
    keys = store.list_keys("bad")
    assert {key.split("/")[1] for key in keys} <= {"good-museum", "good-orvella", "garbled"}
    assert not [key for key in keys if key.startswith("bad/garbled/") and "/qa/" not in key]
    summary = json.loads(store.read_bytes(report_key("bad", SUMMARY_NAME)))
    assert summary["counts"] == {"published": 2, "low_quality": 0, "skipped": 0, "failed": 10}
    assert summary["read_failures"] == 9  # all but the garbled document failed before the pipeline
