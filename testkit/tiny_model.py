"""A tiny random-weight model for tests and benchmarks that measure everything but the model."""

from __future__ import annotations

from pathlib import Path


def write_tiny_llama(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A 2-layer, 64-wide Llama with random weights (`seed`) and the tokenizer of `tokenizer_dir`, saved as a
    model folder in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lift_ray.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
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
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
