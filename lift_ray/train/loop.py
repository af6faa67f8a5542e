"""LoRA fine-tuning: plain PyTorch pieces, used alone (one process) or inside Ray Train workers.

`AdapterTrainer` holds one base model and trains a fresh LoRA adapter per document on it, so a worker
pays model start-up once for any number of documents. Data parallelism goes through a `Collective`
(one process: `LocalCollective`; Ray Train workers: `TorchCollective` over torch.distributed, gloo or
NCCL). Gradients of the trainable (LoRA) parameters only are summed with one all-reduce per step,
weighted by answer tokens, so any split of a batch over workers, even an uneven or empty one, gives
the same update as one process on the whole batch. That is what lets epoch 1 train on QA pairs as
they stream in, whatever worker they land on.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from lift_ray.config import OFF_DOCUMENT, RECITAL_TOKENS, LiftConfig, LoraSettings
from lift_ray.metrics import answer_in_question, answer_is_grounded
from lift_ray.models import load_causal_lm, load_tokenizer, torch_dtype
from lift_ray.train.dataset import (
    IGNORE_INDEX,
    closing_tokens,
    collate,
    distinct_sentences,
    generation_counters,
    holdout_split,
    lacks_qa_pairs,
    no_pairs_error,
    qa_pairs_from_rows,
    raw_segments,
    recital_with_answer,
    recited_answer,
    tokenize_qa,
)
from lift_ray.train.distill import (
    attach_teachers,
    distill_loss,
    guard_examples,
    guard_sample,
    load_general_prompts,
    logits_at,
    teacher_context,
    teacher_key,
    teacher_question,
    teacher_topk,
)
from lift_ray.train.gate import agreements, greedy_answers

log = logging.getLogger(__name__)


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


def save_adapter(model: Any, out_dir: Path, dtype: str) -> Path:
    """Save the LoRA adapter as a PEFT folder, its weights cast to the base model's dtype."""
    unwrapped = model.module if hasattr(model, "module") else model
    state_dtype = torch_dtype(dtype)
    from peft import get_peft_model_state_dict

    state = {k: v.detach().to(state_dtype).contiguous() for k, v in get_peft_model_state_dict(unwrapped).items()}
    unwrapped.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
    return out_dir


# --- data parallelism ---------------------------------------------------------------------------------------------


