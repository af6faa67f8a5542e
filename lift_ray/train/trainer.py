"""Ray Train wiring: data-parallel LoRA SFT of one document's QA pairs with TorchTrainer."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lift_ray.config import LiftConfig
from lift_ray.models import resolve_base_model
from lift_ray.train.loop import (
    count_trained_tokens,
    load_model_for_training,
    make_optimizer,
    save_adapter,
    tokenize_batch,
    train_step,
)

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: LoRA-wrap the base model, DDP over the LoRA parameters, train, report."""
    import ray.train
    import ray.train.torch

    config = LiftConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    world_size, rank = context.get_world_size(), context.get_world_rank()
    if not config.train.use_gpu:
        torch.set_num_threads(config.train.threads_per_worker)
    model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
    tokenizer, model = load_model_for_training(model_dir, config)
    # DDP only all-reduces parameters that require grad: the LoRA weights.
    model = ray.train.torch.prepare_model(model)
    model.train()
    optimizer = make_optimizer(model, config)
    shard = ray.train.get_dataset_shard("train")
    per_worker_batch = max(1, config.train.batch_size // world_size)
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    trained_tokens = 0
    started = time.perf_counter()
    for epoch in range(config.train.epochs):
        losses = []
        for batch in shard.iter_batches(
            batch_size=per_worker_batch,
            batch_format="numpy",
            local_shuffle_buffer_size=256,
            local_shuffle_seed=config.seed + epoch,
        ):
            tensors = tokenize_batch(tokenizer, config, batch["question"], batch["answer"])
            losses.append(train_step(model, tensors, optimizer))
            trained_tokens += count_trained_tokens(tensors)
        step_losses.extend(losses)
        epoch_losses.append(sum(losses) / max(1, len(losses)))
        log.info("rank %d epoch %d loss %.4f", rank, epoch, epoch_losses[-1])
        if epoch < config.train.epochs - 1:
            ray.train.report({"epoch": epoch, "loss": epoch_losses[-1]})
    metrics = {
        "epoch": config.train.epochs - 1,
        "loss": epoch_losses[-1] if epoch_losses else float("nan"),
        "epoch_losses": epoch_losses,
        "step_losses": step_losses,
        # Tokens seen by all workers, assuming equal shards (Ray Data's equal split).
        "trained_tokens": trained_tokens * world_size,
        "train_loop_seconds": time.perf_counter() - started,
    }
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        if rank == 0:
            save_adapter(model, Path(checkpoint_dir), config.model.dtype)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))
        else:
            ray.train.report(metrics, checkpoint=None)


def train_document_adapter(
    config: LiftConfig, pairs: list[dict[str, str]], run_name: str, out_dir: Path
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on `pairs` with a TorchTrainer; copy it to `out_dir`; return the metrics."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    if not pairs:
        raise ValueError("no QA pairs to train on")
    dataset = ray.data.from_items(pairs)
    storage_path = (Path(config.work_dir) / "ray_train").resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(storage_path)),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without an adapter checkpoint")
    with result.checkpoint.as_directory() as checkpoint_dir:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(checkpoint_dir, out_dir)
    return dict(result.metrics or {})
