"""Ray Serve application: an OpenAI-compatible ingress in front of replicas that multiplex per-document adapters.

`build_app(config)` returns the application. `serve run serve/config.yaml` (or `serve deploy`) uses
`app_builder`, which takes the path of a ServeConfig YAML file as the `config` argument.

The deployments are thin: `AdapterModel` wraps `lift_ray.serving.AdapterService` (engine + adapter tiers),
`OpenAIIngress` holds the tenants and the manifest index and speaks HTTP. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import ray
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from lift_ray.config import LiftConfig, ServeConfig, TenantSettings, load_config
from lift_ray.documents import Document, InvalidDocumentId, validate_doc_id
from lift_ray.layout import read_manifest
from lift_ray.models import EMBEDDED_NAME
from lift_ray.serving import (
    AdapterService,
    AdapterUnusable,
    AnswerRequest,
    BadRequest,
    ManifestIndex,
    NotAttached,
    Tenants,
    Unauthorized,
    UnknownDocument,
    adapter_key,
    online,
    split_key,
)
from lift_ray.storage import Store

BASE_MODEL = "base"
log = logging.getLogger(__name__)
_ATTACH_TRIES = 3


# ---------------------------------------------------------------- request bodies


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class _CompletionBody(BaseModel):
    # OpenAI clients send fields we do not use (top_p, response_format, user, ...): ignore them.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description=f"a document id, or '{BASE_MODEL}' for the base model")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(0.0, ge=0, le=2, description="0 (the default here) decodes greedily")
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    with_context: bool = Field(False, description="put the head and tail of the document in the prompt (LIFT+ICL)")


class ChatCompletionBody(_CompletionBody):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionBody(_CompletionBody):
    prompt: str


# ---------------------------------------------------------------- the model replicas


class _AttachedAdapter:
    """What `serve.multiplexed` keeps per document; Serve calls `__del__` when it evicts it (and Python
    may call it again at collection), so the release runs once."""

    def __init__(self, service: AdapterService, key: str) -> None:
        self.service, self.key, self.released = service, key, False

    def __del__(self) -> None:
        if not self.released:
            self.released = True
            self.service.detach(*split_key(self.key))


def _next_chunk(chunks: Iterator[Any]) -> Any:
    return next(chunks, None)


@serve.deployment
class AdapterModel:
    """One base model per replica; adapters multiplexed by '<namespace>/<doc_id>' (memory tier)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.service = AdapterService(config, manage_memory=False)
        service = self.service

        async def attach(model_id: str) -> _AttachedAdapter:
            await asyncio.to_thread(service.attach, *split_key(model_id))
            return _AttachedAdapter(service, model_id)

        # Wired at init so the LRU size comes from the config (Serve supports this form).
        self.get_adapter = serve.multiplexed(max_num_models_per_replica=config.max_adapters_per_replica)(attach)

    async def _attach(self, key: str) -> str:
        """Bring the adapter into memory; which tier it came from ('memory', 'disk' or 'store')."""
        if key in self.service.attached:
            await self.get_adapter(key)  # marks it most recently used
            return "memory"
        # Download outside Serve's loader lock (it serialises loads): cold adapters of different documents
        # come from the store in parallel, and concurrent requests for one share a download.
        fetched = await asyncio.to_thread(self.service.fetcher.fetch, *split_key(key))
        await self.get_adapter(key)
        return fetched.source

    async def generate(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield {'status': 200} then chunks, or one {'status': 4xx/5xx, 'error': ...}."""
        request = AnswerRequest(**body)
        key = serve.get_multiplexed_model_id() or None
        started, source = time.perf_counter(), "base"
        try:
            for attempt in range(_ATTACH_TRIES):
                if key is not None:
                    source = await self._attach(key)
                load_ms = round((time.perf_counter() - started) * 1000, 1)
                chunks = self.service.stream(request)
                try:
                    first = await asyncio.to_thread(_next_chunk, chunks)
                    break
                except NotAttached:
                    if attempt + 1 == _ATTACH_TRIES:
                        raise
        except UnknownDocument as exc:
            yield {"status": 404, "error": str(exc), "type": "not_found"}
            return
        except BadRequest as exc:
            yield {"status": 400, "error": str(exc), "type": "invalid_request"}
            return
        except AdapterUnusable as exc:
            yield {"status": 500, "error": str(exc), "type": "adapter_unusable"}
            return
        yield {"status": 200, "adapter_source": source, "adapter_load_ms": load_ms}
        chunk = first
        while chunk is not None:
            yield {
                "text": chunk.text,
                "prompt_tokens": chunk.prompt_tokens,
                "completion_tokens": chunk.completion_tokens,
                "finish_reason": chunk.finish_reason,
            }
            chunk = await asyncio.to_thread(_next_chunk, chunks)

    async def check_health(self) -> None:
        """Serve's health check: the replica is healthy while its engine object exists (bad adapters do not count)."""
        if self.service.engine is None:
            raise RuntimeError("no engine")


# ---------------------------------------------------------------- the ingress

api = FastAPI(title="lift-ray", description="Ask questions of LIFTed documents: model = document id")


@api.exception_handler(HTTPException)
async def _openai_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Errors as {'detail': message, 'error': {...}}: our client reads the first, OpenAI SDKs the second."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }
    body = {
        "detail": exc.detail,
        "error": {"message": exc.detail, "type": kinds.get(exc.status_code, "server_error"), "code": exc.status_code},
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# Helpers live above the ingress: Serve captures the FastAPI app's globals when the class is decorated.
def _usage(last: dict[str, Any] | None) -> dict[str, int]:
    prompt, completion = (last["prompt_tokens"], last["completion_tokens"]) if last else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _timestamp(iso: str | None) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0


# Online LIFT's Ray task: the driver part of one document's LIFT holds no CPU (its stages reserve their own).
# No retries: a task that dies is recorded as failed by the ingress, and posting the document again reruns it.
_online_lift_task = ray.remote(num_cpus=0, max_retries=0)(online.run_online_lift)


@serve.deployment
@serve.ingress(api)
class OpenAIIngress:
    """OpenAI-compatible HTTP front door: authenticates, checks the document exists, routes by document."""

    def __init__(self, model: DeploymentHandle, config: ServeConfig, lift_config: LiftConfig | None = None) -> None:
        self.model, self.config, self.lift_config = model, config, lift_config
        # The one place the endpoint reads the environment: API keys from the variable the config names.
        self.tenants = Tenants.from_settings(config.tenants, config.storage.namespace, os.environ)
        self.store = Store.from_uri(config.storage.root)
        self.index = ManifestIndex(self.store, ttl_s=config.index_ttl_s)
        self.base_names = {BASE_MODEL, EMBEDDED_NAME}
        # Online LIFT documents of this replica: (namespace, doc_id) -> (record, its batch's task).
        self.runs: dict[tuple[str, str], tuple[dict[str, Any], asyncio.Task]] = {}
        settings = config.online_lift
        self.batcher = online.Batcher(
            settings.batch_window_s,
            settings.max_batch_documents,
            settings.max_running_batches,
            run=self._run_batch,
            beat=self._beat_queued,
        )

    def _namespace(self, request: Request) -> str:
        try:
            return self.tenants.namespace_for(request.headers.get("authorization"))
        except Unauthorized as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None

    async def _resolve(self, namespace: str, model: str) -> str | None:
        """None for the base model, else the document id; 404 unless it is published in `namespace`."""
        if model in self.base_names:
            return None
        try:
            validate_doc_id(model)
        except InvalidDocumentId as exc:  # invalid for every tenant alike: saying why leaks nothing
            raise HTTPException(404, f"the model {model!r} does not exist: {exc}") from None
        if await asyncio.to_thread(self.index.lookup, namespace, model) is None:
            # The same answer whether the id is unknown, invalid or another tenant's: existence does not leak.
            raise HTTPException(404, f"the model {model!r} does not exist: no LIFTed document with that id")
        return model

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        namespace = self._namespace(request)
        manifests = await asyncio.to_thread(self.index.documents, namespace)
        data = [{"id": BASE_MODEL, "object": "model", "created": 0, "owned_by": "lift-ray"}]
        for manifest in manifests:
            data.append(
                {
                    "id": manifest["doc_id"],
                    "object": "model",
                    "created": _timestamp(manifest.get("published_at")),
                    "owned_by": namespace,
                    "lift": {
                        key: manifest.get(key)
                        for key in ("qa_count", "adapter_bytes", "variant", "base_model", "final_loss")
                    }
                    | {"rank": (manifest.get("lora") or {}).get("rank"), "with_context": "document_text" in manifest}
                    | {"quality": manifest.get("quality")},
                }
            )
        return {"object": "list", "data": data}

    # ------------------------------------------------------------ online LIFT

    def _online_on(self) -> None:
        if self.lift_config is None:
            raise HTTPException(
                404, "online LIFT is off on this endpoint: set online_lift.enabled (and online_lift.config)"
            )

    @api.post("/v1/documents", response_model=None)
    async def submit_document(self, request: Request) -> JSONResponse:
        """Start LIFTing one document (202); the same text already in flight answers with its status."""
        self._online_on()
        namespace = self._namespace(request)
        try:
            body = online.DocumentRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise RequestValidationError(errors) from None
        settings = self.config.online_lift
        try:
            document = await asyncio.to_thread(
                online.load_document, body, settings.max_document_bytes, settings.uri_prefixes
            )
            async with self.batcher.lock:
                record = await self._admit(namespace, document, source=body.uri or "text")
        except online.RequestRejected as exc:
            headers = {"Retry-After": "30"} if exc.status == 429 else None
            raise HTTPException(exc.status, str(exc), headers=headers) from None
        return JSONResponse({**record, "status_url": f"/v1/documents/{document.doc_id}"}, status_code=202)

    async def _admit(self, namespace: str, document: Document, source: str) -> dict[str, Any]:
        """The in-flight record for this text, or a new queued record in the namespace's open batch (409 / 429)."""
        key = (namespace, document.doc_id)
        existing = await asyncio.to_thread(online.read_status, self.store, namespace, document.doc_id)
        mine = self.runs.get(key)
        if mine is not None and (existing is None or existing.get("run_id") != mine[0]["run_id"]):
            existing = mine[0]
        answer = online.admit(existing, document)
        if answer is not None:
            return answer
        in_flight = sum(not watcher.done() for _, watcher in self.runs.values())
        limit = self.config.online_lift.max_in_flight
        if in_flight >= limit:
            raise online.RequestRejected(
                429,
                f"{in_flight} documents are queued or LIFTing on this endpoint already "
                f"(online_lift.max_in_flight={limit})"
                "; try again later",
            )
        lift_config = self.lift_config
        batch = self.batcher.open_batch(namespace, lambda: online.for_namespace(lift_config, namespace))
        record = online.new_record(document, namespace, batch.config.adapter_hash(), source, batch.batch_id)
        await asyncio.to_thread(online.write_status, self.store, record)
        self.index.forget_miss(namespace, document.doc_id)
        self.runs[key] = (record, self.batcher.added(batch, record, document))
        return record

    async def _beat_queued(self, batch: online.OnlineBatch) -> None:
        """A batch waiting for its turn: its documents' queued records are alive."""
        for record in batch.records:
            try:
                await asyncio.to_thread(online.write_status, self.store, online.with_heartbeat(record))
            except Exception:  # a missed beat is not worth more than a log line
                log.warning("online LIFT %s: queued heartbeat not written", record["id"], exc_info=True)

    async def _run_batch(self, batch: online.OnlineBatch) -> None:
        """LIFT a closed batch in one Ray task, then make the adapters it published visible here."""
        namespace = batch.namespace
        try:
            try:
                finals = await _online_lift_task.remote(batch.records, batch.documents, batch.config)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                finals = [await asyncio.to_thread(online.mark_crashed, self.store, r, error) for r in batch.records]
            for final in finals:
                if final["status"] == "published":
                    manifest = await asyncio.to_thread(read_manifest, self.store, namespace, final["id"])
                    if manifest is not None:
                        self.index.remember(namespace, manifest)
        except Exception:  # never let a batch task die loudly: the records in the store are the truth
            log.exception("online LIFT batch %s: watcher failed", batch.batch_id)
        finally:
            for record in batch.records:
                key = (namespace, record["id"])
                if self.runs.get(key, ({"run_id": None},))[0]["run_id"] == record["run_id"]:
                    del self.runs[key]

    @api.get("/v1/documents/{doc_id}")
    async def document_status(self, doc_id: str, request: Request) -> dict[str, Any]:
        """queued | running | published | failed, with the report's timings, qa_count and adapter_uri."""
        self._online_on()
        namespace = self._namespace(request)
        try:
            validate_doc_id(doc_id)
        except InvalidDocumentId as exc:
            raise HTTPException(404, f"no document {doc_id!r}: {exc}") from None
        status = await asyncio.to_thread(online.document_status, self.store, namespace, doc_id)
        if status is None:
            # The same answer for an unknown id and another tenant's: existence does not leak.
            raise HTTPException(404, f"no document {doc_id!r}: nothing was submitted or published under that id")
        if status["status"] == "published":
            # Published by another replica's run, maybe: make sure a remembered miss does not hide it here.
            self.index.forget_miss(namespace, doc_id)
            await asyncio.to_thread(self.index.lookup, namespace, doc_id)
        return status

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, body: ChatCompletionBody, request: Request) -> Any:
        messages = [m.model_dump() for m in body.messages]
        return await self._complete(body, request, messages=messages, prompt=None, kind="chat")

    @api.post("/v1/completions", response_model=None)
    async def completions(self, body: CompletionBody, request: Request) -> Any:
        return await self._complete(body, request, messages=None, prompt=body.prompt, kind="text")

    async def _complete(
        self,
        body: _CompletionBody,
        request: Request,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        kind: Literal["chat", "text"],
    ) -> Any:
        namespace = self._namespace(request)
        doc_id = await self._resolve(namespace, body.model)
        answer = AnswerRequest(
            namespace=namespace,
            doc_id=doc_id,
            messages=messages,
            prompt=prompt,
            max_new_tokens=body.max_tokens or self.config.max_new_tokens,
            temperature=body.temperature or 0.0,
            seed=body.seed,
            with_context=body.with_context,
        )
        model_id = adapter_key(namespace, doc_id) if doc_id is not None else ""
        handle = self.model.options(multiplexed_model_id=model_id, stream=True)
        replies = handle.generate.remote(answer.__dict__)
        status = await replies.__anext__()
        if status["status"] != 200:
            raise HTTPException(status["status"], status["error"])
        reply_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        # Where the adapter came from and how long bringing it into memory took (0 for 'memory' hits).
        headers = {
            "X-Lift-Adapter-Source": status["adapter_source"],
            "X-Lift-Adapter-Ms": str(status["adapter_load_ms"]),
        }
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._events(replies, reply_id, body.model, kind, usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        text, last = [], None
        async for chunk in replies:
            text.append(chunk["text"])
            last = chunk
        content = "".join(text).strip()
        choice: dict[str, Any] = {"index": 0, "finish_reason": last["finish_reason"] if last else "stop"}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        reply = {
            "id": reply_id,
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [choice],
            "usage": _usage(last),
        }
        return JSONResponse(reply, headers=headers)

    async def _events(
        self, replies: Any, reply_id: str, model: str, kind: Literal["chat", "text"], include_usage: bool
    ) -> AsyncIterator[bytes]:
        """OpenAI's server-sent events: one `data:` line per chunk, then `data: [DONE]`."""
        created = int(time.time())
        envelope = {
            "id": reply_id,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": model,
        }
        if kind == "chat":
            yield _sse({**envelope, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        last = None
        async for chunk in replies:
            last = chunk
            if not chunk["text"] and chunk["finish_reason"] is None:
                continue
            if kind == "chat":
                delta = {"content": chunk["text"]} if chunk["text"] else {}
                choice = {"index": 0, "delta": delta, "finish_reason": chunk["finish_reason"]}
            else:
                choice = {"index": 0, "text": chunk["text"], "finish_reason": chunk["finish_reason"]}
            yield _sse({**envelope, "choices": [choice]})
        if include_usage:
            yield _sse({**envelope, "choices": [], "usage": _usage(last)})
        yield _sse("[DONE]")


# ---------------------------------------------------------------- building the application


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """Serve options of the adapter deployment: replica resources and fixed replicas or autoscaling."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus_per_replica, "num_gpus": config.num_gpus_per_replica},
        "max_ongoing_requests": config.max_ongoing_requests,
    }
    if config.engine == "vllm" and config.num_gpus_per_replica == 0:
        # vLLM on CPU reads its variables at import; Ray would also give a fractional-CPU replica one OpenMP thread.
        from lift_ray.synth.engines import vllm_cpu_environment

        env = {k: v for k, v in vllm_cpu_environment(config.vllm).items() if k != "LD_PRELOAD"}
        env["OMP_NUM_THREADS"] = str(config.torch_threads)
        options["ray_actor_options"]["runtime_env"] = {"env_vars": env}
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return options


def build_app(config: ServeConfig) -> serve.Application:
    """The Serve application for `config`: ingress → multiplexed adapter model."""
    # The model replicas never see API keys; only the ingress does (as an object, not a logged dict).
    model_config = config.model_copy(update={"tenants": TenantSettings(api_keys={}, api_keys_env=None)})
    model = AdapterModel.options(**deployment_options(config)).bind(model_config)
    ingress = OpenAIIngress.options(
        ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=max(100, 4 * config.max_ongoing_requests)
    )
    # Built here, so a LIFT config that does not fit the served model fails `serve run` at once, with the reason.
    lift_config = online.lift_config_for(config) if config.online_lift.enabled else None
    return ingress.bind(model, config, lift_config)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for `serve run serve/config.yaml` / `serve deploy`: args.config is a ServeConfig YAML path."""
    return build_app(load_config(ServeConfig, args.get("config")))
