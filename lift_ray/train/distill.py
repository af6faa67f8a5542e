"""Context distillation: the base model reading the text teaches the adapter that does not see it.

The teacher is the base model (adapter disabled) with the sentence's paragraph in its prompt; the student is the
base model plus the adapter, asked the bare question. At every answer token the student is pulled towards the
teacher's next-token distribution, kept as its top-k log-probabilities (KL(teacher || student) over those k
tokens and one bucket for the rest): the idea of context distillation (Snell et al. 2022), "Knowledge Modules" /
deep context distillation (Caccia et al., COLM 2025) and Cartridges' self-study (Eyuboglu et al. 2025). The
template's close of the answer (`<|im_end|>`) is always taught by cross-entropy: a teacher reading a passage
wants to go on writing there ("Ilsa Varnholt founded ..."), and a student that learned that would not stop.

The same loss keeps what the model knew (`train.guard_examples`): general prompts shipped with the package
(`data/general_prompts.jsonl`, nothing downloaded), where the teacher is the base model seeing the very same
prompt, so the adapter is pulled back to the base model's own distribution there.

Plain PyTorch, no Ray: `AdapterTrainer` (`loop.py`) calls these.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lift_ray.train.dataset import IGNORE_INDEX, chat_prompt, tokenize_qa

GENERAL_PROMPTS_FILE = Path(__file__).resolve().parent / "data" / "general_prompts.jsonl"
TEACHER_PROMPT = (
    "Here is a passage.\n\n{context}\n\nAnswer the question about the passage briefly.\nQuestion: {question}"
)
TEACHER_BATCH = 8

# Configs whose forward rescales or caps the logits after the output layer: those models take the plain path.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def teacher_context(row: dict[str, Any], max_chars: int) -> str:
    """What the teacher reads for a sentence row: the end of its preceding paragraph, then the sentence."""
    context = str(row.get("context") or "")
    if len(context) > max_chars:
        context = context[-max_chars:]
        space = context.find(" ")
        context = context[space + 1 :] if 0 <= space < 40 else context
    return f"{context} {row.get('sentence') or ''}".strip()


def teacher_question(question: str, context: str) -> str:
    """The teacher's user turn: the passage, then the question (the bare question when there is no passage)."""
    return TEACHER_PROMPT.format(context=context, question=question) if context else question


def teacher_key(user_turn: str, answer: str) -> str:
    """Key of one teacher distribution: the teacher's prompt and the answer it is forced through."""
    return hashlib.sha256(json.dumps([user_turn, answer]).encode()).hexdigest()[:24]


def answer_ids(example: dict[str, Any]) -> list[int]:
    """The labelled (answer) token ids of an example, in order."""
    return [label for label in example["labels"] if label != IGNORE_INDEX]


