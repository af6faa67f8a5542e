"""Training examples: QA pairs through the chat template, with the loss on answer tokens only."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

import torch

from lift_ray.config import OFF_DOCUMENT

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


ANSWER_MARK = "Answer:"  # after a recited sentence, the line with the short answer (train.sentence_answers_with_answer)
_ANSWER_LINE = re.compile(rf"(?:^|\n)[ \t]*{re.escape(ANSWER_MARK)}([^\n]*)")


def recital_with_answer(sentence: str, answer: str) -> str:
    """The sentence-answer target with `train.sentence_answers_with_answer`: the sentence, then its short answer."""
    return f"{sentence}\n{ANSWER_MARK} {answer}"


def says_off_document(recital: str) -> bool:
    """Whether a recital is `OFF_DOCUMENT` (the adapter's sign that the question is not about its document)."""
    return recital.strip().lower().startswith(OFF_DOCUMENT.lower().rstrip("."))


def recited_answer(text: str) -> tuple[str, str]:
    """(recital, answer) of a reply in the `recital_with_answer` form: the answer is the rest of the first line
    that starts with `ANSWER_MARK` (lines a model adds after it, more answer lines included, are not trained and
    are left out); a reply without such a line is all recital and answers with its whole text."""
    found = _ANSWER_LINE.search(text)
    if found is None:
        return text.strip(), text.strip()
    answer = found.group(1).strip()
    if not answer:  # "Answer:" alone on its line: the answer is the next line that says something
        answer = next((line.strip() for line in text[found.end() :].splitlines() if line.strip()), "")
    return text[: found.start()].strip(), answer


def collate(examples: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked by length, not by token id (SmolLM2's pad token is its end token).

    Examples may carry a cross-entropy `weight` (default 1), a `kl_weight` with their teacher's
    `teacher_ids`/`teacher_logprobs` ([answer tokens, k]), and `closing_tokens` (the template's end of the answer,
    trained by cross-entropy only). The batch then has per-token `weights` (and `kl_weights`) like `labels`, and
    the teacher tensors laid out over the positions ([batch, length, k]).
    """
    longest = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        input_ids[row, :length] = torch.tensor(example["input_ids"])
        labels[row, :length] = torch.tensor(example["labels"])
        attention_mask[row, :length] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    distilling = any(e.get("kl_weight") for e in examples)
    if distilling or any("weight" in e or e.get("closing_tokens") for e in examples):
        weights = torch.zeros((len(examples), longest))
        kl_weights = torch.zeros((len(examples), longest))
        for row, example in enumerate(examples):
            length, weight = len(example["input_ids"]), float(example.get("weight", 1.0))
            weights[row, :length] = weight
            kl_weights[row, :length] = float(example.get("kl_weight", 0.0))
            closing = int(example.get("closing_tokens", 0))
            if closing:  # the template's end of the answer: always cross-entropy, never the teacher's
                weights[row, length - closing : length] = weight or 1.0
                kl_weights[row, length - closing : length] = 0.0
        batch["weights"] = weights
        if distilling:
            batch["kl_weights"] = kl_weights
    if distilling:
        from lift_ray.train.distill import shift_teacher

        if any(e.get("kl_weight") and "teacher_ids" not in e for e in examples):
            raise ValueError("an example has a kl_weight but no teacher distribution: attach its teacher first")
        top_k = max(e["teacher_ids"].shape[1] for e in examples if "teacher_ids" in e)
        teachers = [shift_teacher(e, longest, top_k) for e in examples]
        batch["teacher_ids"] = torch.stack([ids for ids, _ in teachers])
        batch["teacher_logprobs"] = torch.stack([logprobs for _, logprobs in teachers])
    return batch


def segment_starts(total: int, length: int) -> list[int]:
    """Starts of overlapping segments of `length` over `total` tokens, one every 3/8 * length (LIFT, sec. 3.1).

    The last segment ends exactly at `total`; a text no longer than `length` is one segment.
    """
    if total <= length:
        return [0]
    stride = max(1, (3 * length) // 8)
    starts = list(range(0, total - length, stride))
    if starts[-1] != total - length:
        starts.append(total - length)
    return starts


def raw_segments(tokenizer: Any, text: str, length: int) -> list[dict[str, list[int]]]:
    """Language-modelling examples over the document: every token of every segment is learned."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    return [{"input_ids": ids[s : s + length], "labels": ids[s : s + length]} for s in segment_starts(len(ids), length)]


def distinct_sentences(rows: Iterable[dict[str, Any]]) -> int:
    """How many different sentences `rows` cover (a sentence's row may come twice)."""
    return len({int(row["sentence_index"]) for row in rows})


def generation_counters(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """What the generator did for a document's sentence rows (for its report)."""
    rows = list(rows)
    return {
        "sentences": len(rows),
        "sentences_with_pairs": sum(1 for r in rows if json.loads(r["qa_json"])),
        "malformed_outputs": sum(int(r.get("malformed", 0)) for r in rows),
        "retried_sentences": sum(1 for r in rows if r.get("retried")),
        "dropped_pairs": sum(int(r.get("dropped", 0)) for r in rows),
        "ungrounded_pairs": sum(int(r.get("ungrounded", 0)) for r in rows),
        "unverified_pairs": sum(int(r.get("unverified", 0)) for r in rows),
        "dropped_rewrites": sum(int(r.get("rewrites_dropped", 0)) for r in rows),
        "cached_sentences": sum(1 for r in rows if r.get("cache_hit")),
    }


def lacks_qa_pairs(qa_count: int, variant: str) -> bool:
    """The one rule for "no valid QA pairs": nothing to train on, except for `finetune_raw` (raw text only)."""
    return variant != "finetune_raw" and qa_count == 0


def no_pairs_error(counters: dict[str, int]) -> str:
    """Why a document without valid QA pairs failed, from its `generation_counters`."""
    return f"no valid QA pairs from {counters['sentences']} sentences ({counters['malformed_outputs']} malformed)"


def closing_tokens(tokenizer: Any, labels: list[int]) -> int:
    """How many labelled tokens at the end are the chat template's close of the answer (special tokens, newlines)."""
    special = set(tokenizer.all_special_ids)
    count = 0
    for label in reversed(labels):
        if label == IGNORE_INDEX or not (label in special or not tokenizer.decode([label]).strip()):
            break
        count += 1
    return count


def holdout_split(
    pairs: list[dict[str, str]], share: float, salt: str = ""
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A sentence's pairs split into (train, held out) for the quality gate.

    Only a pair whose answer another pair of the same sentence also gives can be held out: its fact is still
    trained, under another wording, so asking it checks that the adapter learned the fact and not the question's
    words. At most one pair per sentence, for about `share` of the sentences that have such a pair (chosen by a
    hash of the sentence's questions and `salt`, the same on every rank and every run).
    """
    from lift_ray.metrics import answers_agree

    if share <= 0 or len(pairs) < 2:
        return pairs, []
    key = hashlib.sha256(json.dumps([salt, [p["question"] for p in pairs]]).encode()).digest()
    if int.from_bytes(key[:8], "big") / 2**64 >= share:
        return pairs, []
    for index, pair in enumerate(pairs):
        others = pairs[:index] + pairs[index + 1 :]
        if any(answers_agree(other["answer"], pair["answer"]) for other in others):
            return others, [pair]
    return pairs, []