class Collective(Protocol):
    """What data-parallel training needs from a process group."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all ranks, in place; returns it."""
        ...

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` on every rank, in place; returns it."""
        ...

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        ...


class LocalCollective:
    """One process, no communication."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Nothing to sum with."""
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Already rank 0's."""
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Only this rank's."""
        return [obj]


class TorchCollective:
    """torch.distributed's default process group (gloo on CPU, NCCL on GPU), as Ray Train sets it up."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks."""
        self._dist.all_reduce(tensor)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's values everywhere."""
        self._dist.broadcast(tensor, src=0)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Pickled objects from every rank."""
        gathered: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(gathered, obj)
        return gathered


def allocate(available: list[int], batch_size: int) -> list[int]:
    """How many examples each rank puts into the next step: an even share first, then surplus in rank order.

    The total is min(batch_size, sum(available)); every rank computes the same answer from the same counts.
    """
    share = -(-batch_size // len(available))
    quota = [min(a, share) for a in available]
    room = min(batch_size, sum(available)) - sum(quota)
    for rank, a in enumerate(available):
        extra = min(max(0, room), a - quota[rank])
        quota[rank] += extra
        room -= extra
    while sum(quota) > batch_size:  # shares rounded up: trim from the last ranks
        rank = max(r for r, q in enumerate(quota) if q > 0)
        quota[rank] -= 1
    return quota


# --- documents arriving as rows -------------------------------------------------------------------------------------


class RowSource(Protocol):
    """Sentence rows (with `qa_json`) of many documents, arriving over time in any order."""

    def take(self, doc_id: str) -> list[dict[str, Any]]:
        """Rows of `doc_id` that arrived since the last call; never blocks."""
        ...

    def exhausted(self) -> bool:
        """True once no more rows will arrive at this source."""
        ...


class NoRows:
    """A source with nothing in it (every document's rows are known up front)."""

    def take(self, doc_id: str) -> list[dict[str, Any]]:
        """Nothing."""
        return []

    def exhausted(self) -> bool:
        """Always."""
        return True


class BufferedRowSource:
    """Reads an iterable of rows on a background thread and sorts them by document as they arrive.

    Inside a Ray Train worker the iterable is the worker's streaming split of the generator's Ray Dataset,
    so the trainer sees each QA row as soon as Ray Data delivers it and waits only when nothing is there.
    """

    _END = object()

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        import queue
        import threading

        self._queue: queue.Queue[Any] = queue.Queue()
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(rows,), name="lift-row-reader", daemon=True)
        self._thread.start()

    def _read(self, rows: Iterable[dict[str, Any]]) -> None:
        try:
            for row in rows:
                self._queue.put(row)
        except BaseException as exc:  # handed to the training thread, which raises it
            self._queue.put(exc)
        self._queue.put(self._END)

    def _drain(self) -> None:
        import queue

        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is self._END:
                self._done = True
            elif isinstance(item, BaseException):
                self._error = item
            else:
                row = plain_row(item)
                self._buffers.setdefault(str(row["doc_id"]), []).append(row)
        if self._error is not None:
            raise RuntimeError(f"reading QA rows failed: {self._error}") from self._error

    def take(self, doc_id: str) -> list[dict[str, Any]]:
        """Rows of `doc_id` that arrived since the last call."""
        self._drain()
        return self._buffers.pop(doc_id, [])

    def exhausted(self) -> bool:
        """True once the reader has hit the end (rows may still be buffered for other documents)."""
        self._drain()
        return self._done


def plain_row(row: Any) -> dict[str, Any]:
    """A row as plain Python values (Ray Data may hand out numpy scalars)."""
    return {k: v.item() if hasattr(v, "item") and not isinstance(v, str | bytes) else v for k, v in dict(row).items()}


# --- one base model, one fresh adapter per document -----------------------------------------------------------------


@dataclass
class DocumentJob:
    """One document to train an adapter for: its QA rows known up front, or `expected_rows` to come from a source."""

    doc_id: str
    sha256: str = ""
    text: str = ""
    rows: list[dict[str, Any]] | None = None
    expected_rows: int = 0
    cache_key: str | None = None


@dataclass
class DocumentResult:
    """What training one document gave (identical on every rank, except `adapter` which only rank 0 fills)."""

    doc_id: str
    status: str = "trained"  # trained | published | failed
    error: str | None = None
    qa_count: int = 0
    segment_count: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)  # the quality gate's verdict (gate.py)
    history: TrainingHistory = field(default_factory=TrainingHistory)
    timings: dict[str, float] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)
    load_s: float = 0.0  # the worker's model load, set where the result is recorded
    recorded_at: float = 0.0  # when the ResultCollector took it (time.time())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for Ray and reports)."""
        return asdict(self)

    @classmethod
    def from_record(cls, doc_id: str, record: dict[str, Any]) -> DocumentResult:
        """`doc_id`'s result from its `ResultCollector` record (`to_dict()` and extras, which are ignored)."""
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in record.items() if key in names}
        values.update(doc_id=doc_id, history=TrainingHistory(**record.get("history", {})))
        return cls(**values)


RowsHook = Callable[[DocumentJob, list[dict[str, Any]]], None]
AdapterHook = Callable[[DocumentJob, Path, DocumentResult], dict[str, Any]]


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of (weighted) next-token losses over the labelled tokens of a batch, and how many there were.

    Each labelled token adds its cross-entropy times its `weights` entry (per example or per token; default 1)
    and, where the batch carries a teacher (`distill.py`), KL(teacher || student) times its `kl_weights` entry.
    Logits are computed only at the positions that have a label (`distill.logits_at`).
    """
    labels = batch["labels"][:, 1:]
    labelled = labels != IGNORE_INDEX
    where = torch.nn.functional.pad(labelled, (0, 1))  # positions whose next token is labelled
    logits = logits_at(model, batch["input_ids"], batch["attention_mask"], where)
    losses = F.cross_entropy(logits.float(), labels[labelled], reduction="none")
    if "weights" in batch:  # per example [batch] or per token [batch, length]
        weights = batch["weights"]
        weights = weights[:, None].expand_as(labels) if weights.dim() == 1 else weights[:, 1:]
        losses = losses * weights[labelled].to(losses.dtype)
    if "teacher_ids" in batch:
        kl_weights = batch["kl_weights"][:, 1:][labelled].to(losses.dtype)
        kl = distill_loss(logits, batch["teacher_ids"][:, 1:][labelled], batch["teacher_logprobs"][:, 1:][labelled])
        losses = losses + kl_weights * kl
    return losses.sum(), int(labelled.sum())


class AdapterTrainer:
    """One base model on this rank; `train_document` gives each document a fresh LoRA adapter and trains it."""

    def __init__(
        self, model_dir: Path, config: LiftConfig, collective: Collective | None = None, device: str = "cpu"
    ) -> None:
        from peft.tuners.lora import LoraLayer

        started = time.perf_counter()
        self.config = config
        self.collective: Collective = collective or LocalCollective()
        self.device = torch.device(device)
        self.tokenizer, self.model = load_model_for_training(model_dir, config, device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.lora_layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        self.optimizer: torch.optim.Optimizer | None = None
        self.after_step: Callable[[str, int], None] | None = None  # (doc_id, steps so far) → None
        self._steps = 0
        self.teacher_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # this document's, by teacher_key
        self._new_teachers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # computed here since the last share
        self.teachers_computed = 0  # teacher distributions this rank computed (each pair once over all ranks)
        self._guard: list[dict[str, Any]] | None = None
        self._off_document: list[dict[str, Any]] | None = None
        self.load_s = time.perf_counter() - started

    # -- pieces --

    def fresh_adapter(self) -> None:
        """Re-initialise the LoRA weights (A random with the run's seed, B zero), identical on all ranks; new AdamW."""
        torch.manual_seed(self.config.seed)
        with torch.no_grad():
            for layer in self.lora_layers:
                for name in list(layer.lora_A.keys()):
                    layer.reset_lora_parameters(name, True)
            if self.collective.world_size > 1:
                flat = self.collective.broadcast(torch.cat([p.detach().reshape(-1) for p in self.params]))
                for param, values in zip(self.params, flat.split([p.numel() for p in self.params]), strict=True):
                    param.copy_(values.view_as(param))
        self.optimizer = make_optimizer(self.model, self.config)
        self._steps = 0

    def qa_examples(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tokenised QA examples of sentence rows (none for `finetune_raw`).

        A pair's rewordings (`generator.question_rewrites`) are trained as the adapter is asked: under the recital
        prompt when it recites with an answer line, else with the pair's answer. Cross-entropy weight: gamma in
        `lift_mixed`, 0 with `objective=distill`; with a distilling objective each
        example also names its teacher (the question asked over the row's paragraph and sentence).
        """
        train = self.config.train
        if train.variant == "finetune_raw":
            return []
        weight = 0.0 if train.objective == "distill" else train.gamma if train.variant == "lift_mixed" else 1.0
        distilling = train.objective != "sft"
        system_prompt = self.config.model.system_prompt
        sentence_prompt = train.sentence_answers_prompt or system_prompt
        examples = []
        for row in rows:
            context = teacher_context(row, train.teacher_context_chars) if distilling else ""
            trained = self.row_pairs(row)[0]
            targets = [(system_prompt, p["question"], p["answer"]) for p in trained]
            if not self.recites:  # rewordings (generator.question_rewrites) are trained the way the adapter is asked
                targets += [(system_prompt, q, p["answer"]) for p in trained for q in p.get("rewrites", [])]
            if train.sentence_answers and row.get("sentence"):  # questions also answered by their sentence
                asked = trained + self.echoed_pairs(row)
                if train.sentence_answers_per_sentence:
                    asked = asked[: train.sentence_answers_per_sentence]
                sentence = str(row["sentence"])
                if train.sentence_answers_with_answer:
                    targets += [
                        (sentence_prompt, question, recital_with_answer(sentence, p["answer"]))
                        for p in asked
                        for question in (p["question"], *p.get("rewrites", []))
                    ]
                else:
                    targets += [(sentence_prompt, p["question"], sentence) for p in asked]
            for prompt, question, answer in targets:
                example: dict[str, Any] = tokenize_qa(self.tokenizer, prompt, question, answer, train.max_seq_len)
                if weight != 1.0:
                    example["weight"] = weight
                if distilling:
                    example["kl_weight"] = train.distill_weight
                    example["closing_tokens"] = closing_tokens(self.tokenizer, example["labels"])
                    example["teacher_user"] = teacher_question(question, context)
                    example["teacher_key"] = teacher_key(example["teacher_user"], answer)
                examples.append(example)
        return examples

    def row_pairs(self, row: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """A sentence row's pairs: (trained, held out for the quality gate).

        With `train.sentence_answers_only`, pairs whose answer is not in the sentence itself (answered from the
        paragraph before it, where generators drift) are left out first; with `train.drop_echoed_pairs`, pairs
        whose question holds their answer."""
        pairs = json.loads(row["qa_json"])
        if self.config.train.sentence_answers_only and row.get("sentence"):
            pairs = [p for p in pairs if answer_is_grounded(p["answer"], str(row["sentence"]))]
        if self.config.train.drop_echoed_pairs:
            pairs = [p for p in pairs if not answer_in_question(p["answer"], p["question"])]
        return holdout_split(pairs, self.config.train.holdout_share, str(self.config.seed))

    def echoed_pairs(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """The pairs `train.drop_echoed_pairs` leaves out of `row_pairs` (answer inside the question); with
        `train.sentence_answers` their questions are still trained, answered by the sentence."""
        if not self.config.train.drop_echoed_pairs:
            return []
        return [p for p in json.loads(row["qa_json"]) if answer_in_question(p["answer"], p["question"])]

    @property
    def recites(self) -> bool:
        """Whether the adapter is trained to recite with an answer line, and so is asked that way (as served)."""
        settings = self.config.recite_settings()
        return settings is not None and settings["format"] == "answer_line"

    def holdout_score(self, held: list[dict[str, str]]) -> float:
        """Share of held-out questions the adapter answers (the ranks split the questions; all get the total).

        A reciting adapter is asked as the endpoint asks it: under its recital prompt, the answer line read."""
        collective, train = self.collective, self.config.train
        mine = held[collective.rank :: collective.world_size]
        questions = [p["question"] for p in mine]
        if self.recites:
            said = greedy_answers(
                self.model, self.tokenizer, train.sentence_answers_prompt, questions, 32 + RECITAL_TOKENS, self.device
            )
            replies = [recited_answer(text)[1] for text in said]
        else:
            system_prompt = self.config.model.system_prompt
            replies = greedy_answers(self.model, self.tokenizer, system_prompt, questions, 32, self.device)
        counts = torch.tensor([agreements(replies, mine), len(mine)], dtype=torch.float32, device=self.device)
        right, asked = collective.all_reduce_sum(counts).tolist()
        return right / asked if asked else float("nan")

    def quality_gate(self, rows: list[dict[str, Any]], examples: list[dict[str, Any]], result: DocumentResult) -> None:
        """Score the adapter on its held-out pairs; below `train.min_quality`, train more epochs, then judge."""
        train = self.config.train
        held = [pair for row in rows for pair in self.row_pairs(row)[1]]
        if not held:
            result.quality = {"holdout_pairs": 0, "holdout_score": None, "extra_epochs": 0, "passed": True}
            result.quality["min_quality"] = train.min_quality
            return
        score, extra = self.holdout_score(held), 0
        while score < train.min_quality and extra < train.quality_retry_epochs:
            epoch = train.epochs + extra
            losses = self._shuffled_epoch(examples + self.guard_for_epoch(epoch), epoch, result)
            self.share_teachers()
            result.history.step_losses.extend(losses)
            result.history.epoch_losses.append(sum(losses) / max(1, len(losses)))
            extra += 1
            score = self.holdout_score(held)
        result.quality = {
            "holdout_pairs": len(held),
            "holdout_score": round(score, 4),
            "recited": self.recites,
            "extra_epochs": extra,
            "min_quality": train.min_quality,
            "passed": score >= train.min_quality,
        }
        log.info("%s: quality gate %s", result.doc_id, result.quality)

    def guard_for_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """This epoch's draws of general prompts: held to the base model's distribution (`train.guard_examples`),
        and taught to recite `OFF_DOCUMENT` under the recital prompt (`train.off_document_examples`)."""
        train = self.config.train
        drawn: list[dict[str, Any]] = []
        if train.guard_examples > 0:
            if self._guard is None:
                self._guard = guard_examples(
                    self.tokenizer, self.config.model.system_prompt, train.max_seq_len, train.guard_weight
                )
            drawn += guard_sample(self._guard, train.guard_examples, self.config.seed, epoch)
        recite = self.config.recite_settings()
        if train.off_document_examples > 0 and recite is not None:
            if self._off_document is None:
                self._off_document = [
                    tokenize_qa(self.tokenizer, recite["prompt"], row["question"], OFF_DOCUMENT, train.max_seq_len)
                    for row in load_general_prompts()
                ]
            drawn += guard_sample(self._off_document, train.off_document_examples, self.config.seed + 1, epoch)
        return drawn

    def attach_teachers(self, examples: list[dict[str, Any]]) -> None:
        """Give every example that distills its teacher's top-k, computing (once per document) those not cached."""
        missing = attach_teachers(examples, self.teacher_cache)
        if not missing:
            return
        wanted = {e["teacher_key"]: e for e in examples if e.get("kl_weight") and e["teacher_key"] in missing}
        items = [(e["teacher_user"], [t for t in e["labels"] if t != IGNORE_INDEX]) for e in wanted.values()]
        found = teacher_topk(
            self.model,
            self.tokenizer,
            self.config.model.system_prompt,
            items,
            self.config.train.distill_top_k,
            self.device,
        )
        self.teachers_computed += len(found)
        for key, entry in zip(wanted, found, strict=True):
            self.teacher_cache[key] = entry
            self._new_teachers[key] = entry
        attach_teachers(examples, self.teacher_cache)

    def share_teachers(self) -> None:
        """Every rank gets the teacher distributions the others computed (all ranks call this together)."""
        if self.config.train.objective == "sft" and self.config.train.guard_examples <= 0:
            return
        for part in self.collective.all_gather_object(self._new_teachers):
            self.teacher_cache.update(part)
        self._new_teachers = {}

    def segment_examples(self, text: str) -> list[dict[str, Any]]:
        """Raw-text segments of the document for `finetune_raw` and `lift_mixed`."""
        if self.config.train.variant == "lift" or not text:
            return []
        length = min(self.config.train.segment_tokens, self.config.train.max_seq_len)
        return raw_segments(self.tokenizer, text, length)

    def step(self, examples: list[dict[str, Any]]) -> tuple[float, int, int]:
        """One synchronised optimizer step; this rank adds `examples` (maybe none) to the global batch.

        Returns the global mean loss per labelled token, the labelled tokens and the tokens read, all ranks.
        """
        assert self.optimizer is not None, "fresh_adapter() first"
        for param in self.params:
            param.grad = None
        loss_sum, labelled, read = 0.0, 0, 0
        if examples:
            self.attach_teachers(examples)
            batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
            loss, labelled = token_loss_sum(self.model, batch)
            loss.backward()
            loss_sum, read = float(loss.detach()), int(batch["attention_mask"].sum())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        totals = torch.tensor([loss_sum, labelled, read], dtype=torch.float32, device=self.device)
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [totals])
        self.collective.all_reduce_sum(flat)
        loss_sum, labelled, read = (float(v) for v in flat[-3:])
        if labelled == 0:
            return float("nan"), 0, int(read)
        flat = flat[:-3] / labelled
        for param, values in zip(self.params, flat.split([p.numel() for p in self.params]), strict=True):
            param.grad = values.view_as(param).to(param.dtype)
        self.optimizer.step()
        return loss_sum / labelled, int(labelled), int(read)

    def _run_step(self, examples: list[dict[str, Any]], losses: list[float], result: DocumentResult) -> None:
        started = time.perf_counter()
        loss, labelled, read = self.step(examples)
        result.timings["compute_s"] = result.timings.get("compute_s", 0.0) + time.perf_counter() - started
        self._steps += 1
        if self.after_step is not None:
            self.after_step(result.doc_id, self._steps)
        if labelled:
            losses.append(loss)
            result.history.trained_tokens += read

    def _shuffled_epoch(self, examples: list[dict[str, Any]], epoch: int, result: DocumentResult) -> list[float]:
        """One epoch over every example in a global order (seed + epoch); rank r takes every r-th of each batch."""
        collective, batch_size = self.collective, self.config.train.batch_size
        order = list(range(len(examples)))
        random.Random(self.config.seed + epoch).shuffle(order)
        losses: list[float] = []
        for start in range(0, len(order), batch_size):
            mine = order[start : start + batch_size][collective.rank :: collective.world_size]
            self._run_step([examples[i] for i in mine], losses, result)
        return losses

    def _streaming_epoch(
        self, job: DocumentJob, source: RowSource, pool: list[dict[str, Any]], result: DocumentResult
    ) -> tuple[list[dict[str, Any]], list[float]]:
        """Epoch 1 while the generator writes: a step whenever a full batch is there (or the last, partial one)."""
        collective, batch_size = self.collective, self.config.train.batch_size
        world, rank = collective.world_size, collective.rank
        local_rows: list[dict[str, Any]] = []
        losses: list[float] = []
        while True:
            new_rows = source.take(job.doc_id)
            local_rows.extend(new_rows)
            pool.extend(self.qa_examples(new_rows))
            stats = torch.zeros(world + 2, dtype=torch.float32, device=self.device)
            stats[rank] = len(pool)
            stats[world] = len(local_rows)
            stats[world + 1] = float(source.exhausted())
            stats = collective.all_reduce_sum(stats).tolist()
            available = [int(v) for v in stats[:world]]
            complete = stats[world] >= job.expected_rows or stats[world + 1] == world
            if sum(available) >= batch_size or (complete and sum(available) > 0):
                quota = allocate(available, batch_size)[rank]
                chosen, pool[:] = pool[:quota], pool[quota:]
                self._run_step(chosen, losses, result)
            elif complete:
                return local_rows, losses
            else:
                started = time.perf_counter()
                time.sleep(self.config.train.poll_s)
                result.timings["wait_s"] = result.timings.get("wait_s", 0.0) + time.perf_counter() - started

    def publish_draft(
        self, job: DocumentJob, epochs_done: int, on_draft: AdapterHook | None, result: DocumentResult
    ) -> None:
        """Rank 0, after exactly `train.draft_after_epochs` epochs of more: hand the adapter so far to `on_draft`.

        A draft that fails to publish is logged and left out; the document goes on to its final adapter.
        """
        draft_after = self.config.train.draft_after_epochs
        if not (on_draft and self.collective.rank == 0 and 0 < draft_after == epochs_done < self.config.train.epochs):
            return
        started = time.perf_counter()
        try:
            save_and_hand_over(self.model, self.config.model.dtype, job, on_draft, result)
        except Exception:
            log.exception("%s: publishing the draft failed; training goes on", job.doc_id)
            return
        result.timings["draft_at"] = time.time()
        result.timings["draft_publish_s"] = time.perf_counter() - started
        log.info("%s: draft published after %d epochs", job.doc_id, epochs_done)

    def train_document(
        self,
        job: DocumentJob,
        source: RowSource | None = None,
        on_rows: RowsHook | None = None,
        on_adapter: AdapterHook | None = None,
        on_draft: AdapterHook | None = None,
        on_epoch: Callable[[DocumentJob, int, int], None] | None = None,
    ) -> DocumentResult:
        """Fresh adapter, epochs over the document's examples, then (rank 0) save it and hand it to `on_adapter`
        (and, after `train.draft_after_epochs` epochs, to `on_draft`); rank 0 calls `on_epoch(job, done, total)`
        after each epoch.

        Rows come from `job.rows`, or, when that is None, from `source` during epoch 1 (streaming). Every rank
        must call this for the same jobs in the same order.
        """
        collective, epochs = self.collective, self.config.train.epochs
        result = DocumentResult(job.doc_id, timings={"started_at": time.time(), "compute_s": 0.0, "wait_s": 0.0})
        started = time.perf_counter()
        self.fresh_adapter()
        segments = self.segment_examples(job.text)
        result.segment_count = len(segments)
        self.teacher_cache.clear()
        first_epoch = 0
        if job.rows is None:
            pool = (segments + self.guard_for_epoch(0))[collective.rank :: collective.world_size]
            local_rows, losses = self._streaming_epoch(job, source or NoRows(), pool, result)
            self.share_teachers()
            rows = sorted(
                (r for part in collective.all_gather_object(local_rows) for r in part),
                key=lambda r: int(r["sentence_index"]),
            )
            result.history.step_losses.extend(losses)
            if losses:
                result.history.epoch_losses.append(sum(losses) / len(losses))
            first_epoch = 1
            sentences = distinct_sentences(rows)
            if sentences < job.expected_rows:  # generation stopped early: train nothing, cache nothing
                result.counters = generation_counters(rows)
                result.status = "failed"
                result.error = (
                    f"QA generation ended after {sentences} of {job.expected_rows} sentences "
                    "(not cached: the next run generates this document again)"
                )
                log.warning("%s: %s", job.doc_id, result.error)
                return result
        else:
            rows = job.rows
        result.timings["qa_ready_at"] = time.time()
        result.counters = generation_counters(rows)
        examples = self.qa_examples(rows)
        result.qa_count = len(qa_pairs_from_rows(rows))
        if collective.rank == 0 and on_rows is not None and job.rows is None:
            on_rows(job, rows)
        examples += segments
        if not examples or lacks_qa_pairs(result.qa_count, self.config.train.variant):
            result.status, result.error = "failed", no_pairs_error(result.counters)
            return result
        report_epoch = on_epoch if on_epoch is not None and collective.rank == 0 else None
        if report_epoch and first_epoch:
            report_epoch(job, first_epoch, epochs)
        self.publish_draft(job, first_epoch, on_draft, result)
        for epoch in range(first_epoch, epochs):
            losses = self._shuffled_epoch(examples + self.guard_for_epoch(epoch), epoch, result)
            self.share_teachers()
            result.history.step_losses.extend(losses)
            result.history.epoch_losses.append(sum(losses) / max(1, len(losses)))
            if report_epoch:
                report_epoch(job, epoch + 1, epochs)
            self.publish_draft(job, epoch + 1, on_draft, result)
        if self.config.train.variant != "finetune_raw" and self.config.train.holdout_share > 0:
            gate_started = time.perf_counter()
            self.quality_gate(rows, examples, result)
            result.timings["gate_s"] = time.perf_counter() - gate_started
        result.timings["train_s"] = time.perf_counter() - started
        result.history.seconds = result.timings["train_s"]
        if collective.rank == 0:
            publish_started = time.perf_counter()
            if on_adapter is not None:
                try:
                    result.adapter = save_and_hand_over(self.model, self.config.model.dtype, job, on_adapter, result)
                    result.status = "published"
                except Exception as exc:  # one document's publishing failure must not stop the others
                    log.exception("%s: publishing failed", job.doc_id)
                    result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            result.timings["publish_s"] = time.perf_counter() - publish_started
        result.timings["done_at"] = time.time()
        result.timings["overhead_s"] = (
            time.perf_counter() - started - result.timings["compute_s"] - result.timings["wait_s"]
        )
        log.info("%s: trained (%s)", job.doc_id, {k: round(v, 2) for k, v in result.timings.items()})
        return result


def save_and_hand_over(
    model: Any, dtype: str, job: DocumentJob, hook: AdapterHook, result: DocumentResult
) -> dict[str, Any]:
    """Save the adapter in a temporary folder and hand it to `hook` (which publishes or copies it)."""
    with tempfile.TemporaryDirectory(prefix=f"lift-{job.doc_id}-") as tmp:
        return hook(job, save_adapter(model, Path(tmp) / "adapter", dtype), result)


def train_adapter_locally(
    model_dir: Path, pairs: list[dict[str, str]], config: LiftConfig, out_dir: Path
) -> TrainingHistory:
    """Train an adapter in this process (no Ray): the reference the Ray Train path must match."""
    import shutil

    torch.set_num_threads(max(1, config.train.threads_per_worker))
    trainer = AdapterTrainer(model_dir, config)

    def keep(_job: DocumentJob, adapter_dir: Path, _result: DocumentResult) -> dict[str, Any]:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(adapter_dir, out_dir)
        return {"adapter_dir": str(out_dir)}

    rows = [{"sentence_index": i, "qa_json": json.dumps([pair])} for i, pair in enumerate(pairs)]  # none held out
    result = trainer.train_document(DocumentJob("local", rows=rows), on_adapter=keep)
    if result.status != "published":
        raise RuntimeError(result.error or "training failed")
    return result.history
