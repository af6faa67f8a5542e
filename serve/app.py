"""Ray Serve application: an OpenAI-compatible ingress in front of multiplexed per-document adapters.

`build_app(config)` returns the application. `serve run serve.app:app_builder config=<file>` (or serve/config.yaml)
use `app_builder`, which takes the path of a ServeConfig YAML file as the `config` argument.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from lift_ray.config import ServeConfig, load_config
from lift_ray.documents import InvalidDocumentId, validate_doc_id
from lift_ray.models import EMBEDDED_NAME

BASE_MODEL_NAMES = {"base", EMBEDDED_NAME}


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    model: str = Field(description="a document id, or 'base' for the base model without an adapter")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float = Field(0.0, ge=0, le=2)


class LoadedAdapter:
    """Handle to an adapter attached to the replica's model; Serve calls __del__ when it evicts it."""

    def __init__(self, chat_model: Any, doc_id: str) -> None:
        self.chat_model, self.doc_id = chat_model, doc_id

    def __del__(self) -> None:
        self.chat_model.unload_adapter(self.doc_id)


@serve.deployment
class AdapterModel:
    """One base model per replica; adapters multiplexed by document id."""

    def __init__(self, config: dict[str, Any]) -> None:
        from lift_ray.serving import AdapterChatModel

        self.config = ServeConfig.model_validate(config)
        self.chat_model = AdapterChatModel(self.config)
        chat_model = self.chat_model

        async def load_adapter(doc_id: str) -> LoadedAdapter:
            await asyncio.to_thread(chat_model.load_adapter, doc_id)
            return LoadedAdapter(chat_model, doc_id)

        # Wired at init so the LRU size comes from the config (Serve supports this form).
        self.get_adapter = serve.multiplexed(max_num_models_per_replica=self.config.max_adapters_per_replica)(
            load_adapter
        )

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """Generate one answer; errors come back as {'error': ..., 'status': ...} for the ingress to map."""
        from lift_ray.serving import UnknownDocument

        doc_id = serve.get_multiplexed_model_id() or None
        try:
            if doc_id is not None:
                await self.get_adapter(doc_id)
            answer = await asyncio.to_thread(
                self.chat_model.chat,
                request["messages"],
                doc_id,
                request.get("max_tokens") or self.config.max_new_tokens,
                request.get("temperature", 0.0),
            )
        except UnknownDocument as exc:
            return {"error": str(exc), "status": 404}
        return {
            "text": answer.text,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        }


api = FastAPI(title="lift-ray", description="Ask questions of LIFTed documents: model = document id")


@serve.deployment
@serve.ingress(api)
class OpenAIIngress:
    """OpenAI-compatible HTTP front door; routes each request to a replica by document id."""

    def __init__(self, model: DeploymentHandle) -> None:
        self.model = model

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatCompletionRequest) -> dict[str, Any]:
        doc_id = None if request.model in BASE_MODEL_NAMES else request.model
        if doc_id is not None:
            try:
                validate_doc_id(doc_id)
            except InvalidDocumentId as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from None
        handle = self.model.options(multiplexed_model_id=doc_id or "")
        result = await handle.chat.remote(request.model_dump())
        if "error" in result:
            raise HTTPException(status_code=result["status"], detail=result["error"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result["text"]}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": result["prompt_tokens"],
                "completion_tokens": result["completion_tokens"],
                "total_tokens": result["prompt_tokens"] + result["completion_tokens"],
            },
        }


def build_app(config: ServeConfig) -> serve.Application:
    """The Serve application for `config`: ingress → multiplexed adapter model."""
    model = AdapterModel.options(
        num_replicas=config.num_replicas,
        ray_actor_options={"num_cpus": config.num_cpus_per_replica, "num_gpus": config.num_gpus_per_replica},
    )
    model = model.bind(config.model_dump(mode="json"))
    return OpenAIIngress.options(ray_actor_options={"num_cpus": 0.1}).bind(model)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for `serve run serve.app:app_builder config=path.yaml`."""
    return build_app(load_config(ServeConfig, args.get("config")))