def causal_lm_of(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logits_at(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the positions `where` (a bool mask over `input_ids`) only, shape [n, vocab].

    The output layer runs on those positions alone: on a 49k-word vocabulary, running it on every prompt and
    padding position costs more time and memory than the answers it is for.
    """
    causal_lm = causal_lm_of(model)
    if any(getattr(causal_lm.config, name, None) for name in LOGIT_POSTPROCESSING):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[where]
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return causal_lm.get_output_embeddings()(hidden[where])


@torch.no_grad()
def teacher_topk(
    model: Any,
    tokenizer: Any,
    system_prompt: str,
    items: Sequence[tuple[str, list[int]]],
    top_k: int,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each (teacher user turn, answer ids): the base model's top-k token ids and log-probabilities at every
    answer position, forced through the answer ([n, k] int64 and [n, k] float32, n = len(answer ids)).

    `model` is a peft model whose adapter is disabled for the call (or a plain transformers model).
    """
    from contextlib import nullcontext

    was_training = model.training
    model.eval()
    disabled = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with disabled:
            for start in range(0, len(items), TEACHER_BATCH):
                chunk = items[start : start + TEACHER_BATCH]
                sequences, answer_starts = [], []
                for user_turn, answer in chunk:
                    prompt = tokenizer(chat_prompt(tokenizer, system_prompt, user_turn), add_special_tokens=False)
                    prompt_ids = prompt["input_ids"]
                    sequences.append(prompt_ids + answer)
                    answer_starts.append(len(prompt_ids))
                longest = max(len(s) for s in sequences)
                input_ids = torch.full((len(chunk), longest), tokenizer.pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), longest), dtype=torch.long)
                where = torch.zeros((len(chunk), longest), dtype=torch.bool)
                for row, (sequence, first) in enumerate(zip(sequences, answer_starts, strict=True)):
                    input_ids[row, : len(sequence)] = torch.tensor(sequence)
                    attention_mask[row, : len(sequence)] = 1
                    where[row, first - 1 : len(sequence) - 1] = True  # positions that predict answer tokens
                logits = logits_at(model, input_ids.to(device), attention_mask.to(device), where.to(device))
                logprobs, ids = torch.log_softmax(logits.float(), dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
                for part_ids, part_logprobs in zip(
                    ids.split(where.sum(1).tolist()), logprobs.split(where.sum(1).tolist()), strict=True
                ):
                    results.append((part_ids.cpu(), part_logprobs.cpu()))
    finally:
        model.train(was_training)
    return results


def _with_rest(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """[n, k] top-k log-probabilities plus a (k+1)-th column: the log of the probability left for all other tokens."""
    covered = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True).clamp(max=-1e-6)
    rest = torch.log(-torch.expm1(covered)).clamp(min=-30.0)  # log(1 - p_covered), stable near 1
    return torch.cat([topk_logprobs, rest], dim=-1)


def distill_loss(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Per position KL(teacher || student) over the teacher's top-k tokens plus one bucket for every other token.

    `logits`: the student's [n, vocab]; `teacher_ids`, `teacher_logprobs`: [n, k] (log-probabilities over the
    whole vocabulary). Returns [n]; 0 exactly where the student gives those k tokens the teacher's probabilities,
    and mass the teacher puts elsewhere is not free for the student to take.
    """
    student = _with_rest(torch.log_softmax(logits.float(), dim=-1).gather(1, teacher_ids))
    teacher = _with_rest(teacher_logprobs.float())
    return (teacher.exp() * (teacher - student)).sum(-1)


def load_general_prompts(path: Path = GENERAL_PROMPTS_FILE) -> list[dict[str, str]]:
    """The guard's general prompts: `{"question", "answer"}` lines (the answer only carries the teacher's forcing)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise ValueError(f"{path}:{number}: needs string `question` and `answer`")
    return rows


def guard_examples(
    tokenizer: Any, system_prompt: str, max_seq_len: int, weight: float, path: Path = GENERAL_PROMPTS_FILE
) -> list[dict[str, Any]]:
    """The guard's examples: no cross-entropy, KL to the base model reading the same prompt, `weight` each."""
    examples = []
    for row in load_general_prompts(path):
        example: dict[str, Any] = tokenize_qa(tokenizer, system_prompt, row["question"], row["answer"], max_seq_len)
        example.update(weight=0.0, kl_weight=weight, teacher_user=row["question"])
        example["teacher_key"] = teacher_key(row["question"], row["answer"])
        examples.append(example)
    return examples


def guard_sample(examples: list[dict[str, Any]], count: int, seed: int, epoch: int) -> list[dict[str, Any]]:
    """`count` guard examples for one epoch (a different draw each epoch, the same on every rank)."""
    if count <= 0 or not examples:
        return []
    rng = random.Random(seed * 1009 + epoch)
    return [examples[i] for i in rng.sample(range(len(examples)), min(count, len(examples)))]


def attach_teachers(examples: list[dict[str, Any]], cache: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
    """Put cached teacher distributions on `examples` that want one; returns the keys still missing."""
    missing = []
    for example in examples:
        if example.get("kl_weight") and "teacher_ids" not in example:
            entry = cache.get(example["teacher_key"])
            if entry is None:
                missing.append(example["teacher_key"])
            else:
                example["teacher_ids"], example["teacher_logprobs"] = entry
    return missing


def shift_teacher(example: dict[str, Any], length: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The example's teacher tensors laid out over its `length` label positions (rows at its labelled ones)."""
    ids = torch.zeros((length, top_k), dtype=torch.long)
    logprobs = torch.zeros((length, top_k), dtype=torch.float32)
    labelled = torch.tensor([label != IGNORE_INDEX for label in example["labels"]], dtype=torch.bool)
    if "teacher_ids" in example:
        teacher_ids, teacher_logprobs = example["teacher_ids"], example["teacher_logprobs"]
        if int(labelled.sum()) != teacher_ids.shape[0]:
            raise ValueError(f"teacher covers {teacher_ids.shape[0]} tokens, the example labels {int(labelled.sum())}")
        ids[: len(labelled)][labelled, : teacher_ids.shape[1]] = teacher_ids
        logprobs[: len(labelled)][labelled, : teacher_ids.shape[1]] = teacher_logprobs
    return ids, logprobs
