"""Serving engines behind one interface: transformers + peft, or vLLM with a `LoRARequest` per document.

An engine holds the base model once and attaches LoRA adapters under string keys ('<namespace>/<doc_id>').
`stream(request)` yields `Chunk`s of new text; the last one carries the finish reason and token counts.
Both engines take token ids, so the same prompt reaches either engine token for token. They are built on
the backends of `lift_ray.engines` (`hf`, `vllm`) and add adapter attach and detach (multi-LoRA) on top.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lift_ray.config import ServeConfig
from lift_ray.engines.base import EngineUnavailable
from lift_ray.engines.hf import active_adapter, decoding_kwargs, end_token_ids
from lift_ray.engines.runtime import cuda_available, prepare_vllm_process
from lift_ray.engines.vllm import load_llm
from lift_ray.models import load_causal_lm, load_tokenizer, resolve_base_model
from lift_ray.serving.lora_files import write_zero_adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (token ids), the adapter to answer with (None: the base model) and how to decode."""

    prompt_ids: list[int]
    adapter: str | None
    max_new_tokens: int
    temperature: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Chunk:
    """New text since the previous chunk; the last chunk has `finish_reason` ('stop' or 'length')."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


class ServingEngine(Protocol):
    """A base model with adapters attached by key; generation streams chunks."""

    name: str
    tokenizer: Any

    def add_adapter(self, key: str, path: Path) -> None:
        """Attach the PEFT adapter folder `path` under `key` (raises if it cannot be used)."""
        ...

    def remove_adapter(self, key: str) -> None:
        """Detach `key` and free its weights (no error if it is not attached)."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]:
        """Chunks of the reply to `request`."""
        ...

    def close(self) -> None:
        """Stop background work."""
        ...


class _IncrementalText:
    """Turns growing token lists into text deltas without splitting multi-byte characters."""

    def __init__(self, tokenizer: Any, end_ids: set[int]) -> None:
        self.tokenizer, self.end_ids = tokenizer, end_ids
        self.ids: list[int] = []
        self.sent = ""
        self.ended = False

    def add(self, ids: list[int]) -> str:
        for token in ids:
            if self.ended:
                break
            self.ids.append(token)
            if token in self.end_ids:
                self.ended = True
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # half a character: wait for the next token
        delta, self.sent = text[len(self.sent) :], text
        return delta


