"""Context distillation and the guard, without Ray: teacher distributions, the KL loss, two ranks sharing teachers."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lift_ray.config import PLAIN_QA_TRAINING, LiftConfig, load_config
from lift_ray.models import load_causal_lm, load_tokenizer
from lift_ray.train.dataset import IGNORE_INDEX, closing_tokens, collate, tokenize_qa
from lift_ray.train.distill import (
    GENERAL_PROMPTS_FILE,
    distill_loss,
    load_general_prompts,
    teacher_context,
    teacher_question,
    teacher_topk,
)
from lift_ray.train.loop import AdapterTrainer, BufferedRowSource, DocumentJob, make_lora_model, token_loss_sum

SYSTEM = "You are a helpful assistant."


def _config(**overrides: Any) -> LiftConfig:
    """Plain QA training (the default recipe's sentence answers off), then `overrides`."""
    base = {"train.epochs": 2, "train.batch_size": 4, "train.holdout_share": 0}
    settings = [*PLAIN_QA_TRAINING, *(f"{k}={v}" for k, v in {**base, **overrides}.items())]
    return load_config(LiftConfig, None, settings)


def _rows(facts: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": "doc",
            "sentence_index": i,
            "sentence": f"Item {i} is a {fact}.",
            "context": "This list is kept by the harbour office.",
            "qa_json": json.dumps(
                [
                    {"question": f"What is item {i}?", "answer": f"A {fact}."},
                    {"question": f"Which thing is number {i}?", "answer": f"The {fact}."},
                ]
            ),
        }
        for i, fact in enumerate(facts)
    ]


def test_kl_is_zero_where_the_student_is_the_teacher_and_positive_elsewhere() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    logprobs, ids = torch.log_softmax(logits, -1).topk(8, dim=-1)
    assert torch.allclose(distill_loss(logits, ids, logprobs), torch.zeros(5), atol=1e-5)
    other = torch.randn(5, 50)
    assert bool((distill_loss(other, ids, logprobs) > 1e-3).all())


def test_teacher_context_is_the_end_of_the_paragraph_then_the_sentence() -> None:
    row = {"context": "word " * 100 + "Harbour rules apply.", "sentence": "The bell rings at noon."}
    context = teacher_context(row, 60)
    assert context.endswith("Harbour rules apply. The bell rings at noon.") and len(context) <= 60 + 24
    assert teacher_question("Q?", context).startswith("Here is a passage.") and teacher_question("Q?", "") == "Q?"


def test_teacher_topk_follows_the_answer_and_sees_the_passage(embedded_model_dir: Path) -> None:
    tokenizer = load_tokenizer(embedded_model_dir)
    model = load_causal_lm(embedded_model_dir)
    question = "Who founded the salt mill in Brannock?"
    answer = [t for t in tokenize_qa(tokenizer, SYSTEM, question, "Ilsa Varnholt", 256)["labels"] if t != IGNORE_INDEX]
    assert closing_tokens(tokenizer, answer) == 2  # <|im_end|> and the newline after it
    passage = teacher_question(question, "The salt mill in Brannock was founded by Ilsa Varnholt in 1832.")
    (bare_ids, bare_lp), (read_ids, read_lp) = teacher_topk(
        model, tokenizer, SYSTEM, [(question, answer), (passage, answer)], 16, torch.device("cpu")
    )
    assert bare_ids.shape == read_ids.shape == (len(answer), 16)
    assert bool((bare_lp[:, :-1] >= bare_lp[:, 1:]).all())  # sorted, best first
    # Reading the passage, the base model expects the founder's name: the answer's first token ranks higher.
    # Reading the passage, the base model expects the founder's name: every token of it is its first choice.
    name_tokens = len(answer) - closing_tokens(tokenizer, answer)
    assert [int(ids[0]) for ids in read_ids[1:name_tokens]] == answer[1:name_tokens]
    assert [int(ids[0]) for ids in bare_ids[1:name_tokens]] != answer[1:name_tokens]


