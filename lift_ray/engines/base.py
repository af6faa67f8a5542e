"""The chat-engine interface: conversations in, one `Generation` each out, whatever the backend.

A backend (`hf`, `vllm`, `openai`, one module each) subclasses `ChatEngine`. Serving builds its
multi-adapter engines from the same backends (`lift_ray.serving.engines`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

Conversation = list[dict[str, str]]


class EngineError(RuntimeError):
    """An engine that cannot be built or cannot honour a request, with the reason."""


class EngineUnavailable(EngineError):
    """The engine cannot start (missing package, bad settings), with what to do."""


@dataclass(frozen=True)
class SamplingSettings:
    """How to decode: length, temperature (0 = greedy), seed, optional JSON schema constraint."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    json_schema: dict | None = None


@dataclass(frozen=True)
class Generation:
    """One generated reply and how many tokens it took; `error` says why a reply is missing."""

    text: str
    output_tokens: int
    error: str | None = None


class ChatEngine(ABC):
    """Anything that turns chat conversations into one reply each."""

    name: str

    @abstractmethod
    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        """One `Generation` per conversation, in the same order."""
