"""Where engines run: CUDA or CPU, the cores this process may use, and the environment vLLM needs on CPU.

vLLM on a CPU-only machine needs a few environment variables, and they must be in the process
environment before `vllm` is imported. `vllm_cpu_environment` computes them, so that callers can
put them into a Ray `runtime_env`; `prepare_vllm_process` sets any that are missing from
`os.environ` before an engine's lazy import. Measured with vllm-cpu 0.32.0 on 2 AVX2 cores
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
- `LD_PRELOAD=libiomp5.so` (intel-openmp) is left out. It made no speed difference, eager or
  compiled, it only takes effect when a process starts, and it breaks processes that cannot find the library.
- Torch's thread count matters: 75 tokens/s with 2 threads, 39 with 1. A Ray task or actor with
  `num_cpus=1` gets `OMP_NUM_THREADS=1` unless its `runtime_env` sets another value.
- `torch.compile` is off by default on CPU (`enforce_eager`): a warm start takes 8 s instead of
  ~40 s, and a cold start instead of ~120 s. Compiled decoding is ~25% faster (92-106 vs
  72-78 tokens/s), which pays off only for long bulk jobs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lift_ray.config import GeneratorSettings, VLLMSettings


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def cpu_list(cpus: list[int]) -> str:
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


def available_cpus() -> list[int]:
    """The ids of the cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def vllm_cpu_environment(settings: VLLMSettings) -> dict[str, str]:
    """Environment variables that vLLM needs on a CPU-only machine; empty when CUDA is available."""
    if cuda_available():
        return {}
    bind = settings.cpu_threads_bind
    if bind == "auto":
        bind = cpu_list(available_cpus())
    return {
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kvcache_space_gib),
        "VLLM_USE_AOT_COMPILE": "0",
    }


def prepare_vllm_process(settings: VLLMSettings) -> None:
    """Put vLLM's CPU variables (and, on CPU, a thread count for every core) into `os.environ` where unset.

    vLLM reads its variables when first used. Without `OMP_NUM_THREADS` vLLM drops torch to one thread on CPU
    ("Reducing Torch threads ... to 1"): half the speed.
    """
    for key, value in vllm_cpu_environment(settings).items():
        os.environ.setdefault(key, value)
    if not cuda_available():
        os.environ.setdefault("OMP_NUM_THREADS", str(len(available_cpus())))


def cpu_runtime_env(settings: VLLMSettings, threads: int) -> dict[str, Any]:
    """Ray `runtime_env` for a process that runs an engine on CPU: vLLM's CPU variables and `threads` OpenMP threads.

    Ray gives an actor with `num_cpus=1` (or less) `OMP_NUM_THREADS=1`, which halves CPU decoding speed, and vLLM
    reads its variables at import.
    """
    env = vllm_cpu_environment(settings)
    env["OMP_NUM_THREADS"] = str(threads)
    return {"env_vars": env}


def engine_runtime_env(settings: GeneratorSettings) -> dict[str, Any]:
    """Ray `runtime_env` for a generator actor: on CPU, `settings.cpu_threads` threads (0: every core of this node)."""
    if settings.num_gpus:
        return {"env_vars": vllm_cpu_environment(settings.vllm)}
    return cpu_runtime_env(settings.vllm, settings.cpu_threads or len(available_cpus()))
