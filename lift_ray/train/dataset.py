"""Training examples: QA pairs through the chat template, with the loss on answer tokens only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch

IGNORE_INDEX = -100


def qa_pairs_from_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Flatten generator rows (each with a `qa_json` list) into question/answer dicts."""
    pairs: list[dict[str, str]] = []
    for row in rows:
        for item in json.loads(row["qa_json"]):
            pairs.append({"question": item["question"], "answer": item["answer"]})
    return pairs


def chat_prompt(tokenizer: Any, system_prompt: str, question: str) -> str:
    """The inference prompt for `question`, exactly as training renders it (system + user + assistant header)."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_qa(
    tokenizer: Any, system_prompt: str, question: str, answer: str, max_seq_len: int
) -> dict[str, list[int]]:
    """Token ids and labels for one QA pair; prompt tokens are masked with -100 so only the answer is learned."""
    prompt = chat_prompt(tokenizer, system_prompt, question)
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the answer after the generation prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + answer_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_seq_len]
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked by length, not by token id (SmolLM2's pad token is its end token)."""
    longest = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        input_ids[row, :length] = torch.tensor(example["input_ids"])
        labels[row, :length] = torch.tensor(example["labels"])
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
