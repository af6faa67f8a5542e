"""LoRA adapter folders in PEFT's layout, written from a Llama-style model's config.json alone.

Serving needs one: the all-zero adapter that base-model requests carry through vLLM on CPU
(`write_zero_adapter`). Shapes come from config.json, so no model is loaded to write one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ATTENTION = ["q_proj", "v_proj"]


def lora_shapes(model_dir: Path, rank: int, target_modules: list[str]) -> dict[str, tuple[int, ...]]:
    """PEFT tensor name -> shape of every LoRA matrix of a Llama-style model (config.json only)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    dims = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    shapes = {}
    for layer in range(config["num_hidden_layers"]):
        for module in target_modules:
            group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{group}.{module}"
            fan_in, fan_out = dims[module]
            shapes[f"{prefix}.lora_A.weight"] = (rank, fan_in)
            shapes[f"{prefix}.lora_B.weight"] = (fan_out, rank)
    return shapes


def write_lora_adapter(
    model_dir: Path, out_dir: Path, tensors: dict[str, Any], rank: int, target_modules: list[str]
) -> Path:
    """`out_dir` as a PEFT adapter folder: `tensors` (safetensors) and a LoRA config (alpha 2 x `rank`)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def write_zero_adapter(model_dir: Path, out_dir: Path, rank: int = 1, target_modules: list[str] | None = None) -> Path:
    """A PEFT adapter folder whose every weight is zero: the model with it answers as the base model does."""
    import torch

    modules = target_modules or ATTENTION
    tensors = {name: torch.zeros(shape) for name, shape in lora_shapes(model_dir, rank, modules).items()}
    return write_lora_adapter(model_dir, out_dir, tensors, rank, modules)
