"""LoRA fine-tuning on QA pairs: plain PyTorch pieces, used alone or inside Ray Train workers."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lift_ray.config import LiftConfig, LoraSettings
from lift_ray.models import load_causal_lm, load_tokenizer, torch_dtype
from lift_ray.train.dataset import collate, tokenize_qa


@dataclass
class TrainingHistory:
    """Per-step losses and token counts of one adapter's training."""

    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    trained_tokens: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean loss of the last epoch."""
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


def make_lora_model(model: Any, lora: LoraSettings) -> Any:
    """Wrap `model` with a fresh LoRA adapter; only the adapter's parameters stay trainable."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def load_model_for_training(model_dir: Path, config: LiftConfig, device: str = "cpu") -> tuple[Any, Any]:
    """Tokenizer and a LoRA-wrapped base model, seeded so every worker starts from the same adapter."""
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(model_dir)
    model = make_lora_model(load_causal_lm(model_dir, config.model.dtype, device), config.lora)
    return tokenizer, model


def make_optimizer(model: Any, config: LiftConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable (LoRA) parameters only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)


def tokenize_batch(tokenizer: Any, config: LiftConfig, questions: Iterable[str], answers: Iterable[str]) -> dict:
    """Tokenised, padded tensors for a batch of QA pairs."""
    examples = [
        tokenize_qa(tokenizer, config.model.system_prompt, str(q), str(a), config.train.max_seq_len)
        for q, a in zip(questions, answers, strict=True)
    ]
    return collate(examples, tokenizer.pad_token_id)


def train_step(model: Any, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> float:
    """One optimizer step; returns the loss over answer tokens."""
    device = next(p.device for p in model.parameters())
    batch = {k: v.to(device) for k, v in batch.items()}
    loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def count_trained_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model read in a batch (padding excluded)."""
    return int(batch["attention_mask"].sum())


def save_adapter(model: Any, out_dir: Path, dtype: str) -> Path:
    """Save the LoRA adapter as a PEFT folder, its weights cast to the base model's dtype."""
    unwrapped = model.module if hasattr(model, "module") else model
    state_dtype = torch_dtype(dtype)
    from peft import get_peft_model_state_dict

    state = {k: v.detach().to(state_dtype).contiguous() for k, v in get_peft_model_state_dict(unwrapped).items()}
    unwrapped.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
    return out_dir


def shuffled_batches(pairs: list[dict[str, str]], batch_size: int, seed: int) -> Iterator[tuple[list[str], list[str]]]:
    """Question and answer lists of one epoch, shuffled with `seed`."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        chosen = [pairs[i] for i in order[start : start + batch_size]]
        yield [p["question"] for p in chosen], [p["answer"] for p in chosen]


def train_adapter_locally(
    model_dir: Path, pairs: list[dict[str, str]], config: LiftConfig, out_dir: Path
) -> TrainingHistory:
    """Train an adapter in this process (no Ray): the reference the Ray Train path must match."""
    torch.set_num_threads(max(1, config.train.threads_per_worker))
    tokenizer, model = load_model_for_training(model_dir, config)
    model.train()
    optimizer = make_optimizer(model, config)
    history = TrainingHistory()
    started = time.perf_counter()
    for epoch in range(config.train.epochs):
        losses = []
        for questions, answers in shuffled_batches(pairs, config.train.batch_size, config.seed + epoch):
            batch = tokenize_batch(tokenizer, config, questions, answers)
            losses.append(train_step(model, batch, optimizer))
            history.trained_tokens += count_trained_tokens(batch)
        history.step_losses.extend(losses)
        history.epoch_losses.append(sum(losses) / max(1, len(losses)))
    history.seconds = time.perf_counter() - started
    save_adapter(model, out_dir, config.model.dtype)
    return history
