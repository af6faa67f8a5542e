"""The transformers backend: `HFChatEngine`, and the pieces that other transformers users share.

`generate_batch` runs one left-padded `generate` call and cuts every reply after its first end token;
`length_batches` groups prompts of similar length; `active_adapter` picks a peft adapter (or none) for a
call. The evaluation's answerer and serving's `HFPeftEngine` are built from them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lift_ray.engines.base import ChatEngine, Conversation, Generation, SamplingSettings


def render_prompts(tokenizer: Any, conversations: list[Conversation]) -> list[str]:
    """Each conversation through the tokenizer's chat template, ready for the assistant's reply."""
    return [tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv in conversations]


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a reply: the model's generation config, else the tokenizer's end token."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


def decoding_kwargs(temperature: float) -> dict[str, Any]:
    """`generate` arguments for plain sampling at `temperature` (no top-k or top-p), or greedy at 0."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}


def length_batches(lengths: list[int], batch_size: int, longest_first: bool = False) -> list[list[int]]:
    """Indices into `lengths` in batches of at most `batch_size`, similar lengths together (little padding)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=longest_first)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate_batch(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, temperature: float, end_ids: set[int]
) -> list[tuple[list[int], int]]:
    """One `generate` call over `prompts` (left padding): per prompt, its reply's token ids up to and
    including the first of `end_ids`, and its own prompt length in tokens."""
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **decoding_kwargs(temperature),
        )
    replies = output[:, batch["input_ids"].shape[1] :].tolist()
    prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
    rows = []
    for reply, length in zip(replies, prompt_tokens, strict=True):
        # Keep the tokens up to and including the first end token (the pad token may be an end token too).
        end = next((i + 1 for i, token in enumerate(reply) if token in end_ids), len(reply))
        rows.append((reply[:end], int(length)))
    return rows


@contextmanager
def active_adapter(model: Any, name: str | None) -> Iterator[None]:
    """A peft model with its adapter `name` active; None: with every adapter disabled (the base model)."""
    if name is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


class HFChatEngine(ChatEngine):
    """transformers `generate`, batched with left padding; `SamplingSettings.json_schema` is ignored."""

    name = "hf"

    def __init__(self, model_dir: Path, dtype: str = "float32", device: str = "cpu", max_batch_size: int = 16) -> None:
        from lift_ray.models import load_causal_lm, load_tokenizer

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model_dir = Path(model_dir)
        self.device = device
        self.max_batch_size = max_batch_size
        self.tokenizer = load_tokenizer(self.model_dir)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(self.model_dir, dtype=dtype, device=device).eval()
        self.end_ids = end_token_ids(self.model, self.tokenizer)

    def generate(self, conversations: list[Conversation], sampling: SamplingSettings) -> list[Generation]:
        """One `Generation` per conversation; prompts of similar length are batched together."""
        import torch

        if not conversations:
            return []
        prompts = render_prompts(self.tokenizer, conversations)
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        results: dict[int, Generation] = {}
        torch.manual_seed(sampling.seed)
        for chunk in length_batches(lengths, self.max_batch_size, longest_first=True):
            rows = generate_batch(
                self.model,
                self.tokenizer,
                [prompts[i] for i in chunk],
                sampling.max_new_tokens,
                sampling.temperature,
                self.end_ids,
            )
            for index, (tokens, _) in zip(chunk, rows, strict=True):
                results[index] = Generation(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens))
        return [results[i] for i in range(len(prompts))]
