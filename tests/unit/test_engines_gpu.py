"""The vLLM generator's GPU-only options on CUDA (run on a GPU machine with the `gpu` extra: `pytest -m gpu`).

Tensor parallelism over every visible GPU, bf16, and guided JSON, on the embedded model; greedy output must
match transformers on the same GPU, as it matches on CPU (test_engines.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from lift_ray.config import VLLMSettings
from lift_ray.engines import HFChatEngine, SamplingSettings, VLLMChatEngine

pytestmark = pytest.mark.gpu

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one quiz question about: The Halvard Bridge opened in 1931."}],
]
QA_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string", "maxLength": 100}, "answer": {"type": "string", "maxLength": 60}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def test_vllm_on_every_gpu_in_bf16_matches_transformers_and_honours_a_schema(embedded_model_dir: Path) -> None:
    assert torch.cuda.is_available(), "this test needs CUDA"
    gpus = torch.cuda.device_count()
    # The embedded model has 9 attention heads and 3 KV heads: tensor parallelism must divide 3.
    tensor_parallel = 3 if gpus >= 3 else 1
    settings = VLLMSettings(dtype="bfloat16", tensor_parallel_size=tensor_parallel, gpu_memory_utilization=0.3)
    engine = VLLMChatEngine(embedded_model_dir, settings, seed=0)
    greedy = SamplingSettings(max_new_tokens=24)
    got = engine.generate(CONVERSATIONS, greedy)
    assert "Paris" in got[0].text
    expected = HFChatEngine(embedded_model_dir, dtype="bfloat16", device="cuda", max_batch_size=1).generate(
        CONVERSATIONS[:1], greedy
    )
    assert got[0].text.split()[:3] == expected[0].text.split()[:3]  # bf16 kernels differ; the start agrees
    [constrained] = engine.generate(CONVERSATIONS[1:], SamplingSettings(max_new_tokens=96, json_schema=QA_SCHEMA))
    jsonschema.validate(json.loads(constrained.text), QA_SCHEMA)
