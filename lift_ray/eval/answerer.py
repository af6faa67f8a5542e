"""The evaluation's own answerer: the base model with per-document LoRA adapters, answering in batches.

Built on the transformers backend of `lift_ray.engines`, peft and the package's store helpers only, so the
evaluation does not depend on the serving code. Greedy decoding with left padding, several questions per
`generate` call: on 2 CPU cores a batch of 8 short answers costs little more than one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lift_ray.config import ServeConfig
from lift_ray.engines.hf import active_adapter, generate_batch, length_batches
from lift_ray.engines.runtime import cuda_available
from lift_ray.layout import fetch_adapter, read_manifest
from lift_ray.models import load_causal_lm, load_tokenizer, resolve_base_model
from lift_ray.storage import Store

log = logging.getLogger(__name__)

_PLACEHOLDER_ADAPTER = "eval-base"


@dataclass
class Answer:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class EvalChatModel:
    """The base model, loaded once, answering with or without the LoRA adapter of a document."""

    def __init__(self, config: ServeConfig, batch_size: int = 8) -> None:
        from peft import LoraConfig, get_peft_model

        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.batch_size = batch_size
        self.store = Store.from_uri(config.storage.root)
        model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        base = load_causal_lm(model_dir, config.model.dtype, "cuda" if cuda_available() else "cpu")
        # A zero-initialised placeholder makes the model a PeftModel, so adapters come and go without a reload.
        self.model = get_peft_model(base, LoraConfig(r=1, target_modules=["q_proj"]), adapter_name=_PLACEHOLDER_ADAPTER)
        self.model.eval()
        self.loaded: set[str] = set()
        self.system_prompts: dict[str, str] = {}

    def load_adapter(self, doc_id: str) -> float:
        """Fetch and attach the published adapter of `doc_id` (its namespace is the config's); seconds taken."""
        started = time.perf_counter()
        namespace = self.config.storage.namespace
        manifest = read_manifest(self.store, namespace, doc_id)
        if manifest is None:
            raise LookupError(f"no adapter published for {doc_id!r} in namespace {namespace!r}: LIFT it first")
        local = fetch_adapter(self.store, namespace, doc_id, Path(self.config.adapter_cache_dir))
        self.model.load_adapter(str(local), adapter_name=doc_id)
        self.loaded.add(doc_id)
        self.system_prompts[doc_id] = manifest.get("system_prompt", self.config.model.system_prompt)
        return time.perf_counter() - started

    def unload_adapter(self, doc_id: str) -> None:
        """Detach the adapter of `doc_id` and free its weights."""
        if doc_id in self.loaded:
            self.model.set_adapter(_PLACEHOLDER_ADAPTER)
            self.model.delete_adapter(doc_id)
            self.loaded.discard(doc_id)
            self.system_prompts.pop(doc_id, None)

    def _prompt(self, messages: list[dict[str, str]], doc_id: str | None) -> str:
        system_prompt = self.system_prompts.get(doc_id or "", self.config.model.system_prompt)
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def chat_batch(
        self, conversations: list[list[dict[str, str]]], doc_id: str | None, max_new_tokens: int
    ) -> list[Answer]:
        """Greedy answers to `conversations`, with the adapter of `doc_id` (None: the base model), in order."""
        if doc_id is not None and doc_id not in self.loaded:
            raise LookupError(f"adapter {doc_id!r} is not loaded")
        prompts = [self._prompt(messages, doc_id) for messages in conversations]
        answers: dict[int, Answer] = {}
        # Similar lengths share a batch, so little of each batch is padding.
        for chunk in length_batches([len(prompt) for prompt in prompts], self.batch_size):
            with active_adapter(self.model, doc_id):
                rows = generate_batch(
                    self.model,
                    self.tokenizer,
                    [prompts[i] for i in chunk],
                    max_new_tokens,
                    temperature=0.0,
                    end_ids={self.tokenizer.eos_token_id},
                )
            for index, (tokens, prompt_tokens) in zip(chunk, rows, strict=True):
                answers[index] = Answer(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=len(tokens),
                )
        return [answers[i] for i in range(len(prompts))]

    def chat(
        self, messages: list[dict[str, str]], doc_id: str | None, max_new_tokens: int, temperature: float = 0.0
    ) -> Any:
        """One greedy answer (`temperature` must be 0: the evaluation decodes greedily)."""
        if temperature:
            raise ValueError("the evaluation answers greedily (temperature 0)")
        return self.chat_batch([messages], doc_id, max_new_tokens)[0]
