"""The OpenAI-compatible surface of the endpoint: request bodies, replies, errors, server-sent events.

Plain code, no Ray and no web framework: the ingress (`deployments.py`) parses bodies with these models,
and builds its replies, streams and error bodies with these functions from the chunks the model replicas
yield (`{'text', 'prompt_tokens', 'completion_tokens', 'finish_reason'}`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

BASE_MODEL = "base"
Kind = Literal["chat", "text"]
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
MODEL_FIELDS = ("qa_count", "adapter_bytes", "variant", "base_model", "final_loss")


# ---------------------------------------------------------------- request bodies


class ChatMessage(BaseModel):
    """One message of a chat request."""

    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    """`stream_options`: whether a stream ends with a usage chunk."""

    include_usage: bool = False


class CompletionOptions(BaseModel):
    """What chat and text completion bodies share."""

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
    recite: bool | None = Field(
        None,
        description="answer by reciting the document's sentence first (adapters trained to: `lift.recite` in "
        "/v1/models); None: the endpoint's default (`recite`)",
    )


class ChatCompletionBody(CompletionOptions):
    """The body of `POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionBody(CompletionOptions):
    """The body of `POST /v1/completions`."""

    prompt: str


# ---------------------------------------------------------------- replies


def error_body(status: int, message: Any) -> dict[str, Any]:
    """An error as {'detail': message, 'error': {...}}: our client reads the first, OpenAI SDKs the second."""
    kind = ERROR_TYPES.get(status, "server_error")
    return {"detail": message, "error": {"message": message, "type": kind, "code": status}}


def created_at(iso: str | None) -> int:
    """Unix seconds of an ISO 8601 timestamp (0 when there is none or it does not parse)."""
    try:
        return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
    except ValueError:
        return 0


def model_list(namespace: str, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """`GET /v1/models`: the base model, then one model per published document of `namespace`."""
    data = [{"id": BASE_MODEL, "object": "model", "created": 0, "owned_by": "lift-ray"}]
    for manifest in manifests:
        data.append(
            {
                "id": manifest["doc_id"],
                "object": "model",
                "created": created_at(manifest.get("published_at")),
                "owned_by": namespace,
                "lift": {key: manifest.get(key) for key in MODEL_FIELDS}
                | {"rank": (manifest.get("lora") or {}).get("rank"), "with_context": "document_text" in manifest}
                | {"recite": bool(manifest.get("recite"))}
                | {"quality": manifest.get("quality"), "stage": manifest.get("stage", "final")},
            }
        )
    return {"object": "list", "data": data}


def reply_id(kind: Kind) -> str:
    """A new reply id: 'chatcmpl-...' or 'cmpl-...'."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(last: dict[str, Any] | None) -> dict[str, int]:
    """Token usage from the last chunk of an answer (zeros when there was none)."""
    prompt, completion = (last["prompt_tokens"], last["completion_tokens"]) if last else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def completion_reply(
    chunks: AsyncIterator[dict[str, Any]], reply_id: str, model: str, kind: Kind
) -> dict[str, Any]:
    """The whole reply (`stream` false): the chunks' text joined, the last chunk's finish reason and usage."""
    text, last = [], None
    async for chunk in chunks:
        text.append(chunk["text"])
        last = chunk
    content = "".join(text).strip()
    choice: dict[str, Any] = {"index": 0, "finish_reason": last["finish_reason"] if last else "stop"}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": content}
    else:
        choice["text"] = content
    return {
        "id": reply_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(last),
    }


# ---------------------------------------------------------------- server-sent events


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <JSON or text>` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def stream_events(
    chunks: AsyncIterator[dict[str, Any]], reply_id: str, model: str, kind: Kind, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's server-sent events: one `data:` line per chunk, then `data: [DONE]`."""
    envelope = {
        "id": reply_id,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if kind == "chat":
        yield sse({**envelope, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    last = None
    async for chunk in chunks:
        last = chunk
        if not chunk["text"] and chunk["finish_reason"] is None:
            continue
        if kind == "chat":
            delta = {"content": chunk["text"]} if chunk["text"] else {}
            choice = {"index": 0, "delta": delta, "finish_reason": chunk["finish_reason"]}
        else:
            choice = {"index": 0, "text": chunk["text"], "finish_reason": chunk["finish_reason"]}
        yield sse({**envelope, "choices": [choice]})
    if include_usage:
        yield sse({**envelope, "choices": [], "usage": usage(last)})
    yield sse("[DONE]")
