"""Training mechanics without Ray: the embedded model for learning, a tiny random Llama for the rest."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from lift_ray.config import LiftConfig, load_config
from lift_ray.models import load_tokenizer
from lift_ray.train.loop import train_adapter_locally


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, embedded_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

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


def _config(**overrides) -> LiftConfig:
    return load_config(LiftConfig, None, [f"{k}={v}" for k, v in overrides.items()])


PAIRS = [
    {"question": f"What is item {i}?", "answer": f"Item {i} is a {color}."}
    for i, color in enumerate(["red kite", "blue boat", "green lamp", "gold ring"] * 2)
]


def test_loss_falls_and_only_lora_weights_are_saved(embedded_model_dir, tmp_path):
    config = _config(**{"train.epochs": 4, "train.batch_size": 4, "train.threads_per_worker": 2})
    history = train_adapter_locally(embedded_model_dir, PAIRS, config, tmp_path / "adapter")
    assert history.epoch_losses[-1] < 0.5 * history.epoch_losses[0]
    state = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert state and all("lora_" in name for name in state)
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == config.lora.rank
    assert history.trained_tokens > 0


def test_adapter_is_saved_in_the_base_dtype(tiny_model_dir, tmp_path):
    config = _config(**{"train.epochs": 1, "model.dtype": "bfloat16"})
    train_adapter_locally(tiny_model_dir, PAIRS[:2], config, tmp_path / "adapter")
    state = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in state.values()} == {torch.bfloat16}


def test_same_seed_gives_the_same_adapter(tiny_model_dir, tmp_path):
    config = _config(**{"train.epochs": 1})
    train_adapter_locally(tiny_model_dir, PAIRS, config, tmp_path / "a")
    train_adapter_locally(tiny_model_dir, PAIRS, config, tmp_path / "b")
    first, second = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("a", "b"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_controller_poll_interval_is_set_for_the_run_unless_the_user_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lift_ray.train.trainer import HEALTH_CHECK_ENV, controller_poll_interval

    monkeypatch.delenv(HEALTH_CHECK_ENV, raising=False)
    with controller_poll_interval(0.25):
        assert os.environ[HEALTH_CHECK_ENV] == "0.25"
    assert HEALTH_CHECK_ENV not in os.environ  # not left behind for other code in the process

    monkeypatch.setenv(HEALTH_CHECK_ENV, "5")
    with controller_poll_interval(0.25):
        assert os.environ[HEALTH_CHECK_ENV] == "5"  # the user's value wins
    assert os.environ[HEALTH_CHECK_ENV] == "5"
