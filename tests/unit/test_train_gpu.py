"""A bf16 LoRA step on CUDA through the same AdapterTrainer code (run on a GPU machine: `pytest -m gpu`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lift_ray.config import LiftConfig, load_config
from lift_ray.train.loop import AdapterTrainer, DocumentJob

pytestmark = pytest.mark.gpu


def test_bf16_training_step_on_cuda(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    assert torch.cuda.is_available(), "this test needs CUDA"
    words = ["<pad>", "<s>", "</s>", *[f"w{i}" for i in range(200)], "?", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant {% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    lift: LiftConfig = load_config(LiftConfig, None, ["model.dtype=bfloat16", "train.epochs=1", "train.batch_size=2"])
    trainer = AdapterTrainer(tmp_path, lift, device="cuda")
    assert next(trainer.model.parameters()).device.type == "cuda"
    base = [p for n, p in trainer.model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base} == {torch.bfloat16} and not any(p.requires_grad for p in base)
    pairs = [{"question": f"w{i} w{i + 1} ?", "answer": f"w{i + 2} ."} for i in range(4)]
    saved = {}
    result = trainer.train_document(
        DocumentJob("gpu", rows=[{"sentence_index": 0, "qa_json": json.dumps(pairs)}]),
        on_adapter=lambda _j, d, _r: saved.update(files=sorted(p.name for p in d.iterdir())) or {},
    )
    assert result.status == "published" and len(result.history.step_losses) == 2
    assert all(torch.isfinite(torch.tensor(result.history.step_losses)))
    assert "adapter_model.safetensors" in saved["files"]
