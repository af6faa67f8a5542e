"""The Ray Serve deployments of the endpoint, as plain classes; `lift_ray.serving.app.build_app` wires them.

`AdapterModel` wraps `AdapterService` (engine + adapter tiers) with `serve.multiplexed` as the memory
tier; `OpenAIIngress` authenticates, checks that the document exists, routes by document and speaks the
OpenAI API (`openai_api.py`); online LIFT's routes hand over to `lift_ray.online.OnlineLift`. The HTTP
routes are declared in `ROUTES` and put on a FastAPI app by `ingress_class`, as `ray.serve.llm` does.
`GET /` and `GET /ui` answer the try-it page, `web/index.html` (package data), whose script uses only the API.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from lift_ray.config import LiftConfig, ServeConfig
from lift_ray.documents import InvalidDocumentId, validate_doc_id
from lift_ray.layout import manifest_version
from lift_ray.models import EMBEDDED_NAME
from lift_ray.online import DocumentRequest, OnlineLift, RequestRejected
from lift_ray.serving.adapters import AdapterUnusable, UnknownDocument
from lift_ray.serving.index import ManifestIndex
from lift_ray.serving.openai_api import (
    BASE_MODEL,
    ChatCompletionBody,
    CompletionBody,
    CompletionOptions,
    Kind,
    completion_reply,
    error_body,
    model_list,
    reply_id,
    stream_events,
)
from lift_ray.serving.service import AdapterService, AnswerRequest, BadRequest, NotAttached, adapter_key, split_key
from lift_ray.serving.tenants import Tenants, Unauthorized
from lift_ray.storage import Store

log = logging.getLogger(__name__)
_ATTACH_TRIES = 3
PAGE_PATHS = ("/", "/ui")


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

    async def _attach(self, key: str, version: str | None = None) -> str:
        """Bring the adapter into memory (the `version` the ingress saw, if given); which tier it came from
        ('memory', 'disk' or 'store')."""
        if self.service.serves_version(key, version):
            await self.get_adapter(key)  # marks it most recently used
            return "memory"
        # Download outside Serve's loader lock (it serialises loads): cold adapters of different documents
        # come from the store in parallel, and concurrent requests for one share a download.
        fetched = await asyncio.to_thread(self.service.fetcher.fetch, *split_key(key))
        await self.get_adapter(key)  # attaches it, unless Serve still holds this document's older version
        if self.service.attached_version(key) != manifest_version(fetched.manifest):
            await asyncio.to_thread(self.service.attach, *split_key(key), manifest_version(fetched.manifest))
        return fetched.source

    async def generate(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield {'status': 200} then chunks, or one {'status': 4xx/5xx, 'error': ...}."""
        request = AnswerRequest(**body)
        key = serve.get_multiplexed_model_id() or None
        started, source = time.perf_counter(), "base"
        try:
            for attempt in range(_ATTACH_TRIES):
                if key is not None:
                    source = await self._attach(key, request.adapter_version)
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
        stage = "base" if key is None else (self.service.attached.get(key) or {}).get("stage", "final")
        yield {"status": 200, "adapter_source": source, "adapter_load_ms": load_ms, "adapter_stage": stage}
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


def _http_error(exc: RequestRejected) -> HTTPException:
    """The HTTP answer to a rejected online LIFT request (429 says when to retry)."""
    headers = {"Retry-After": "30"} if exc.status == 429 else None
    return HTTPException(exc.status, str(exc), headers=headers)


