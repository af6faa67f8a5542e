"""Online LIFT over real HTTP: POST a document, watch it LIFT on the session's Ray, ask it at once.

A separate Serve app (route /online) with two tenants and online LIFT on, a tiny LIFT config (1 QA pair per
sentence, one epoch, one trainer worker, rank 4) so one document takes a minute or two on 2 CPUs, the
adapters and status records on the S3 server on loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from lift_ray.client import wait_until_healthy
from lift_ray.config import OnlineLiftSettings, ServeConfig, StorageSettings, TenantSettings
from lift_ray.storage import Store

from .conftest import TINY_GENERATOR, TINY_LORA, TINY_TRAIN
from .test_serve import call as call_with_headers

pytestmark = pytest.mark.integration

APP, ROUTE = "lift-online", "/online"
KEY_A, KEY_B = "online-key-a-5d1", "online-key-b-8e4"
NAMESPACE_A = "online-a"
DOCUMENT = "The Quell bridge over the river Sarn opened in 1903. Its engineer was Mara Lind of Tovik."
SECOND = "The Orrin mill at Tovik ground salt until 1921."
PUBLISH_TIMEOUT_S = 600
# Fractional CPUs: the session app (0.3 + 0.1) and this one (0.3 + 0.1) leave 1.2 of 2 CPUs, and the run
# holds a generator actor (0.4), one trainer worker (0.4) and short splitting tasks (0.25) at once.
LIFT_CONFIG: dict[str, Any] = {
    "generator": {**TINY_GENERATOR, "engine": "hf", "batch_size": 2, "num_cpus": 0.4},
    "train": {**TINY_TRAIN, "num_workers": 1, "cpus_per_worker": 0.4},
    "lora": TINY_LORA,
}


@pytest.fixture(scope="module")
def endpoint(serve_url, s3_store_root, embedded_model_dir, tmp_path_factory) -> Iterator[str]:
    """A second app on the running Serve proxy: two tenants, online LIFT on, two documents at a time."""
    from ray import serve

    from serve.app import build_app

    folder = tmp_path_factory.mktemp("online-lift")
    lift_yaml = folder / "lift.yaml"
    lift_yaml.write_text(yaml.safe_dump({**LIFT_CONFIG, "work_dir": str(folder / "work")}))
    config = ServeConfig(
        storage=StorageSettings(root=s3_store_root, namespace=NAMESPACE_A),
        adapter_cache_dir=folder / "adapter-cache",
        num_cpus_per_replica=0.3,
        torch_threads=1,
        max_new_tokens=8,
        index_ttl_s=3600,  # /v1/models lists once: a fresh document shows up only because the ingress adds it
        tenants=TenantSettings(api_keys={NAMESPACE_A: [KEY_A], "online-b": [KEY_B]}, api_keys_env=None),
        online_lift=OnlineLiftSettings(
            enabled=True,
            config=lift_yaml,
            max_in_flight=2,
            batch_window_s=5,  # the test's posts all land in the first document's batch
            max_document_bytes=4096,
            uri_prefixes=[f"{s3_store_root}/inbox/"],
        ),
    )
    serve.run(build_app(config), name=APP, route_prefix=ROUTE, blocking=False)
    url = serve_url + ROUTE
    wait_until_healthy(url, timeout=300)
    yield url
    serve.delete(APP)  # frees its CPUs for the tests that follow


def call(url: str, path: str, body: Any = None, key: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON or text) of one request: POST when there is a body, else GET."""
    status, _, payload = call_with_headers(url, path, body, key, raw)
    return status, payload


def chat(url: str, model: str, key: str = KEY_A) -> tuple[int, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "Who was the bridge's engineer?"}]}
    return call(url, "/v1/chat/completions", body, key)


def wait_final(url: str, doc_id: str, key: str = KEY_A, while_waiting: Any = None) -> dict[str, Any]:
    """Poll GET /v1/documents/{id} until it is published or failed; every status seen must be a known one."""
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while time.monotonic() < deadline:
        if while_waiting is not None:
            while_waiting()
        status, record = call(url, f"/v1/documents/{doc_id}", key=key)
        assert status == 200 and record["status"] in ("queued", "running", "published", "failed"), record
        if record["status"] in ("published", "failed"):
            return record
        time.sleep(2)
    raise AssertionError(f"{doc_id} was not LIFTed in {PUBLISH_TIMEOUT_S} s: {record}")


def wait_report(url: str, doc_id: str) -> dict[str, Any]:
    """Poll until the record carries its run's report (`report_status`): a batch's documents publish first."""
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while time.monotonic() < deadline:
        status, record = call(url, f"/v1/documents/{doc_id}", key=KEY_A)
        assert status == 200 and record["status"] in ("published", "failed"), record
        if record["report_status"] is not None:
            return record
        time.sleep(2)
    raise AssertionError(f"{doc_id}'s run did not end in {PUBLISH_TIMEOUT_S} s: {record}")


def test_an_endpoint_without_online_lift_says_it_is_off(serve_url):
    status, reply = call(serve_url, "/v1/documents", {"text": DOCUMENT})
    assert status == 404 and "online LIFT is off" in reply["detail"]


