"""Answering questions about LIFTed documents, without Ray: engine + adapter tiers + prompts.

`AdapterService` ties an engine (`engines.py`), the disk tier (`adapters.AdapterFetcher`) and, when
`manage_memory` is on, its own memory-tier LRU. Behind Ray Serve, `@serve.multiplexed` is the memory
tier instead and calls `attach`/`detach`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lift_ray.config import ServeConfig
from lift_ray.eval.harness import CONTEXT_PROMPT, truncated_context
from lift_ray.layout import is_draft, manifest_version, read_document_text
from lift_ray.serving.adapters import AdapterFetcher, AdapterUnusable, UnknownDocument
from lift_ray.serving.engines import Chunk, GenerationRequest, ServingEngine, make_serving_engine
from lift_ray.storage import Store

log = logging.getLogger(__name__)
_TEXT_CACHE_SIZE = 16


class NotAttached(UnknownDocument):
    """The adapter left memory between attaching it and generating with it: attach it again."""


class BadRequest(ValueError):
    """A request this endpoint cannot answer as asked (HTTP 400), with the reason."""


@dataclass(frozen=True)
class Attached:
    """An adapter now in memory: how long it took and which tier it came from."""

    key: str
    seconds: float
    source: Literal["memory", "disk", "store"]


@dataclass(frozen=True)
class AnswerRequest:
    """One chat (`messages`) or completion (`prompt`) request for a document (None: the base model)."""

    namespace: str
    doc_id: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    with_context: bool = False
    adapter_version: str | None = None  # the manifest version the ingress saw (None: whatever is attached)
    recite: bool | None = None  # None: the endpoint's `recite` setting


@dataclass
class ChatAnswer:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


def adapter_key(namespace: str, doc_id: str) -> str:
    """The engine's name for a document's adapter (also Serve's multiplexed model id)."""
    return f"{namespace}/{doc_id}"


def split_key(key: str) -> tuple[str, str]:
    """`adapter_key`'s inverse."""
    namespace, _, doc_id = key.partition("/")
    return namespace, doc_id


class AdapterService:
    """A base model with per-document adapters: memory → local disk → store, and prompt building."""

    def __init__(self, config: ServeConfig, engine: ServingEngine | None = None, manage_memory: bool = True) -> None:
        self.config = config
        self.engine = engine if engine is not None else make_serving_engine(config)
        self.tokenizer = self.engine.tokenizer
        self.store = Store.from_uri(config.storage.root)
        max_rank = config.max_lora_rank if config.engine == "vllm" else None
        self.fetcher = AdapterFetcher(self.store, Path(config.adapter_cache_dir), config.adapter_cache_bytes, max_rank)
        self.manage_memory = manage_memory
        self.attached: OrderedDict[str, dict[str, Any]] = OrderedDict()  # key -> manifest, least recent first
        # Adapters detached while a request still generates with them stay in the engine until it ends.
        self._in_use: dict[str, int] = {}
        self._retired: dict[str, dict[str, Any]] = {}
        self._texts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.RLock()

    # -- adapters

    def attach(self, namespace: str, doc_id: str, version: str | None = None) -> Attached:
        """Make the adapter of `doc_id` answerable: UnknownDocument or AdapterUnusable if it cannot be.

        With `version` (a `manifest_version`), an attached draft of another version (one whose final
        adapter is out) is swapped for the current one, unless a request is still generating with it: then it
        answers this request too and is swapped on a later one.
        """
        key = adapter_key(namespace, doc_id)
        started = time.perf_counter()
        with self._lock:
            if key in self.attached:
                if self.serves_version(key, version) or self._in_use.get(key):
                    self.attached.move_to_end(key)
                    return Attached(key, 0.0, "memory")
                self.engine.remove_adapter(key)  # an older version nobody is generating with
                del self.attached[key]
        fetched = self.fetcher.fetch(namespace, doc_id)
        with self._lock:
            if key in self.attached:
                return Attached(key, time.perf_counter() - started, "memory")
            if key in self._retired and self._retired[key] == fetched.manifest:
                self.attached[key] = self._retired.pop(key)  # still in the engine: take it back
            else:
                if key in self._retired:  # an older version, still generating: it goes when that ends
                    raise AdapterUnusable(f"document {doc_id!r} was just republished; retry in a moment")
                try:
                    self.engine.add_adapter(key, fetched.path)
                except Exception as exc:
                    raise AdapterUnusable(
                        f"the adapter of document {doc_id!r} cannot be loaded ({type(exc).__name__}: {exc}); "
                        "republish it"
                    ) from None
                self.attached[key] = fetched.manifest
            while self.manage_memory and len(self.attached) > self.config.max_adapters_per_replica:
                self.detach(*split_key(next(iter(self.attached))))
        seconds = time.perf_counter() - started
        log.info("attached %s from %s in %.3f s", key, fetched.source, seconds)
        return Attached(key, seconds, fetched.source)

    def serves_version(self, key: str, version: str | None) -> bool:
        """Whether the adapter attached under `key` answers a request whose ingress saw manifest `version`.

        Any attached adapter does when no version was seen; only a draft is swapped for a newer version (a
        republished final adapter stays until evicted).
        """
        manifest = self.attached.get(key)
        if manifest is None:
            return False
        return version is None or not is_draft(manifest) or manifest_version(manifest) == version

    def attached_version(self, key: str) -> str | None:
        """The `manifest_version` of the adapter attached under `key`, or None when none is."""
        manifest = self.attached.get(key)
        return None if manifest is None else manifest_version(manifest)

    def detach(self, namespace: str, doc_id: str) -> None:
        """Free the adapter of `doc_id` from memory (its files stay in the disk tier)."""
        key = adapter_key(namespace, doc_id)
        with self._lock:
            manifest = self.attached.pop(key, None)
            if manifest is None:
                return
            if self._in_use.get(key):
                self._retired[key] = manifest
            else:
                self.engine.remove_adapter(key)

    def _acquire(self, key: str) -> None:
        with self._lock:
            if key not in self.attached and key not in self._retired:
                raise NotAttached(f"the adapter {key!r} is not attached")
            self._in_use[key] = self._in_use.get(key, 0) + 1

    def _release(self, key: str) -> None:
        with self._lock:
            self._in_use[key] -= 1
            if not self._in_use[key]:
                del self._in_use[key]
                if self._retired.pop(key, None) is not None:
                    self.engine.remove_adapter(key)

    # -- prompts

    def document_text(self, namespace: str, doc_id: str) -> str:
        """The text published with the document (kept for the last few documents asked with context)."""
        with self._lock:
            if (namespace, doc_id) in self._texts:
                self._texts.move_to_end((namespace, doc_id))
                return self._texts[(namespace, doc_id)]
        text = read_document_text(self.store, namespace, doc_id)
        if text is None:
            raise BadRequest(
                f"document {doc_id!r} was published without its text, so with_context cannot be used; "
                "republish it with this version of lift-ray"
            )
        with self._lock:
            self._texts[(namespace, doc_id)] = text
            while len(self._texts) > _TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        return text

    def _context(self, request: AnswerRequest) -> str | None:
        if not request.with_context:
            return None
        if request.doc_id is None:
            raise BadRequest("with_context needs a document id as the model, not the base model")
        return truncated_context(
            self.document_text(request.namespace, request.doc_id), self.tokenizer, self.config.context_tokens
        )

    def prompt_ids(self, request: AnswerRequest) -> list[int]:
        """The token ids the engine gets: chat template with the training system prompt, or the raw prompt."""
        context = self._context(request)
        if request.messages is not None:
            messages = [dict(message) for message in request.messages]
            if context is not None:
                last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
                if last_user is None:
                    raise BadRequest("with_context needs a user message to put the document in front of")
                messages[last_user]["content"] = CONTEXT_PROMPT.format(
                    context=context, question=messages[last_user]["content"]
                )
            if messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.system_prompt(request)})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        elif request.prompt is not None:
            text = request.prompt if context is None else f"Here is a document.\n\n{context}\n\n{request.prompt}"
        else:
            raise BadRequest("a request needs messages or a prompt")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def system_prompt(self, request: AnswerRequest) -> str:
        """The system prompt the document's adapter was trained with (the config's for the base model)."""
        manifest = self.attached.get(adapter_key(request.namespace, request.doc_id or ""), {})
        return manifest.get("system_prompt", self.config.model.system_prompt)

    def recital(self, request: AnswerRequest) -> dict[str, str] | None:
        """How `request` is answered by reciting (its adapter's manifest `recite`), or None when it is not.

        A request that asks to recite (`recite=True`) of the base model, with the document in the prompt, or of
        an adapter not trained to recite is a BadRequest; by the endpoint's default it just answers plainly."""
        asked = request.recite is True
        if not (asked or (request.recite is None and self.config.recite)):
            return None
        if request.doc_id is None or request.with_context:
            if asked:
                raise BadRequest("recite needs a document id as the model, and no with_context")
            return None
        manifest = self.attached.get(adapter_key(request.namespace, request.doc_id), {})
        settings = manifest.get("recite")
        if not settings and asked:
            raise BadRequest(
                f"the adapter of document {request.doc_id!r} was not trained to recite: LIFT it with "
                "train.sentence_answers and train.sentence_answers_prompt"
            )
        return settings or None

    def _question(self, request: AnswerRequest) -> str:
        if request.messages is None:
            if request.prompt is None:
                raise BadRequest("a request needs messages or a prompt")
            return request.prompt
        users = [m["content"] for m in request.messages if m["role"] == "user"]
        if not users:
            raise BadRequest("recite needs a user message to answer")
        return users[-1]

    def _recite(self, request: AnswerRequest, settings: dict[str, str]) -> Iterator[Chunk]:
        """The answer by reciting: the adapter says the document's sentence for the question under its recital
        prompt; "answer_line" adapters go on with 'Answer: ...' (only that is returned), "sentence" ones then
        answer with the recital in the prompt. An adapter trained to say its `off_document` recital, saying it,
        hands the request to the base model. One chunk: a recital cannot be streamed as answer text."""
        from lift_ray.train.dataset import recited_answer, says_off_document

        question = self._question(request)
        messages = [{"role": "system", "content": settings["prompt"]}, {"role": "user", "content": question}]
        recite_tokens = self.config.recite_max_new_tokens
        answer_line = settings.get("format") == "answer_line"
        said = self.answer(
            replace(
                request,
                messages=messages,
                prompt=None,
                recite=False,
                max_new_tokens=recite_tokens + (request.max_new_tokens if answer_line else 0),
            )
        )
        if settings.get("off_document") and says_off_document(said.text):
            base = self.answer(replace(request, doc_id=None, recite=False))
            yield Chunk(
                base.text,
                said.prompt_tokens + base.prompt_tokens,
                said.completion_tokens + base.completion_tokens,
                base.finish_reason,
            )
            return
        if answer_line:
            yield Chunk(recited_answer(said.text)[1], said.prompt_tokens, said.completion_tokens, said.finish_reason)
            return
        read = [{"role": "user", "content": CONTEXT_PROMPT.format(context=said.text, question=question)}]
        answer = self.answer(replace(request, messages=read, prompt=None, recite=False))
        yield Chunk(
            answer.text,
            said.prompt_tokens + answer.prompt_tokens,
            said.completion_tokens + answer.completion_tokens,
            answer.finish_reason,
        )

    # -- answering

    def stream(self, request: AnswerRequest) -> Iterator[Chunk]:
        """Chunks of the answer; the adapter must be attached (`attach`) first."""
        settings = self.recital(request)
        if settings is not None:
            yield from self._recite(request, settings)
            return
        key = None if request.doc_id is None else adapter_key(request.namespace, request.doc_id)
        ids = self.prompt_ids(request)
        limit = getattr(self.engine, "max_model_len", None)
        if limit is not None and len(ids) + request.max_new_tokens > limit:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; with max_tokens {request.max_new_tokens} it exceeds the "
                f"model's {limit}-token window"
            )
        generation = GenerationRequest(ids, key, request.max_new_tokens, request.temperature, request.seed)
        if key is None:
            yield from self.engine.stream(generation)
            return
        self._acquire(key)
        try:
            yield from self.engine.stream(generation)
        finally:
            self._release(key)

    def answer(self, request: AnswerRequest) -> ChatAnswer:
        """The whole answer at once."""
        parts, last = [], None
        for chunk in self.stream(request):
            parts.append(chunk.text)
            last = chunk
        assert last is not None
        return ChatAnswer(
            "".join(parts).strip(), last.prompt_tokens, last.completion_tokens, last.finish_reason or "stop"
        )