class OpenAIIngress:
    """OpenAI-compatible HTTP front door: authenticates, checks the document exists, routes by document."""

    def __init__(self, model: DeploymentHandle, config: ServeConfig, lift_config: LiftConfig | None = None) -> None:
        self.model, self.config = model, config
        # The one place the endpoint reads the environment: API keys from the variable the config names.
        self.tenants = Tenants.from_settings(config.tenants, config.storage.namespace, os.environ)
        self.store = Store.from_uri(config.storage.root)
        self.index = ManifestIndex(self.store, ttl_s=config.index_ttl_s)
        self.base_names = {BASE_MODEL, EMBEDDED_NAME}
        self.online = (
            None if lift_config is None else OnlineLift(config.online_lift, lift_config, self.store, self.index)
        )

    def _namespace(self, request: Request) -> str:
        try:
            return self.tenants.namespace_for(request.headers.get("authorization"))
        except Unauthorized as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None

    async def _resolve(self, namespace: str, model: str) -> tuple[str | None, str | None]:
        """(None, None) for the base model, else the document id and its manifest's version; 404 unless it is
        published in `namespace`."""
        if model in self.base_names:
            return None, None
        try:
            validate_doc_id(model)
        except InvalidDocumentId as exc:  # invalid for every tenant alike: saying why leaks nothing
            raise HTTPException(404, f"the model {model!r} does not exist: {exc}") from None
        manifest = await asyncio.to_thread(self.index.lookup, namespace, model)
        if manifest is None:
            # The same answer whether the id is unknown, invalid or another tenant's: existence does not leak.
            raise HTTPException(404, f"the model {model!r} does not exist: no LIFTed document with that id")
        return model, manifest_version(manifest)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def page(self) -> HTMLResponse:
        """The try-it page; it says whether online LIFT is on, and asks for the API key before any call."""
        html = page_html().replace("__ONLINE_LIFT__", "false" if self.online is None else "true")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    async def models(self, request: Request) -> dict[str, Any]:
        namespace = self._namespace(request)
        manifests = await asyncio.to_thread(self.index.documents, namespace)
        return model_list(namespace, manifests)

    # ------------------------------------------------------------ online LIFT

    def _online(self) -> OnlineLift:
        if self.online is None:
            raise HTTPException(
                404, "online LIFT is off on this endpoint: set online_lift.enabled (and online_lift.config)"
            )
        return self.online

    async def submit_document(self, request: Request) -> JSONResponse:
        """Start LIFTing one document (202); the same text already in flight answers with its status."""
        online = self._online()
        namespace = self._namespace(request)
        try:
            body = DocumentRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise RequestValidationError(errors) from None
        try:
            record = await online.submit(namespace, body)
        except RequestRejected as exc:
            raise _http_error(exc) from None
        return JSONResponse({**record, "status_url": f"/v1/documents/{record['id']}"}, status_code=202)

    async def document_status(self, doc_id: str, request: Request) -> dict[str, Any]:
        """queued | running | published | failed, with the report's timings, qa_count and adapter_uri."""
        online = self._online()
        namespace = self._namespace(request)
        try:
            return await online.status(namespace, doc_id)
        except RequestRejected as exc:
            raise _http_error(exc) from None

    # ------------------------------------------------------------ completions

    async def chat_completions(self, body: ChatCompletionBody, request: Request) -> Any:
        messages = [m.model_dump() for m in body.messages]
        return await self._complete(body, request, messages=messages, prompt=None, kind="chat")

    async def completions(self, body: CompletionBody, request: Request) -> Any:
        return await self._complete(body, request, messages=None, prompt=body.prompt, kind="text")

    async def _complete(
        self,
        body: CompletionOptions,
        request: Request,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        kind: Kind,
    ) -> Any:
        namespace = self._namespace(request)
        doc_id, version = await self._resolve(namespace, body.model)
        answer = AnswerRequest(
            namespace=namespace,
            doc_id=doc_id,
            messages=messages,
            prompt=prompt,
            max_new_tokens=body.max_tokens or self.config.max_new_tokens,
            temperature=body.temperature or 0.0,
            seed=body.seed,
            with_context=body.with_context,
            adapter_version=version,
            recite=body.recite,
        )
        model_id = adapter_key(namespace, doc_id) if doc_id is not None else ""
        handle = self.model.options(multiplexed_model_id=model_id, stream=True)
        replies = handle.generate.remote(answer.__dict__)
        status = await replies.__anext__()
        if status["status"] != 200:
            raise HTTPException(status["status"], status["error"])
        reply = reply_id(kind)
        # Where the adapter came from and how long bringing it into memory took (0 for 'memory' hits).
        headers = {
            "X-Lift-Adapter-Source": status["adapter_source"],
            "X-Lift-Adapter-Ms": str(status["adapter_load_ms"]),
            "X-Lift-Adapter-Stage": status["adapter_stage"],  # draft | final | base
        }
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events = stream_events(replies, reply, body.model, kind, usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(await completion_reply(replies, reply, body.model, kind), headers=headers)


@functools.cache
def page_html() -> str:
    """The try-it page's HTML, shipped as package data (`lift_ray/serving/web/index.html`)."""
    return (resources.files("lift_ray.serving") / "web" / "index.html").read_text(encoding="utf-8")


def _page_route(app: FastAPI) -> Callable[[Any], Any]:
    """The page's decorator: a GET at each of `PAGE_PATHS`, HTML, left out of the OpenAPI schema."""

    def route(method: Any) -> Any:
        for path in PAGE_PATHS:
            app.get(path, response_class=HTMLResponse, include_in_schema=False)(method)
        return method

    return route


# The ingress's HTTP routes: method name -> the FastAPI route decorator it gets.
ROUTES: dict[str, Callable[[FastAPI], Callable[[Any], Any]]] = {
    "healthz": lambda app: app.get("/healthz"),
    "page": _page_route,
    "models": lambda app: app.get("/v1/models"),
    "submit_document": lambda app: app.post("/v1/documents", response_model=None),
    "document_status": lambda app: app.get("/v1/documents/{doc_id}"),
    "chat_completions": lambda app: app.post("/v1/chat/completions", response_model=None),
    "completions": lambda app: app.post("/v1/completions", response_model=None),
}


async def _openai_error(request: Request, exc: HTTPException) -> JSONResponse:
    """HTTPExceptions answered with `openai_api.error_body`."""
    return JSONResponse(error_body(exc.status_code, exc.detail), status_code=exc.status_code, headers=exc.headers)


@functools.cache
def ingress_class() -> type:
    """`OpenAIIngress` with its `ROUTES` on a FastAPI app, wrapped by `serve.ingress` (made once per process)."""
    api = FastAPI(title="lift-ray", description="Ask questions of LIFTed documents: model = document id")
    api.add_exception_handler(HTTPException, _openai_error)
    routed = {name: route(api)(getattr(OpenAIIngress, name)) for name, route in ROUTES.items()}
    cls = type(OpenAIIngress.__name__, (OpenAIIngress,), routed)
    cls.__qualname__ = OpenAIIngress.__qualname__
    return serve.ingress(api)(cls)
