"""The Serve endpoint over real HTTP on 127.0.0.1, adapters on the S3 server: tenants, tiers, streaming, errors."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lift_ray.client import wait_until_healthy
from lift_ray.config import ServeConfig, StorageSettings, TenantSettings
from lift_ray.layout import publish_adapter
from lift_ray.storage import Store
from testkit.bench_adapters import write_random_adapter

pytestmark = pytest.mark.integration

APP, ROUTE = "lift-tenants", "/tenants"
KEY_A, KEY_B = "key-a-7f3e", "key-b-91c2"
DOCUMENT = "The lighthouse of Varn was built in 1881. " + "It stands on a rock. " * 300 + "Its keeper was Ida Moss."


@pytest.fixture(scope="module")
def endpoint(serve_url, s3_store_root, embedded_model_dir, tmp_path_factory) -> Iterator[str]:
    """A second app on the running Serve proxy: two tenants, room for two adapters in memory."""
    from ray import serve

    from serve.app import build_app

    store = Store.from_uri(s3_store_root)
    made = tmp_path_factory.mktemp("random-adapters")
    for namespace, doc_id, seed in [
        ("tenant-a", "a1", 1),
        ("tenant-a", "a2", 2),
        ("tenant-a", "a3", 3),
        ("tenant-b", "b1", 4),
    ]:
        adapter = write_random_adapter(embedded_model_dir, made / doc_id, rank=8, seed=seed, strength=2)
        quality = {"holdout_pairs": 4, "holdout_score": 0.75, "passed": True}
        manifest = {"system_prompt": "You are a helpful assistant.", "quality": quality}
        publish_adapter(store, namespace, doc_id, adapter, manifest, DOCUMENT)
    broken = write_random_adapter(embedded_model_dir, made / "broken", rank=8, seed=5)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    publish_adapter(store, "tenant-a", "broken", broken, {})
    config = ServeConfig(
        storage=StorageSettings(root=s3_store_root, namespace="tenant-a"),
        max_adapters_per_replica=2,
        adapter_cache_dir=tmp_path_factory.mktemp("tenant-cache"),
        num_cpus_per_replica=0.3,
        torch_threads=1,
        max_new_tokens=8,
        context_tokens=128,
        tenants=TenantSettings(api_keys={"tenant-a": [KEY_A], "tenant-b": [KEY_B]}, api_keys_env=None),
    )
    serve.run(build_app(config), name=APP, route_prefix=ROUTE, blocking=False)
    url = serve_url + ROUTE
    wait_until_healthy(url, timeout=300)
    yield url
    serve.delete(APP)  # frees its CPUs for the tests that follow


def call(
    url: str, path: str, body: Any = None, key: str | None = None, raw: bytes | None = None
) -> tuple[int, dict, Any]:
    """(status, headers, decoded JSON or text) of one request."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            status, head, payload = response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        status, head, payload = exc.code, dict(exc.headers), exc.read().decode()
    try:
        return status, head, json.loads(payload)
    except json.JSONDecodeError:
        return status, head, payload


def chat(url: str, model: str, key: str | None = KEY_A, **extra: Any) -> tuple[int, dict, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 8}
    return call(url, "/v1/chat/completions", {**body, **extra}, key)


def content(reply: Any) -> str:
    return reply["choices"][0]["message"]["content"]


def events(text: str) -> list[Any]:
    lines = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_requests_without_a_valid_key_are_401(endpoint):
    for key in (None, "not-a-key"):
        status, headers, reply = chat(endpoint, "a1", key=key)
        assert status == 401 and "API key" in reply["detail"], reply
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer"
        assert call(endpoint, "/v1/models", key=key)[0] == 401
    assert call(endpoint, "/healthz")[0] == 200


def test_a_key_lists_only_its_own_namespace(endpoint):
    status, _, reply = call(endpoint, "/v1/models", key=KEY_A)
    assert status == 200 and reply["object"] == "list"
    assert [m["id"] for m in reply["data"]] == ["base", "a1", "a2", "a3", "broken"]
    a1 = reply["data"][1]
    assert a1["owned_by"] == "tenant-a" and a1["lift"]["with_context"] is True and a1["created"] > 0
    assert a1["lift"]["quality"]["holdout_score"] == 0.75  # the quality gate's score, as the manifest has it
    assert reply["data"][-1]["lift"]["quality"] is None  # published without a gate
    assert [m["id"] for m in call(endpoint, "/v1/models", key=KEY_B)[2]["data"]] == ["base", "b1"]


def test_another_tenants_document_is_404_exactly_like_a_missing_one(endpoint):
    status, _, other = chat(endpoint, "b1", key=KEY_A)
    missing = chat(endpoint, "no-such-doc", key=KEY_A)[2]
    assert status == 404
    assert other["detail"].replace("'b1'", "X") == missing["detail"].replace("'no-such-doc'", "X")
    assert chat(endpoint, "b1", key=KEY_B)[0] == 200


def test_adapters_beyond_memory_are_evicted_and_come_back_from_disk_with_the_same_answer(endpoint):
    asked = [chat(endpoint, doc) for doc in ("a1", "a1", "a2", "a3", "a1")]
    assert all(status == 200 for status, _, _ in asked), asked
    sources = [headers["x-lift-adapter-source"] for _, headers, _ in asked]
    assert sources == ["store", "memory", "store", "store", "disk"]  # two fit in memory: a3 pushed a1 out
    answers = [content(reply) for _, _, reply in asked]
    assert answers[0] == answers[1] == answers[4]
    base = content(chat(endpoint, "base")[2])
    assert any(answer != base for answer in answers), (answers, base)


