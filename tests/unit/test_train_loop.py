"""Training mechanics without Ray: the embedded model for learning, a tiny random Llama for the rest."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from lift_ray.config import LiftConfig, load_config
from lift_ray.train.loop import train_adapter_locally


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


def test_loss_on_labelled_positions_only_equals_the_loss_over_full_logits(tiny_model_dir):
    import torch.nn.functional as F

    from lift_ray.models import load_causal_lm
    from lift_ray.train.dataset import IGNORE_INDEX
    from lift_ray.train.loop import make_lora_model, token_loss_sum

    torch.manual_seed(1)
    model = make_lora_model(load_causal_lm(tiny_model_dir), _config().lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter, so that the LoRA path changes the logits
            param.data.normal_(0, 0.05)
    input_ids = torch.randint(0, 1000, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[2, 9:] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    batch["weights"] = torch.tensor([1.0, 0.5, 2.0])

    loss, labelled = token_loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="none")
    reference = (full.view(3, 11) * batch["weights"][:, None]).sum()
    reference.backward()

    assert labelled == int((labels[:, 1:] != IGNORE_INDEX).sum()) == 18
    assert torch.allclose(loss, reference, rtol=1e-5)
    assert grads and grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.allclose(grads[name], param.grad, rtol=1e-4, atol=1e-7), name
