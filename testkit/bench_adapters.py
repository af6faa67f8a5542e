"""Random-weight LoRA adapters in PEFT's layout for a Llama-style model: test and benchmark material.

Shapes come from the model's config.json alone, so thousands can be written without loading the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lift_ray.serving.lora_files import ATTENTION, lora_shapes, write_lora_adapter


def write_random_adapter(
    model_dir: Path,
    out_dir: Path,
    rank: int = 8,
    target_modules: list[str] | None = None,
    seed: int = 0,
    strength: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A PEFT adapter folder with random A (unit-scale outputs) and B (std 0.05 x `strength`)."""
    modules = target_modules or ATTENTION
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in lora_shapes(model_dir, rank, modules).items():
        std = 0.05 * strength if ".lora_B." in name else shape[1] ** -0.5
        tensors[name] = (torch.randn(shape, generator=generator) * std).to(dtype)
    return write_lora_adapter(model_dir, out_dir, tensors, rank, modules)