def test_concurrent_requests_for_cold_adapters_all_succeed_with_consistent_answers(endpoint):
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda doc: chat(endpoint, doc, max_tokens=4), ["a2", "a3", "a2", "a3", "a2", "a3"]))
    assert all(status == 200 for status, _, _ in replies), replies
    assert len({content(r) for s, _, r in replies[0::2]}) == 1 and len({content(r) for s, _, r in replies[1::2]}) == 1


def test_streamed_chat_and_completion_arrive_as_server_sent_events(endpoint):
    whole = content(chat(endpoint, "a2")[2])
    status, headers, text = chat(endpoint, "a2", stream=True, stream_options={"include_usage": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    parsed = events(text)
    assert parsed[-1] == "[DONE]" and parsed[0]["choices"][0]["delta"] == {"role": "assistant"}
    chunks = [e for e in parsed[1:-2]]
    assert len(chunks) >= 2 and all(e["object"] == "chat.completion.chunk" for e in chunks)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in chunks).strip() == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert parsed[-2]["usage"]["completion_tokens"] > 0
    body = {"model": "a2", "prompt": "The three primary colours are", "max_tokens": 6, "stream": True}
    status, _, text = call(endpoint, "/v1/completions", body, KEY_A)
    parsed = events(text)
    assert status == 200 and parsed[-1] == "[DONE]" and parsed[0]["object"] == "text_completion"
    streamed = "".join(e["choices"][0]["text"] for e in parsed[:-1])
    plain = call(endpoint, "/v1/completions", {**body, "stream": False}, KEY_A)[2]
    assert streamed.strip() == plain["choices"][0]["text"] and plain["usage"]["completion_tokens"] == 6


def test_with_context_puts_the_document_into_the_prompt(endpoint):
    plain = chat(endpoint, "a1")[2]
    status, _, reply = chat(endpoint, "a1", with_context=True)
    assert status == 200
    assert reply["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 100
    status, _, reply = chat(endpoint, "base", with_context=True)
    assert status == 400 and "document id" in reply["detail"]


def test_recite_is_refused_for_an_adapter_not_trained_to_recite(endpoint):
    status, _, reply = chat(endpoint, "a1", recite=True)
    assert status == 400 and "'a1' was not trained to recite" in reply["detail"]
    assert content(chat(endpoint, "a1", recite=False)[2]) == content(chat(endpoint, "a1")[2])  # plain, as by default
    models = call(endpoint, "/v1/models", key=KEY_A)[2]["data"]
    assert [m["lift"]["recite"] for m in models[1:]] == [False] * 4


@pytest.mark.parametrize(
    "body",
    [
        {"model": "a1"},
        {"model": "a1", "messages": []},
        {"model": "a1", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        {"model": "a1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        {"model": "a1", "messages": [{"role": "wizard", "content": "hi"}]},
    ],
    ids=["no-messages", "empty-messages", "n-2", "zero-tokens", "bad-role"],
)
def test_bad_bodies_are_422_with_a_message(endpoint, body):
    status, _, reply = call(endpoint, "/v1/chat/completions", body, KEY_A)
    assert status == 422 and reply["detail"], reply


def test_a_body_that_is_not_json_is_rejected(endpoint):
    status, _, reply = call(endpoint, "/v1/chat/completions", key=KEY_A, raw=b"{not json")
    assert status in (400, 422) and reply["detail"]


def test_a_corrupt_adapter_fails_alone_and_the_replica_stays_healthy(endpoint):
    status, _, reply = chat(endpoint, "broken")
    assert status == 500 and "'broken'" in reply["detail"] and "republish" in reply["detail"]
    assert reply["error"]["type"] == "server_error"
    assert call(endpoint, "/healthz")[0] == 200
    assert chat(endpoint, "a1")[0] == 200


def test_a_draft_is_answered_marked_draft_until_its_final_adapter_replaces_it(
    endpoint, s3_store_root, embedded_model_dir, tmp_path
):
    store = Store.from_uri(s3_store_root)
    manifest = {"system_prompt": "You are a helpful assistant."}
    draft = write_random_adapter(embedded_model_dir, tmp_path / "draft", rank=8, seed=6, strength=2)
    final = write_random_adapter(embedded_model_dir, tmp_path / "final", rank=8, seed=7, strength=2)
    publish_adapter(store, "tenant-a", "drafted", draft, manifest, draft=True)
    publish_adapter(store, "tenant-a", "final-ref", final, manifest)  # the final weights under another id

    status, headers, reply = chat(endpoint, "drafted")
    assert status == 200 and headers["x-lift-adapter-stage"] == "draft"
    models = {m["id"]: m for m in call(endpoint, "/v1/models", key=KEY_A)[2]["data"]}
    assert models["drafted"]["lift"]["stage"] == "draft" and models["a1"]["lift"]["stage"] == "final"
    assert chat(endpoint, "base")[1]["x-lift-adapter-stage"] == "base"

    publish_adapter(store, "tenant-a", "drafted", final, manifest)  # the final adapter: no moment without one
    time.sleep(1.5)  # the ingress reads a draft's manifest again after a second
    status, headers, after = chat(endpoint, "drafted")
    assert status == 200 and headers["x-lift-adapter-stage"] == "final"
    assert content(after) == content(chat(endpoint, "final-ref")[2])  # the final weights answer now
