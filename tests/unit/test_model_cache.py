"""The converted-model cache: correct when a non-zero rank of a process group converts, and self-repairing."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from lift_ray.models import EMBEDDED_NAME, ensure_embedded_model, is_converted_model


def _convert_on_rank_one(rank: int, port: int, cache_dir: str) -> None:
    """Rank 1 of a 2-process gloo group converts the embedded model, as a Ray Train worker on a fresh node does."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 1:
            ensure_embedded_model(Path(cache_dir))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_non_zero_rank_converts_a_complete_model_and_repairs_a_folder_without_weights(tmp_path, embedded_model_dir):
    from safetensors.torch import load_file

    cache_dir = tmp_path / "cache"
    broken = cache_dir / "models" / EMBEDDED_NAME
    broken.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", ".lift-ray-complete"):  # what the old bug left
        shutil.copy(embedded_model_dir / name, broken / name)
    assert not is_converted_model(broken)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_convert_on_rank_one, args=(port, str(cache_dir)), nprocs=2, start_method="spawn")

    assert is_converted_model(broken)
    # The weights file holds what transformers' own save_pretrained writes (a tied output layer left out: vLLM
    # would take a stored lm_head.weight over the tie), and the same values as the driver's conversion.
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(broken).save_pretrained(tmp_path / "resaved")
    converted = load_file(broken / "model.safetensors")
    resaved = load_file(tmp_path / "resaved" / "model.safetensors")
    reference = load_file(embedded_model_dir / "model.safetensors")
    assert converted.keys() == resaved.keys() == reference.keys()
    assert "lm_head.weight" not in converted
    assert json.loads((broken / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert all(torch.equal(converted[k], resaved[k]) and torch.equal(converted[k], reference[k]) for k in reference)
