"""Fixtures of the unit tests: an OpenAI-compatible HTTP server on loopback that misbehaves on purpose, and a
tiny random-weight Llama with the embedded model's tokenizer (training mechanics without the cost of 135M)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lift_ray.chat_stub import ChatStub, serving


@pytest.fixture
def serve_fake_llm() -> Iterator[Callable[[ChatStub], str]]:
    """Start a ChatStub on a free loopback port; yields a function (stub) -> base_url."""
    with serving() as start:
        yield start


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A 2-layer, 64-wide Llama with random weights (seed 0) and SmolLM2's tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lift_ray.models import load_tokenizer

    tokenizer = load_tokenizer(embedded_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
