"""The `openai` generator engine against the project's own Ray Serve endpoint serving the base model."""

from __future__ import annotations

import json

import pytest

from lift_ray.config import GeneratorSettings, OpenAISettings
from lift_ray.engines import make_engine
from lift_ray.synth.generator import QAGenerator

pytestmark = pytest.mark.integration

ROWS = [
    {
        "sentence_index": 0,
        "context": "The Pellworth Museum opened in 1904 in the town of Caldry.",
        "sentence": "Its most famous exhibit is a bronze clock called the Marrow Bell.",
    },
    {
        "sentence_index": 1,
        "context": "",
        "sentence": "The Pellworth Museum opened in 1904 in the town of Caldry.",
    },
]


def test_openai_engine_generates_qa_over_http_from_the_serve_endpoint(serve_url):
    settings = GeneratorSettings(
        engine="openai",
        qa_per_sentence=2,
        max_new_tokens=160,
        openai=OpenAISettings(base_url=f"{serve_url}/v1", model="base", max_concurrency=2, timeout_s=300),
    )
    generator = QAGenerator(make_engine("openai", None, settings), settings)  # type: ignore[arg-type]
    results = generator.generate([dict(row) for row in ROWS])
    assert [r["sentence_index"] for r in results] == [0, 1]
    assert all(r["output_tokens"] > 0 for r in results)  # the server answered every request
    pairs = [pair for r in results for pair in json.loads(r["qa_json"])]
    assert pairs, f"no pair parsed from the base model's answers: {results}"
    assert all(pair["question"].strip() and pair["answer"].strip() for pair in pairs)


def test_wrong_model_name_is_a_counted_failure_not_a_crash(serve_url):
    settings = GeneratorSettings(
        engine="openai",
        qa_per_sentence=2,
        max_retries=0,
        openai=OpenAISettings(base_url=f"{serve_url}/v1", model="no-such-document", max_attempts=3, backoff_s=0.0),
    )
    generator = QAGenerator(make_engine("openai", None, settings), settings)  # type: ignore[arg-type]
    [result] = generator.generate([dict(ROWS[0])])
    assert result["malformed"] == 1 and json.loads(result["qa_json"]) == []