class HFPeftEngine:
    """transformers `generate` with LoRA adapters swapped in and out of preallocated slots.

    At start the model gets `slots` peft adapters of rank `max_rank` over `target_modules`, zeroed.
    Attaching an adapter copies its weights into a free slot (zero-padded to `max_rank`) and sets its
    scaling: milliseconds, where peft's `load_adapter` rebuilds modules (~0.3-0.9 s for the embedded model).
    An adapter that does not fit a slot (larger rank, other modules, DoRA, per-module ranks) is loaded
    with peft's own `load_adapter` instead. Generation is serialised by a lock: one request at a time.
    Filling a free slot does not wait for it: a generation reads only its own slot's weights, so an adapter
    is copied in while another request generates (under load, attaching used to wait behind every queued
    generation: ~23 s at concurrency 32). peft's `load_adapter` changes the modules, so that path waits.
    """

    name = "hf"

    def __init__(
        self,
        model_dir: Path,
        dtype: str = "float32",
        threads: int | None = None,
        slots: int = 8,
        max_rank: int = 16,
        target_modules: list[str] | None = None,
    ) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from lift_ray.config import ALL_LINEAR

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = load_tokenizer(model_dir)
        base = load_causal_lm(model_dir, dtype)
        self.max_model_len: int | None = getattr(base.config, "max_position_embeddings", None)
        self.max_rank = max_rank
        self.target_modules = set(target_modules or ALL_LINEAR)
        slot_config = LoraConfig(r=max_rank, lora_alpha=max_rank, target_modules=sorted(self.target_modules))
        self.model = get_peft_model(base, slot_config, adapter_name="slot0")
        for index in range(1, slots):
            self.model.add_adapter(f"slot{index}", slot_config)
        self.model.eval()
        self._layers = {
            name: module for name, module in self.model.named_modules() if hasattr(module, "lora_A") and module.lora_A
        }
        with torch.no_grad():
            for module in self._layers.values():
                for index in range(slots):
                    module.lora_A[f"slot{index}"].weight.zero_()
                    module.lora_B[f"slot{index}"].weight.zero_()
        self.end_ids = end_token_ids(self.model, self.tokenizer)
        self._free = [f"slot{index}" for index in range(slots)]
        self._names: dict[str, str] = {}  # key -> peft adapter name (a slot, or 'adapterN' loaded by peft)
        self._counter = 0
        self._lock = threading.Lock()  # generation, and peft's module-changing load/delete
        self._slots_lock = threading.Lock()  # `_free` and `_names`

    def _fits_slot(self, config: dict[str, Any]) -> bool:
        return (
            bool(self._free)
            and int(config.get("r", 0)) <= self.max_rank
            and not config.get("use_dora")
            and not config.get("rank_pattern")
            and not config.get("alpha_pattern")
            and config.get("bias", "none") == "none"
            and isinstance(config.get("target_modules"), list)
            and set(config["target_modules"]) <= self.target_modules
        )

    def _fill_slot(self, slot: str, path: Path, config: dict[str, Any]) -> None:
        import math

        import torch
        from safetensors.torch import load_file

        tensors = load_file(str(path / "adapter_model.safetensors"))
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        used = set()
        with torch.no_grad():
            for name, module in self._layers.items():
                a_weight, b_weight = module.lora_A[slot].weight, module.lora_B[slot].weight
                a_weight.zero_()
                b_weight.zero_()
                a, b = tensors.get(f"{name}.lora_A.weight"), tensors.get(f"{name}.lora_B.weight")
                if a is None or b is None:
                    continue
                if a.shape != (rank, a_weight.shape[1]) or b.shape != (b_weight.shape[0], rank):
                    raise ValueError(f"{name}: LoRA shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit the model")
                a_weight[:rank].copy_(a)
                b_weight[:, :rank].copy_(b)
                module.scaling[slot] = scaling
                used.update((f"{name}.lora_A.weight", f"{name}.lora_B.weight"))
        unused = set(tensors) - used
        if unused or not used:
            raise ValueError(f"adapter tensors that match no layer of the model: {sorted(unused)[:3] or 'all'}")

    def add_adapter(self, key: str, path: Path) -> None:
        """Copy the adapter into a free slot (while other requests generate), or load it with peft when it does
        not fit one (between generations)."""
        import json

        config = json.loads((Path(path) / "adapter_config.json").read_text())
        with self._slots_lock:
            if key in self._names:
                return
            slot = self._free.pop() if self._fits_slot(config) else None
        if slot is not None:
            try:
                self._fill_slot(slot, Path(path), config)  # a free slot: no generation reads it
            except BaseException:
                with self._slots_lock:
                    self._free.append(slot)
                raise
            with self._slots_lock:
                if key in self._names:  # attached meanwhile by another caller: keep theirs
                    self._free.append(slot)
                else:
                    self._names[key] = slot
            return
        with self._lock:
            with self._slots_lock:
                if key in self._names:
                    return
                self._counter += 1
                name = f"adapter{self._counter}"
            try:
                self.model.load_adapter(str(path), adapter_name=name)
            except BaseException:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise
            with self._slots_lock:
                self._names[key] = name

    def remove_adapter(self, key: str) -> None:
        """Free the adapter's slot (or delete its peft modules, between generations)."""
        with self._slots_lock:
            name = self._names.pop(key, None)
            if name is None:
                return
            if name.startswith("slot"):
                self._free.append(name)
                return
        with self._lock:
            self.model.set_adapter("slot0")
            self.model.delete_adapter(name)

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]:
        """Generate in a thread and yield text as tokens arrive."""
        from transformers.generation.streamers import BaseStreamer

        tokens: queue.Queue[list[int] | BaseException | None] = queue.Queue()

        class _Tokens(BaseStreamer):
            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first hands over the prompt
                    self.prompt_seen = True
                    return
                tokens.put(value.reshape(-1).tolist())

            def end(self) -> None:
                tokens.put(None)

        thread = threading.Thread(target=self._generate, args=(request, _Tokens(), tokens), daemon=True)
        thread.start()
        text = _IncrementalText(self.tokenizer, self.end_ids)
        prompt_tokens = len(request.prompt_ids)
        while True:
            item = tokens.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                break
            delta = text.add(item)
            if delta:
                yield Chunk(delta, prompt_tokens, len(text.ids))
        thread.join()
        finish = "stop" if text.ended else "length"
        yield Chunk(text.add([]), prompt_tokens, len(text.ids), finish)

    def _generate(self, request: GenerationRequest, streamer: Any, tokens: queue.Queue) -> None:
        import torch

        if request.temperature > 0 and request.seed is not None:
            torch.manual_seed(request.seed)
        input_ids = torch.tensor([request.prompt_ids])
        try:
            with self._lock, torch.inference_mode():
                name = None
                if request.adapter is not None:
                    with self._slots_lock:
                        name = self._names.get(request.adapter)
                    if name is None:
                        raise KeyError(f"adapter {request.adapter!r} is not attached")
                with active_adapter(self.model, name):
                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=request.max_new_tokens,
                        pad_token_id=self.tokenizer.pad_token_id,
                        streamer=streamer,
                        **decoding_kwargs(request.temperature),
                    )
        except BaseException as exc:  # handed to the consumer, which raises it
            tokens.put(exc)

    def close(self) -> None:
        """Nothing runs in the background between requests."""


