"""One chat-engine layer: a base model (or a remote server) producing chat completions.

`base` holds the interface (`ChatEngine`, `SamplingSettings`, `Generation`), `runtime` where engines run
(CUDA, cores, vLLM's CPU environment), and each backend has its module: `hf` (transformers), `vllm`,
`openai` (any OpenAI-compatible server). Synthesis and the evaluation use these engines; serving adds
adapter attach and detach on top (`lift_ray.serving.engines`). Backends import their packages lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lift_ray.engines.base import (
    ChatEngine,
    Conversation,
    EngineError,
    EngineUnavailable,
    Generation,
    SamplingSettings,
)
from lift_ray.engines.hf import HFChatEngine
from lift_ray.engines.openai import OpenAIChatEngine
from lift_ray.engines.runtime import (
    available_cpus,
    cpu_list,
    cpu_runtime_env,
    cuda_available,
    engine_runtime_env,
    prepare_vllm_process,
    vllm_cpu_environment,
)
from lift_ray.engines.vllm import VLLMChatEngine

if TYPE_CHECKING:
    from lift_ray.config import GeneratorSettings


def make_engine(engine: str, model_dir: Path, generator_settings: GeneratorSettings, seed: int = 0) -> ChatEngine:
    """The chat engine named by `engine` ("vllm", "hf" or "openai"; the last ignores `model_dir`)."""
    if engine == "openai":
        return OpenAIChatEngine(generator_settings.openai)
    if engine == "vllm":
        return VLLMChatEngine(model_dir, generator_settings.vllm, seed=seed)
    if engine == "hf":
        device = "cuda" if generator_settings.num_gpus > 0 and cuda_available() else "cpu"
        return HFChatEngine(
            model_dir,
            dtype=generator_settings.vllm.dtype,
            device=device,
            max_batch_size=generator_settings.batch_size,
        )
    raise ValueError(f"unknown engine {engine!r}: expected 'vllm', 'hf' or 'openai'")


__all__ = [
    "ChatEngine",
    "Conversation",
    "EngineError",
    "EngineUnavailable",
    "Generation",
    "HFChatEngine",
    "OpenAIChatEngine",
    "SamplingSettings",
    "VLLMChatEngine",
    "available_cpus",
    "cpu_list",
    "cpu_runtime_env",
    "cuda_available",
    "engine_runtime_env",
    "make_engine",
    "prepare_vllm_process",
    "vllm_cpu_environment",
]