def test_requests_are_checked_before_anything_runs(endpoint):
    assert call(endpoint, "/v1/documents", {"text": DOCUMENT})[0] == 401
    assert call(endpoint, "/v1/documents", {"text": DOCUMENT}, key="not-a-key")[0] == 401
    status, reply = call(endpoint, "/v1/documents", {"text": DOCUMENT, "uri": "s3://b/k.txt"}, KEY_A)
    assert status == 422 and "exactly one of 'text'" in json.dumps(reply["detail"]), reply
    status, reply = call(endpoint, "/v1/documents", {"id": "../escape", "text": DOCUMENT}, KEY_A)
    assert status == 422 and "is not allowed" in json.dumps(reply["detail"]), reply
    assert call(endpoint, "/v1/documents", key=KEY_A, raw=b"{not json")[0] == 422
    status, reply = call(endpoint, "/v1/documents", {"text": "word " * 1000}, KEY_A)
    assert status == 413 and "max_document_bytes" in reply["detail"], reply
    status, reply = call(endpoint, "/v1/documents", {"uri": "s3://elsewhere/secret.txt"}, KEY_A)
    assert status == 403 and "outside" in reply["detail"], reply
    status, reply = call(endpoint, "/v1/documents/never-posted", key=KEY_A)
    assert status == 404 and "nothing was submitted" in reply["detail"], reply


def test_a_posted_document_is_lifted_published_and_answerable_at_once(endpoint):
    status, models = call(endpoint, "/v1/models", key=KEY_A)  # listed now, not again for an hour
    assert status == 200 and [model["id"] for model in models["data"]] == ["base"]
    status, queued = call(endpoint, "/v1/documents", {"id": "quell", "text": DOCUMENT}, KEY_A)
    assert status == 202 and queued["id"] == "quell" and queued["status"] == "queued", queued
    assert queued["status_url"] == "/v1/documents/quell"
    # The same text again: the run in flight, not a second one. Other text under that id: 409.
    status, again = call(endpoint, "/v1/documents", {"id": "quell", "text": DOCUMENT}, KEY_A)
    assert status == 202 and again["run_id"] == queued["run_id"] and again["status"] in ("queued", "running")
    status, reply = call(endpoint, "/v1/documents", {"id": "quell", "text": DOCUMENT + " It is red."}, KEY_A)
    assert status == 409 and "different text" in reply["detail"], reply
    # Posted within the window: the same batch, so one run (one trainer and generator start-up) for both.
    status, second = call(endpoint, "/v1/documents", {"id": "orrin", "text": SECOND}, KEY_A)
    assert status == 202 and second["batch_id"] == queued["batch_id"] and second["run_id"] != queued["run_id"]
    # Two documents at a time on this endpoint (max_in_flight=2).
    status, reply = call(endpoint, "/v1/documents", {"id": "other", "text": "Another text. Two sentences."}, KEY_A)
    assert status == 429 and "max_in_flight" in reply["detail"], reply
    # Another tenant cannot see it: the same 404 as for an id nobody posted.
    status, hidden = call(endpoint, "/v1/documents/quell", key=KEY_B)
    missing = call(endpoint, "/v1/documents/nobody", key=KEY_B)[1]
    assert status == 404 and hidden["detail"].replace("'quell'", "X") == missing["detail"].replace("'nobody'", "X")

    # Asking while it LIFTs is a 404 that the index remembers as a miss; publishing must not stay hidden by it.
    # Each document of the batch reads published as soon as its own adapter is; the report comes at the end.
    first = wait_final(endpoint, "quell", while_waiting=lambda: chat(endpoint, "quell"))
    assert first["status"] == "published" and first["error"] is None and first["qa_count"] >= 1, first
    assert first["adapter_uri"].endswith(f"{NAMESPACE_A}/quell/adapter")
    assert chat(endpoint, "quell")[0] == 200
    final, other = wait_report(endpoint, "quell"), wait_report(endpoint, "orrin")
    assert final["report_status"] == "published" and final["finished_at"] == first["finished_at"], final
    assert {"generate_s", "train_s", "publish_s", "ttft_s"} <= set(final["timings"]), final["timings"]
    assert final["timings"]["model_load_s"] == 0.0  # on the warm worker: its models were loaded before
    assert other["status"] == "published" and other["adapter_uri"].endswith(f"{NAMESPACE_A}/orrin/adapter"), other
    assert final["batch_size"] == other["batch_size"] == 2 and final["started_at"] == other["started_at"]
    status, reply = chat(endpoint, "quell")
    assert status == 200 and reply["choices"][0]["message"]["content"], reply
    assert chat(endpoint, "orrin")[0] == 200
    status, models = call(endpoint, "/v1/models", key=KEY_A)
    assert status == 200 and {"quell", "orrin"} <= {model["id"] for model in models["data"]}
    assert "quell" not in [model["id"] for model in call(endpoint, "/v1/models", key=KEY_B)[1]["data"]]
    assert chat(endpoint, "quell", key=KEY_B)[0] == 404


def test_a_uri_document_takes_its_file_name_and_is_skipped_when_already_published(endpoint, s3_store_root):
    # Runs after the test above: the same text under the same id is already published with this config.
    Store.from_uri(s3_store_root).write_text("inbox/quell.txt", DOCUMENT)
    status, queued = call(endpoint, "/v1/documents", {"uri": f"{s3_store_root}/inbox/quell.txt"}, KEY_A)
    assert status == 202 and queued["id"] == "quell" and queued["source"].endswith("inbox/quell.txt"), queued
    final = wait_final(endpoint, "quell")
    assert final["status"] == "published" and final["report_status"] == "skipped", final
    assert final["run_id"] == queued["run_id"] and final["qa_count"] >= 1 and final["batch_size"] == 1