class VLLMLoRAEngine:
    """vLLM with LoRA enabled; every request carries its document's `LoRARequest`, so requests for
    different documents are decoded in the same batch (up to `max_loras` adapters at once).

    One thread owns the engine: it builds `vllm.LLM`, takes requests and adapter changes from a queue and
    steps the engine while anything is unfinished (continuous batching), handing each request its text
    deltas. The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` on CPU).
    `batch_stats()` says how many requests, and of how many models, each engine step decoded together.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        config: ServeConfig,
        seed: int = 0,
    ) -> None:
        prepare_vllm_process(config.vllm)
        self.model_dir, self.config, self.seed = Path(model_dir), config, seed
        self.tokenizer = load_tokenizer(model_dir)
        self.max_model_len: int | None = config.vllm.max_model_len
        self._commands: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        # request id -> (its chunks, its text so far, prompt tokens, its model: adapter key or None for the base)
        self._streams: dict[str, tuple[queue.Queue, _IncrementalText, int, str | None]] = {}
        self._steps_by_requests: Counter[int] = Counter()
        self._steps_by_models: Counter[int] = Counter()
        self._loras: dict[str, Any] = {}
        self._next_lora_id = 1
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise EngineUnavailable(f"vLLM could not start: {self._start_error}") from self._start_error

    # -- the engine thread

    def _build(self) -> Any:
        self._on_gpu = cuda_available()
        llm = load_llm(
            self.model_dir,
            self.config.vllm,
            self.seed,
            fallback="set engine: hf",
            enable_lora=True,
            max_lora_rank=self.config.max_lora_rank,
            max_loras=self.config.max_loras + (0 if self._on_gpu else 1),  # + the zero adapter on CPU
            max_cpu_loras=max(self.config.max_loras, self.config.max_adapters_per_replica) + 1,
            max_num_seqs=self.config.max_num_seqs,
        )
        return llm.llm_engine

    def _zero_lora(self, engine: Any) -> Any:
        """An all-zero adapter that base-model requests carry on CPU.

        vLLM's CPU LoRA ops (torch fallbacks of the punica kernels) index the stacked adapter weights with
        each token's adapter slot, and a token without an adapter has slot -1, which Python indexing turns
        into the *last* slot: in a batch that mixes base and adapter requests the base rows got another
        document's adapter (measured: different greedy answers than alone). GPU kernels skip -1.
        Not pinned: vLLM's scheduler lets `max_loras` different adapters into one step and the engine has that
        many slots, so a pinned zero adapter left one slot short whenever a step held `max_loras` documents and
        no base request (vLLM evicted one of the step's own adapters: KeyError in `convert_mapping`, every
        request in flight failed; bench_serve, 1,000 adapters). Unpinned it takes a slot only in steps with a
        base request, where the scheduler counts it.
        """
        import tempfile

        from vllm.lora.request import LoRARequest

        folder = write_zero_adapter(self.model_dir, Path(tempfile.mkdtemp(prefix="lift-zero-lora-")))
        lora = LoRARequest(lora_name="lift-ray-base", lora_int_id=self._next_lora_id, lora_path=str(folder))
        self._next_lora_id += 1
        engine.add_lora(lora)
        return lora

    def _run(self) -> None:
        try:
            engine = self._build()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        eos = self.tokenizer.eos_token_id
        self._end_ids = {eos} if eos is not None else set()
        self._base_lora = None
        try:
            if not self._on_gpu:
                self._base_lora = self._zero_lora(engine)
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        while not self._closed:
            busy = engine.has_unfinished_requests()
            try:
                command = self._commands.get(block=not busy)
            except queue.Empty:
                command = None
            while command is not None:
                self._apply(engine, *command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if engine.has_unfinished_requests():
                try:
                    outputs = engine.step()
                except BaseException as exc:  # the engine is broken: fail every open stream
                    log.exception("vLLM step failed")
                    for out, *_ in self._streams.values():
                        out.put(exc)
                    self._streams.clear()
                    continue
                self._count_step(outputs)
                for output in outputs:
                    self._deliver(output)

    def _count_step(self, outputs: list[Any]) -> None:
        streams = [self._streams[o.request_id] for o in outputs if o.request_id in self._streams]
        if streams:
            self._steps_by_requests[len(streams)] += 1
            self._steps_by_models[len({model for *_, model in streams})] += 1

    def _apply(self, engine: Any, kind: str, payload: Any, reply: Callable[[Any], None]) -> None:
        try:
            if kind == "call":
                reply(payload(engine))
            elif kind == "add":
                request_id, request, out = payload
                self._add_request(engine, request_id, request, out)
            elif kind == "abort":
                if self._streams.pop(payload, None) is not None:
                    engine.abort_request([payload])
        except BaseException as exc:
            reply(exc)

    def _add_request(self, engine: Any, request_id: str, request: GenerationRequest, out: queue.Queue) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        lora = self._base_lora
        if request.adapter is not None:
            lora = self._loras.get(request.adapter)
            if lora is None:
                raise KeyError(f"adapter {request.adapter!r} is not attached")
        params = SamplingParams(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            # a request's own seed on GPU only: on CPU vLLM cannot rewind a seeded generator after a chunked
            # prefill (lift_ray/engines/vllm.py); the engine's generator, seeded at start, samples instead
            seed=request.seed if request.temperature > 0 and self._on_gpu else None,
            output_kind=RequestOutputKind.DELTA,
        )
        text = _IncrementalText(self.tokenizer, self._end_ids)
        self._streams[request_id] = (out, text, len(request.prompt_ids), request.adapter)
        try:
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=request.prompt_ids), params, lora_request=lora)
        except BaseException:
            self._streams.pop(request_id, None)
            raise

    def _deliver(self, output: Any) -> None:
        entry = self._streams.get(output.request_id)
        if entry is None:
            return
        out, text, prompt_tokens, _ = entry
        completion = output.outputs[0]
        delta = text.add(list(completion.token_ids))
        if output.finished:
            self._streams.pop(output.request_id, None)
            finish = "length" if completion.finish_reason == "length" else "stop"
            out.put(Chunk(delta, prompt_tokens, len(text.ids), finish))
        elif delta:
            out.put(Chunk(delta, prompt_tokens, len(text.ids)))

    def _call(self, function: Callable[[Any], Any]) -> Any:
        """Run `function(engine)` on the engine thread and return its result (or raise its error)."""
        result: queue.Queue[Any] = queue.Queue()
        self._commands.put(("call", function, result.put))
        value = result.get()
        if isinstance(value, BaseException):
            raise value
        return value

    # -- the interface

    def batch_stats(self) -> dict[str, dict[int, int]]:
        """Engine steps so far, counted by how many requests they decoded together (`by_requests`) and by how
        many models those requests asked for (`by_models`: documents' adapters, the base model counting as one).
        `{"by_models": {1: 40, 3: 6}}`: six steps decoded requests of three models in one batch."""
        return self._call(
            lambda engine: {"by_requests": dict(self._steps_by_requests), "by_models": dict(self._steps_by_models)}
        )

    def add_adapter(self, key: str, path: Path) -> None:
        """Register the adapter as a `LoRARequest` and load it into vLLM's adapter cache now."""
        from vllm.lora.request import LoRARequest

        if key in self._loras:
            return
        lora = LoRARequest(lora_name=key, lora_int_id=self._next_lora_id, lora_path=str(path))
        self._next_lora_id += 1
        self._call(lambda engine: engine.add_lora(lora))
        self._loras[key] = lora

    def remove_adapter(self, key: str) -> None:
        """Drop the adapter from vLLM's caches."""
        lora = self._loras.pop(key, None)
        if lora is not None:
            self._call(lambda engine: engine.remove_lora(lora.lora_int_id))

    def stream(self, request: GenerationRequest) -> Iterator[Chunk]:
        """Queue the request for the engine thread and yield its deltas; abandoning the iterator aborts it."""
        request_id = uuid.uuid4().hex
        out: queue.Queue[Any] = queue.Queue()
        self._commands.put(("add", (request_id, request, out), out.put))
        finished = False
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self._commands.put(("abort", request_id, lambda _: None))

    def close(self) -> None:
        """Stop the engine thread."""
        self._closed = True
        self._commands.put(("call", lambda engine: None, lambda _: None))


def make_serving_engine(config: ServeConfig) -> ServingEngine:
    """The engine named by `config.engine`, with the base model loaded."""
    model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
    if config.engine == "vllm":
        return VLLMLoRAEngine(model_dir, config)
    return HFPeftEngine(
        model_dir,
        config.model.dtype,
        threads=config.torch_threads,
        slots=config.max_adapters_per_replica + 2,  # room for adapters evicted while still generating
        max_rank=config.max_lora_rank,
    )
