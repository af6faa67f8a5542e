"""The quality gate: before an adapter is published, ask it questions it was not trained on and score the answers.

Each document gives up a few of its generated pairs (`dataset.holdout_split`: a question whose answer another
question of the same sentence also gives, so the fact is trained under another wording). After training the
adapter answers them greedily, without the document; a reply counts when it gives the held-out answer
(`metrics.answers_agree`). The share answered is the adapter's `holdout_score`, recorded in its manifest, its
job report line and `/v1/models`. Plain PyTorch, no Ray.
"""

from __future__ import annotations

from typing import Any

import torch

from lift_ray.metrics import answers_agree
from lift_ray.train.dataset import chat_prompt

ANSWER_BATCH = 8


@torch.no_grad()
def greedy_answers(
    model: Any, tokenizer: Any, system_prompt: str, questions: list[str], max_new_tokens: int, device: torch.device
) -> list[str]:
    """The model's greedy replies to bare questions, asked exactly as training renders them (left-padded batches)."""
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(questions), ANSWER_BATCH):
            prompts = [
                tokenizer(chat_prompt(tokenizer, system_prompt, q), add_special_tokens=False)["input_ids"]
                for q in questions[start : start + ANSWER_BATCH]
            ]
            longest = max(len(p) for p in prompts)
            input_ids = torch.full((len(prompts), longest), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
            for row, prompt in enumerate(prompts):
                input_ids[row, longest - len(prompt) :] = torch.tensor(prompt)
                attention_mask[row, longest - len(prompt) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            replies.extend(tokenizer.batch_decode(output[:, longest:], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return [reply.strip() for reply in replies]


def agreements(replies: list[str], pairs: list[dict[str, str]]) -> int:
    """How many replies give their pair's answer."""
    return sum(answers_agree(reply, pair["answer"]) for reply, pair in zip(replies, pairs, strict=True))
