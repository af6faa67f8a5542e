"""The OpenAI-compatible backend: `OpenAIChatEngine`, for any `/v1/chat/completions` server."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lift_ray.engines.base import ChatEngine, Conversation, Generation, SamplingSettings

if TYPE_CHECKING:
    from lift_ray.config import OpenAISettings


class OpenAIChatEngine(ChatEngine):
    """Any OpenAI-compatible `/v1/chat/completions` server, through the official `openai` SDK.

    At most `max_concurrency` requests are in flight (threads sharing one thread-safe `openai.OpenAI` client,
    so `generate` stays a plain call inside Ray actors and tasks). Retries and timeouts are the SDK's own:
    `max_retries = max_attempts - 1`, `timeout = timeout_s` per try. The SDK retries connection errors,
    timeouts, 408, 409, 429 and 5xx with exponential backoff and jitter (0.5 s doubling, capped at 8 s,
    minus up to 25 %), honouring a server's `Retry-After`; `backoff_s` is not used, as the SDK has no public
    setting for its first wait. Other 4xx replies are not retried: the request itself is wrong.

    A request that still fails after `max_attempts` tries comes back as an empty `Generation` with its
    `error` set ("HTTP 503: ...", "APITimeoutError: Request timed out.", ...), so that the generator counts
    it as malformed (and retries it once at its own level) instead of failing the whole batch.
    """

    name = "openai"

    def __init__(self, settings: OpenAISettings) -> None:
        import openai

        self.settings = settings
        api_key = os.environ.get(settings.api_key_env) or None
        # Without a key no Authorization header is sent, as before: the SDK refuses to build a client without
        # credentials, so it gets a placeholder and every request omits the header explicitly (`openai.Omit`,
        # which the SDK's missing-credentials check accepts).
        self._extra_headers = None if api_key else {"Authorization": openai.Omit()}
        self._client = openai.OpenAI(
            api_key=api_key or "unused",
            base_url=settings.base_url,
            max_retries=settings.max_attempts - 1,
            timeout=settings.timeout_s,
        )

    def _body(self, conversation: Conversation, sampling: SamplingSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": conversation,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "seed": sampling.seed,
        }
        if sampling.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "qa_list", "schema": sampling.json_schema},
            }
        return body

    def _post(self, body: dict[str, Any]) -> Generation:
        import openai

        try:
            reply = self._client.chat.completions.create(**body, extra_headers=self._extra_headers)
            text = reply.choices[0].message.content or ""
            tokens = int(getattr(reply.usage, "completion_tokens", 0) or 0)
            return Generation(text, tokens)
        except openai.APIStatusError as exc:  # an HTTP error reply, after the SDK's retries where they apply
            detail = exc.response.text[:300] if exc.response is not None else str(exc)
            return Generation("", 0, error=f"HTTP {exc.status_code}: {detail}")
        except openai.APIConnectionError as exc:  # APITimeoutError included; retried by the SDK first
            return Generation("", 0, error=f"{type(exc).__name__}: {exc}")
        except (openai.APIError, AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            return Generation("", 0, error=f"unexpected reply: {type(exc).__name__}: {exc}")

    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        """One `Generation` per conversation, at most `max_concurrency` requests in flight."""
        from concurrent.futures import ThreadPoolExecutor

        if not conversations:
            return []
        # A seed per request, so that copies of one prompt in a call still get independent samples.
        bodies = [
            {**self._body(conversation, sampling), "seed": sampling.seed + position}
            for position, conversation in enumerate(conversations)
        ]
        with ThreadPoolExecutor(max_workers=min(self.settings.max_concurrency, len(bodies))) as pool:
            return list(pool.map(self._post, bodies))
