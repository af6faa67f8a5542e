"""The OpenAI-compatible engine against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import json
import time

from lift_ray.config import GeneratorSettings, OpenAISettings
from lift_ray.engines import OpenAIChatEngine, SamplingSettings, make_engine
from lift_ray.synth.generator import QAGenerator
from lift_ray.synth.prompts import build_messages
from testkit.chat_stub import ChatStub, replay_recorded_pairs


def _conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"prompt {i}"}] for i in range(n)]


def test_replies_come_back_in_order_with_token_counts(serve_fake_llm):
    behaviour = ChatStub()
    engine = OpenAIChatEngine(OpenAISettings(base_url=serve_fake_llm(behaviour), model="tiny"))
    generations = engine.generate(_conversations(5), SamplingSettings(max_new_tokens=32, seed=3))
    assert [g.text for g in generations] == [f"echo: prompt {i}" for i in range(5)]
    assert all(g.output_tokens == 7 and g.error is None for g in generations)
    assert {b["model"] for b in behaviour.bodies} == {"tiny"}
    assert {b["max_tokens"] for b in behaviour.bodies} == {32}


def test_the_api_key_is_sent_as_a_bearer_token_only_when_set(serve_fake_llm, monkeypatch):
    behaviour = ChatStub()
    settings = OpenAISettings(base_url=serve_fake_llm(behaviour), api_key_env="LIFT_RAY_TEST_KEY")
    monkeypatch.delenv("LIFT_RAY_TEST_KEY", raising=False)
    OpenAIChatEngine(settings).generate(_conversations(1), SamplingSettings())
    monkeypatch.setenv("LIFT_RAY_TEST_KEY", "sk-test")
    OpenAIChatEngine(settings).generate(_conversations(1), SamplingSettings())
    assert [headers.get("authorization") for headers in behaviour.headers] == [None, "Bearer sk-test"]


def test_5xx_and_429_are_retried_with_backoff(serve_fake_llm):
    for status in (503, 429):
        behaviour = ChatStub(failures=2, fail_status=status)
        settings = OpenAISettings(base_url=serve_fake_llm(behaviour), max_attempts=3, backoff_s=0.05)
        started = time.perf_counter()
        generations = OpenAIChatEngine(settings).generate(_conversations(2), SamplingSettings())
        assert [g.error for g in generations] == [None, None], status
        assert set(behaviour.attempts.values()) == {3}
        assert time.perf_counter() - started >= 0.05 + 0.1  # two waits (the SDK's: 0.375-0.5 s, then 0.75-1 s)


def test_a_request_that_keeps_failing_is_an_empty_generation_with_its_reason(serve_fake_llm):
    behaviour = ChatStub(failures=10)
    settings = OpenAISettings(base_url=serve_fake_llm(behaviour), max_attempts=2, backoff_s=0.0)
    [generation] = OpenAIChatEngine(settings).generate(_conversations(1), SamplingSettings())
    assert generation.text == "" and "HTTP 503" in generation.error
    assert behaviour.attempts == {"prompt 0": 2}


def test_client_errors_are_not_retried(serve_fake_llm):
    behaviour = ChatStub(failures=10, fail_status=400)
    settings = OpenAISettings(base_url=serve_fake_llm(behaviour), max_attempts=4, backoff_s=0.0)
    [generation] = OpenAIChatEngine(settings).generate(_conversations(1), SamplingSettings())
    assert "HTTP 400" in generation.error and behaviour.attempts == {"prompt 0": 1}


def test_timeouts_are_retried_then_reported(serve_fake_llm):
    behaviour = ChatStub(delay_s=1.0)
    settings = OpenAISettings(base_url=serve_fake_llm(behaviour), max_attempts=2, backoff_s=0.0, timeout_s=0.2)
    [generation] = OpenAIChatEngine(settings).generate(_conversations(1), SamplingSettings())
    assert generation.error is not None and "timed out" in generation.error.lower()
    assert behaviour.attempts == {"prompt 0": 2}


def test_unreachable_server_is_reported_not_raised():
    settings = OpenAISettings(base_url="http://127.0.0.1:9/v1", max_attempts=2, backoff_s=0.0, timeout_s=2)
    [generation] = OpenAIChatEngine(settings).generate(_conversations(1), SamplingSettings())
    assert generation.text == "" and generation.error


def test_concurrency_is_bounded(serve_fake_llm):
    behaviour = ChatStub(delay_s=0.2)
    settings = OpenAISettings(base_url=serve_fake_llm(behaviour), max_concurrency=3)
    generations = OpenAIChatEngine(settings).generate(_conversations(9), SamplingSettings())
    assert len(generations) == 9 and all(g.error is None for g in generations)
    assert behaviour.max_in_flight == 3


def test_json_schema_is_sent_as_response_format(serve_fake_llm):
    behaviour = ChatStub()
    engine = OpenAIChatEngine(OpenAISettings(base_url=serve_fake_llm(behaviour)))
    schema = {"type": "object"}
    engine.generate(_conversations(1), SamplingSettings(json_schema=schema))
    assert behaviour.bodies[0]["response_format"]["json_schema"]["schema"] == schema


def test_generator_counts_failed_requests_as_malformed_and_retries_them(serve_fake_llm):
    reply = json.dumps({"qa_list": [{"question": "Who built the bridge?", "answer": "Ada Brun"}]})
    behaviour = ChatStub(failures=1, reply=reply)
    settings = GeneratorSettings(
        engine="openai",
        qa_per_sentence=2,
        openai=OpenAISettings(base_url=serve_fake_llm(behaviour), max_attempts=1, backoff_s=0.0),
    )
    generator = QAGenerator(make_engine("openai", None, settings), settings)  # type: ignore[arg-type]
    row = {"sentence_index": 0, "sentence": "Ada Brun built the bridge.", "context": ""}
    [result] = generator.generate([row])
    assert result["malformed"] == 1 and result["retried"] is True
    assert json.loads(result["qa_json"]) == [{"question": "Who built the bridge?", "answer": "Ada Brun"}]


def test_recorded_pairs_are_replayed_for_the_prompts_sentence(serve_fake_llm):
    rows = [
        {"sentence": "The mill was built in 1801.", "qa_json": json.dumps([{"question": "When?", "answer": "1801"}])},
        {"sentence": "It burned in 1850.", "qa_json": "[]"},
    ]
    behaviour = ChatStub(reply=replay_recorded_pairs(rows))
    engine = OpenAIChatEngine(OpenAISettings(base_url=serve_fake_llm(behaviour)))
    conversations = [
        build_messages("", "The mill was built in 1801.", m=2),
        build_messages("The mill was built in 1801.", "It burned in 1850.", m=2),
        build_messages("", "A sentence nobody recorded.", m=2),
    ]
    replies = [json.loads(g.text) for g in engine.generate(conversations, SamplingSettings(max_new_tokens=64))]
    assert replies == [{"qa_list": [{"question": "When?", "answer": "1801"}]}, {"qa_list": []}, {"qa_list": []}]