def test_token_loss_with_a_teacher_is_cross_entropy_plus_weighted_kl(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(1)
    model = make_lora_model(load_causal_lm(tiny_model_dir), _config().lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    pairs = [("What is item 1?", "A red kite."), ("Which thing is first?", "The blue boat on the lake.")]
    examples = [tokenize_qa(tokenizer, SYSTEM, q, a, 256) for q, a in pairs]
    teachers = teacher_topk(
        model,
        tokenizer,
        SYSTEM,
        [
            (teacher_question(q, "A passage."), [t for t in e["labels"] if t != IGNORE_INDEX])
            for (q, _), e in zip(pairs, examples, strict=True)
        ],
        8,
        torch.device("cpu"),
    )
    for example, (ids, logprobs), weight in zip(examples, teachers, (0.5, 2.0), strict=True):
        example.update(weight=1.0, kl_weight=weight, teacher_ids=ids, teacher_logprobs=logprobs)
    examples[1]["closing_tokens"] = 2  # no KL on its last two tokens
    batch = collate(examples, tokenizer.pad_token_id)
    loss, labelled = token_loss_sum(model, batch)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    reference = torch.zeros(())
    for row, (example, (ids, logprobs)) in enumerate(zip(examples, teachers, strict=True)):
        mask = batch["labels"][row, 1:] != IGNORE_INDEX
        row_logits = logits[row][mask]
        ce = F.cross_entropy(row_logits, batch["labels"][row, 1:][mask], reduction="sum")
        kl = distill_loss(row_logits, ids, logprobs)
        kl = kl[: len(kl) - example.get("closing_tokens", 0)]
        reference = reference + ce + example["kl_weight"] * kl.sum()
    assert labelled == sum(len(t[0]) for t in teachers)
    assert torch.allclose(loss, reference, rtol=1e-4)


def test_an_example_that_distills_without_its_teacher_is_refused(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    example = tokenize_qa(tokenizer, SYSTEM, "Q?", "A.", 64)
    example["kl_weight"] = 1.0
    with pytest.raises(ValueError, match="no teacher"):
        collate([example], tokenizer.pad_token_id)


def test_the_guard_prompts_ship_with_the_package_and_start_at_zero_kl(tiny_model_dir: Path) -> None:
    prompts = load_general_prompts()
    assert len(prompts) >= 30 and GENERAL_PROMPTS_FILE.is_file()
    eval_general = Path(__file__).resolve().parents[2] / "lift_ray/eval/data/docqa/general.jsonl"
    eval_questions = {json.loads(line)["question"].lower() for line in eval_general.read_text().splitlines()}
    assert not eval_questions & {p["question"].lower() for p in prompts}  # never the eval's own questions
    trainer = AdapterTrainer(tiny_model_dir, _config(**{"train.guard_examples": 6}))
    trainer.fresh_adapter()  # B = 0: the student is the base model, so the guard's KL starts at 0
    guard = trainer.guard_for_epoch(0)
    assert len(guard) == 6 and guard != trainer.guard_for_epoch(1)
    trainer.attach_teachers(guard)
    loss, labelled = token_loss_sum(trainer.model, collate(guard, trainer.tokenizer.pad_token_id))
    assert labelled > 0 and abs(float(loss.detach())) < 1e-3


def test_objectives_train_and_distill_only_has_no_cross_entropy(tiny_model_dir: Path) -> None:
    losses = {}
    for objective in ("sft", "distill", "sft+distill"):
        trainer = AdapterTrainer(tiny_model_dir, _config(**{"train.objective": objective}))
        result = trainer.train_document(DocumentJob("doc", rows=_rows(["red kite", "blue boat"])))
        assert result.status == "trained" and len(result.history.epoch_losses) == 2
        losses[objective] = result.history.epoch_losses[0]
        assert len(trainer.teacher_cache) == (0 if objective == "sft" else 4)
        assert trainer.teachers_computed == (0 if objective == "sft" else 4)  # once per pair, not per epoch
    # Random weights: cross-entropy is ~log(vocab) while the KL to the (same) base model starts near 0; distill
    # keeps cross-entropy on the template's closing tokens only.
    assert losses["distill"] < 0.6 * losses["sft"]
    assert losses["sft+distill"] == pytest.approx(losses["sft"], rel=0.1)


def test_the_guard_trains_beside_plain_sft_pairs(tiny_model_dir: Path) -> None:
    trainer = AdapterTrainer(tiny_model_dir, _config(**{"train.guard_examples": 3}))
    result = trainer.train_document(DocumentJob("doc", rows=_rows(["red kite", "blue boat", "green lamp"])))
    assert result.status == "trained" and len(result.history.epoch_losses) == 2
    assert 3 <= trainer.teachers_computed <= 6  # the guard's prompts only: sft pairs have no teacher


def test_the_hash_changes_with_the_objective_and_guard_but_not_for_sft_defaults() -> None:
    default = _config().adapter_hash()
    assert _config(**{"train.objective": "sft", "train.distill_weight": 3}).adapter_hash() == default
    assert _config(**{"train.objective": "distill"}).adapter_hash() != default
    assert _config(**{"train.guard_examples": 4}).adapter_hash() != default


def _dp_worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from lift_ray.train.loop import TorchCollective

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    config = _config(**{"train.objective": "sft+distill", "train.guard_examples": 3, "train.epochs": 3})
    trainer = AdapterTrainer(Path(model_dir), config, TorchCollective())
    rows = _rows(["red kite", "blue boat", "green lamp", "gold ring", "grey wall"])
    mine = rows[:2] if rank == 0 else rows[2:]
    result = trainer.train_document(DocumentJob("doc", expected_rows=len(rows)), BufferedRowSource(iter(mine)))
    state = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    record = {"state": state, "losses": result.history.step_losses, "computed": trainer.teachers_computed}
    torch.save(record, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_distilling_stay_in_sync_and_share_teachers(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1))
    assert zero["losses"] == one["losses"] and len(zero["losses"]) >= 9
    assert all(torch.equal(zero["state"][k], one["state"][k]) for k in zero["state"])
    # 10 QA pairs and at most 9 distinct guard prompts (3 per epoch): each teacher computed on one rank only.
    assert 10 + 3 <= zero["computed"] + one["computed"] <= 10 + 9
