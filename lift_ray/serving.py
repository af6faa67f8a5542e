"""Answering with per-document adapters over one base model (transformers + peft), without Ray Serve.

`AdapterChatModel` loads the base model once and swaps LoRA adapters in and out of it by document
id; `serve/app.py` wraps it in a Ray Serve deployment with `@serve.multiplexed`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lift_ray.config import ServeConfig
from lift_ray.documents import InvalidDocumentId, validate_doc_id
from lift_ray.models import load_causal_lm, load_tokenizer, resolve_base_model
from lift_ray.storage import ObjectNotFound, Store, fetch_adapter, read_manifest

log = logging.getLogger(__name__)

_PLACEHOLDER_ADAPTER = "lift-ray-base"


class UnknownDocument(LookupError):
    """No published adapter for this document id (or the id is not valid)."""


@dataclass
class ChatAnswer:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class AdapterChatModel:
    """The base model, loaded once, with LoRA adapters added and removed by document id."""

    def __init__(self, config: ServeConfig) -> None:
        from peft import LoraConfig, get_peft_model

        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.store = Store.from_uri(config.storage.root)
        model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
        self.tokenizer = load_tokenizer(model_dir)
        base = load_causal_lm(model_dir, config.model.dtype)
        # A zero-initialised placeholder adapter makes the model a PeftModel from the start,
        # so real adapters can be added and deleted without reloading the base weights.
        self.model = get_peft_model(base, LoraConfig(r=1, target_modules=["q_proj"]), adapter_name=_PLACEHOLDER_ADAPTER)
        self.model.eval()
        self.loaded: set[str] = set()
        self.system_prompts: dict[str, str] = {}
        self._lock = threading.Lock()

    def manifest(self, doc_id: str) -> dict[str, Any]:
        """The published manifest of `doc_id`, or UnknownDocument."""
        try:
            validate_doc_id(doc_id)
        except InvalidDocumentId as exc:
            raise UnknownDocument(str(exc)) from None
        manifest = read_manifest(self.store, self.config.storage.namespace, doc_id)
        if manifest is None:
            raise UnknownDocument(
                f"no LIFTed adapter for document {doc_id!r} in namespace {self.config.storage.namespace!r}"
            )
        return manifest

    def load_adapter(self, doc_id: str) -> float:
        """Fetch (store → local disk cache) and attach the adapter of `doc_id`; returns seconds taken."""
        started = time.perf_counter()
        manifest = self.manifest(doc_id)
        try:
            local = fetch_adapter(
                self.store, self.config.storage.namespace, doc_id, Path(self.config.adapter_cache_dir)
            )
        except ObjectNotFound as exc:
            raise UnknownDocument(f"adapter files of {doc_id!r} are missing: {exc}") from None
        with self._lock:
            if doc_id not in self.loaded:
                self.model.load_adapter(str(local), adapter_name=doc_id)
                self.loaded.add(doc_id)
                self.system_prompts[doc_id] = manifest.get("system_prompt", self.config.model.system_prompt)
        elapsed = time.perf_counter() - started
        log.info("loaded adapter %s in %.2f s", doc_id, elapsed)
        return elapsed

    def unload_adapter(self, doc_id: str) -> None:
        """Detach the adapter of `doc_id` and free its weights."""
        with self._lock:
            if doc_id in self.loaded:
                self.model.set_adapter(_PLACEHOLDER_ADAPTER)
                self.model.delete_adapter(doc_id)
                self.loaded.discard(doc_id)
                self.system_prompts.pop(doc_id, None)

    def chat(
        self, messages: list[dict[str, str]], doc_id: str | None, max_new_tokens: int, temperature: float = 0.0
    ) -> ChatAnswer:
        """Answer a conversation with the adapter of `doc_id` (or the base model when None)."""
        system_prompt = self.system_prompts.get(doc_id or "", self.config.model.system_prompt)
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling["temperature"] = temperature
        with self._lock, torch.inference_mode():
            if doc_id is None:
                with self.model.disable_adapter():
                    output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
            else:
                if doc_id not in self.loaded:
                    raise UnknownDocument(f"adapter {doc_id!r} is not loaded")
                self.model.set_adapter(doc_id)
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        return ChatAnswer(text=text, prompt_tokens=int(inputs["input_ids"].shape[1]), completion_tokens=len(new_tokens))
