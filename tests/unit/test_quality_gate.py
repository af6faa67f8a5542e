"""The quality gate without Ray: which pairs are held out, and what the trainer does with the score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lift_ray.config import (
    OFF_DOCUMENT,
    PLAIN_QA_TRAINING,
    RECITAL_TOKENS,
    RECITE_RECIPE,
    SENTENCE_ANSWERS_PROMPT,
    LiftConfig,
    load_config,
)
from lift_ray.train.dataset import holdout_split, recital_with_answer, recited_answer, says_off_document
from lift_ray.train.distill import load_general_prompts
from lift_ray.train.loop import AdapterTrainer, DocumentJob


def _config(**overrides: Any) -> LiftConfig:
    """Plain QA training (the default recipe's sentence answers off), then `overrides`."""
    base = {"train.epochs": 2, "train.batch_size": 4}
    settings = [*PLAIN_QA_TRAINING, *(f"{k}={v}" for k, v in {**base, **overrides}.items())]
    return load_config(LiftConfig, None, settings)


def _pairs(i: int) -> list[dict[str, str]]:
    return [
        {"question": f"Who built bridge {i}?", "answer": f"Anna Varn {i}"},
        {"question": f"In which year was bridge {i} built?", "answer": f"{1800 + i}"},
        {"question": f"Which engineer was responsible for bridge {i}?", "answer": f"Anna Varn {i}"},
    ]


def test_only_a_pair_whose_answer_another_pair_gives_is_held_out_at_most_one_per_sentence() -> None:
    held_rows = 0
    for i in range(40):
        train, held = holdout_split(_pairs(i), 0.5, "0")
        assert train + held != [] and len(held) <= 1 and len(train) + len(held) == 3
        if held:
            held_rows += 1
            assert held[0]["answer"] == f"Anna Varn {i}"  # never the year, which no other pair gives
            assert any(p["answer"] == held[0]["answer"] for p in train)  # the fact is still trained
        assert holdout_split(_pairs(i), 0.5, "0") == (train, held)  # the same on every rank and run
    assert 10 <= held_rows <= 30  # about half of the sentences
    assert holdout_split(_pairs(1), 0.0, "0") == (_pairs(1), [])
    assert holdout_split(_pairs(1), 1.0, "0")[1] != []
    unique = [{"question": "Q1?", "answer": "one"}, {"question": "Q2?", "answer": "two"}]
    assert holdout_split(unique, 1.0, "0") == (unique, [])  # no answer given twice: nothing to hold out


def _rows(count: int) -> list[dict[str, Any]]:
    return [{"doc_id": "doc", "sentence_index": i, "qa_json": json.dumps(_pairs(i))} for i in range(count)]


def test_held_out_pairs_are_not_trained_and_the_score_lands_in_the_result(tiny_model_dir: Path) -> None:
    trainer = AdapterTrainer(tiny_model_dir, _config(**{"train.holdout_share": 1.0}))
    rows = _rows(4)
    assert len(trainer.qa_examples(rows)) == 8  # 12 pairs, one held out per sentence
    result = trainer.train_document(DocumentJob("doc", rows=rows))
    quality = result.quality
    assert quality["holdout_pairs"] == 4 and 0.0 <= quality["holdout_score"] <= 1.0
    assert quality["passed"] and quality["extra_epochs"] == 0 and len(result.history.epoch_losses) == 2
    assert result.qa_count == 12 and "gate_s" in result.timings
    assert quality["recited"] is False  # plain pairs: asked plainly


def test_a_reciting_adapter_is_gated_the_way_the_endpoint_asks_it(tiny_model_dir: Path, monkeypatch) -> None:
    import lift_ray.train.loop as loop

    recipe = {
        "train.holdout_share": 1.0,
        **{f"train.{k}": repr(v) if isinstance(v, str) else v for k, v in RECITE_RECIPE.items()},
    }
    trainer = AdapterTrainer(tiny_model_dir, _config(**recipe))
    assert trainer.recites and not AdapterTrainer(tiny_model_dir, _config()).recites
    asked: list[tuple[str, int]] = []
    real = loop.greedy_answers

    def recording(model, tokenizer, system_prompt, questions, max_new_tokens, device):
        asked.append((system_prompt, max_new_tokens))
        return real(model, tokenizer, system_prompt, questions, max_new_tokens, device)

    monkeypatch.setattr(loop, "greedy_answers", recording)
    result = trainer.train_document(
        DocumentJob("doc", rows=[{**r, "sentence": "Bridges were built."} for r in _rows(2)])
    )
    assert asked == [(SENTENCE_ANSWERS_PROMPT, 32 + RECITAL_TOKENS)]
    assert result.quality["recited"] is True and 0.0 <= result.quality["holdout_score"] <= 1.0


def test_an_adapter_below_the_bar_trains_more_then_is_reported_not_passed(tiny_model_dir: Path) -> None:
    config = _config(**{"train.holdout_share": 1.0, "train.min_quality": 1.0, "train.quality_retry_epochs": 2})
    result = AdapterTrainer(tiny_model_dir, config).train_document(DocumentJob("doc", rows=_rows(3)))
    # A random-weight model answers nothing: two more epochs, then the verdict.
    assert result.quality["holdout_score"] == 0.0 and result.quality["extra_epochs"] == 2
    assert result.quality["passed"] is False and len(result.history.epoch_losses) == 4


def test_no_gate_without_a_holdout_share(tiny_model_dir: Path) -> None:
    result = AdapterTrainer(tiny_model_dir, _config(**{"train.holdout_share": 0})).train_document(
        DocumentJob("doc", rows=_rows(2))
    )
    assert result.quality == {} and "gate_s" not in result.timings


def test_a_published_adapter_that_failed_the_gate_is_reported_low_quality_with_its_score() -> None:
    from lift_ray.pipeline import report_trained
    from lift_ray.report import DocumentReport
    from lift_ray.train.loop import DocumentResult

    def result(passed: bool) -> dict[str, Any]:
        quality = {"holdout_pairs": 5, "holdout_score": 0.2, "extra_epochs": 2, "min_quality": 0.5, "passed": passed}
        return {
            "status": "published",
            "error": None,
            "counters": {},
            "qa_count": 20,
            "timings": {"qa_ready_at": 1.0, "train_s": 3.0, "gate_s": 0.5},
            "recorded_at": 5.0,
            "history": {"epoch_losses": [1.0, 0.5]},
            "adapter": {"adapter_uri": "s3://b/x", "adapter_bytes": 10},
            "quality": quality,
        }

    pending = DocumentReport("doc", status="pending")
    flagged = report_trained(pending, DocumentResult.from_record("doc", result(False)), run_started=0.0, error=None)
    fine = report_trained(pending, DocumentResult.from_record("doc", result(True)), run_started=0.0, error=None)
    assert flagged.status == "low_quality" and "20% of 5 held-out questions" in flagged.error
    assert flagged.quality["holdout_score"] == 0.2 and flagged.timings["gate_s"] == 0.5
    assert fine.status == "published" and fine.error is None


def test_sentence_answers_add_each_question_with_its_whole_sentence(tiny_model_dir: Path) -> None:
    rows = [{**row, "sentence": f"Bridge {row['sentence_index']} was built by Anna Varn."} for row in _rows(2)]
    plain = AdapterTrainer(tiny_model_dir, _config(**{"train.holdout_share": 0})).qa_examples(rows)
    doubled = AdapterTrainer(
        tiny_model_dir, _config(**{"train.holdout_share": 0, "train.sentence_answers": True})
    ).qa_examples(rows)
    assert len(plain) == 6 and len(doubled) == 12
    assert doubled[:3] == plain[:3]
    tokenizer = AdapterTrainer(tiny_model_dir, _config()).tokenizer
    answers = [tokenizer.decode([t for t in e["labels"] if t >= 0]) for e in doubled[3:6]]
    assert all("Bridge 0 was built by Anna Varn." in answer for answer in answers)


def test_sentence_answers_under_their_own_prompt_and_for_the_first_questions_only(tiny_model_dir: Path) -> None:
    rows = [{**row, "sentence": f"Bridge {row['sentence_index']} was built by Anna Varn."} for row in _rows(2)]
    own_prompt = "Answer with the whole sentence of the document that says it."
    settings = {
        "train.holdout_share": 0,
        "train.sentence_answers": True,
        "train.sentence_answers_prompt": f"'{own_prompt}'",
        "train.sentence_answers_per_sentence": 1,
    }
    trainer = AdapterTrainer(tiny_model_dir, _config(**settings))
    examples = trainer.qa_examples(rows)
    assert len(examples) == 8  # 3 pairs and 1 sentence answer per sentence
    decoded = [trainer.tokenizer.decode(e["input_ids"]) for e in examples]
    sentence_examples = [text for text in decoded if "was built by Anna Varn." in text]
    assert len(sentence_examples) == 2
    assert all(own_prompt in text and "Who built bridge" in text for text in sentence_examples)
    assert not any(own_prompt in text for text in decoded if text not in sentence_examples)
    plain = _config(**{"train.holdout_share": 0, "train.sentence_answers": True})
    assert _config(**settings).adapter_hash() != plain.adapter_hash()


def test_sentence_answers_with_answer_recite_the_sentence_then_give_the_pairs_answer(tiny_model_dir: Path) -> None:
    rows = [{**row, "sentence": f"Bridge {row['sentence_index']} was built by Anna Varn."} for row in _rows(1)]
    settings = {
        "train.holdout_share": 0,
        "train.sentence_answers": True,
        "train.sentence_answers_prompt": f"'{SENTENCE_ANSWERS_PROMPT}'",
    }
    trainer = AdapterTrainer(tiny_model_dir, _config(**settings, **{"train.sentence_answers_with_answer": True}))
    examples = trainer.qa_examples(rows)
    assert len(examples) == 6  # 3 short pairs, 3 recitals
    said = [trainer.tokenizer.decode([t for t in e["labels"] if t >= 0]) for e in examples[3:]]
    pairs = json.loads(rows[0]["qa_json"])
    for text, pair in zip(said, pairs, strict=True):
        assert recited_answer(text.split("<|im_end|>")[0]) == ("Bridge 0 was built by Anna Varn.", pair["answer"])
    assert (
        _config(**settings, **{"train.sentence_answers_with_answer": True}).adapter_hash()
        != _config(**settings).adapter_hash()
    )


def test_question_rewrites_are_trained_the_way_the_adapter_is_asked(tiny_model_dir: Path) -> None:
    pairs = _pairs(0)
    pairs[0]["rewrites"] = ["Which person put up bridge 0?", "Bridge 0 was the work of whom?"]
    rows = [{"doc_id": "doc", "sentence_index": 0, "qa_json": json.dumps(pairs), "sentence": "Bridge 0 was built."}]

    def decoded(trainer: AdapterTrainer) -> list[str]:
        return [trainer.tokenizer.decode(e["input_ids"]) for e in trainer.qa_examples(rows)]

    plain = decoded(AdapterTrainer(tiny_model_dir, _config(**{"train.holdout_share": 0})))
    assert len(plain) == 5  # 3 pairs + 2 rewordings, each with the pair's short answer
    assert sum("Which person put up bridge 0?" in text and "Anna Varn 0" in text for text in plain) == 1
    reciting = {
        "train.holdout_share": 0,
        "train.sentence_answers": True,
        "train.sentence_answers_prompt": f"'{SENTENCE_ANSWERS_PROMPT}'",
        "train.sentence_answers_with_answer": True,
    }
    recited = decoded(AdapterTrainer(tiny_model_dir, _config(**reciting)))
    assert len(recited) == 8  # 3 short pairs + 3 recitals + 2 rewordings, recited
    rewordings = [text for text in recited if "Which person put up bridge 0?" in text or "the work of whom" in text]
    assert len(rewordings) == 2
    recital = "Bridge 0 was built.\nAnswer: Anna Varn 0"
    assert all(SENTENCE_ANSWERS_PROMPT in text and recital in text for text in rewordings)
    generated = load_config(LiftConfig, None, ["generator.question_rewrites=1"])
    assert generated.adapter_hash() != LiftConfig().adapter_hash()
    assert generated.generator_fingerprint() != LiftConfig().generator_fingerprint()
    assert "question_rewrites" not in LiftConfig().generator_fingerprint()  # earlier QA caches stay valid


def test_off_document_examples_teach_general_prompts_to_recite_that_the_document_does_not_say(
    tiny_model_dir: Path,
) -> None:
    recite = {
        "train.sentence_answers": True,
        "train.sentence_answers_prompt": f"'{SENTENCE_ANSWERS_PROMPT}'",
        "train.sentence_answers_with_answer": True,
    }
    config = _config(**recite, **{"train.off_document_examples": 5})
    trainer = AdapterTrainer(tiny_model_dir, config)
    drawn = trainer.guard_for_epoch(0)
    assert len(drawn) == 5 and drawn != trainer.guard_for_epoch(1)  # a new draw each epoch
    general = {row["question"] for row in load_general_prompts()}
    for example in drawn:
        labels = example["labels"]
        prompt = trainer.tokenizer.decode(
            [t for t, label in zip(example["input_ids"], labels, strict=True) if label < 0]
        )
        said = trainer.tokenizer.decode([t for t in example["labels"] if t >= 0]).split("<|im_end|>")[0]
        assert SENTENCE_ANSWERS_PROMPT in prompt and any(question in prompt for question in general)
        assert said == OFF_DOCUMENT and says_off_document(said)
        assert example.get("weight", 1.0) == 1.0 and not example.get("kl_weight")  # cross-entropy, no teacher
    assert config.recite_settings()["off_document"] == OFF_DOCUMENT
    assert config.adapter_hash() != _config(**recite).adapter_hash()
    assert "off_document" not in _config(**recite).recite_settings()
    plain = AdapterTrainer(tiny_model_dir, _config(**{"train.off_document_examples": 5}))
    assert plain.guard_for_epoch(0) == []  # nothing to say it under without a recital prompt
    assert not says_off_document("The document says the bridge opened in 1974.")


def test_the_default_recipe_recites_and_the_paper_preset_trains_plain_pairs() -> None:
    default, paper = LiftConfig(), LiftConfig(preset="paper")
    assert default.train.sentence_answers and default.train.sentence_answers_with_answer
    assert default.train.sentence_answers_prompt == SENTENCE_ANSWERS_PROMPT
    assert not paper.train.sentence_answers and not paper.train.sentence_answers_with_answer
    explicit = load_config(LiftConfig, None, ["train.sentence_answers=false"])
    assert not explicit.train.sentence_answers  # a setting of the config wins over the preset
    assert (
        _config().adapter_hash()
        != load_config(LiftConfig, None, ["train.epochs=2", "train.batch_size=4"]).adapter_hash()
    )


def test_recited_answer_reads_the_first_answer_line() -> None:
    text = recital_with_answer("The bridge opened in 1974.", "1974")
    assert text == "The bridge opened in 1974.\nAnswer: 1974"
    assert recited_answer(text) == ("The bridge opened in 1974.", "1974")
    # what a model adds after the trained answer line is not the answer
    assert recited_answer(text + "\nAnswer: 1200\nAnswer: 1200") == ("The bridge opened in 1974.", "1974")
    assert recited_answer("Answer: it says Answer: 12") == ("", "it says Answer: 12")
    assert recited_answer("It opened.\nAnswer:\n 1974\nmore") == ("It opened.", "1974")
    inline = "The Answer: column of 1974."  # the mark inside a line is not an answer line
    assert recited_answer(inline) == (inline, inline)
    assert recited_answer("The bridge opened in 1974.") == ("The bridge opened in 1974.", "The bridge opened in 1974.")


def _sentence_row(sentence: str, context: str, pairs: list[tuple[str, str]]) -> dict:
    """One sentence row of document "doc" with its generated pairs."""
    qa_json = json.dumps([{"question": q, "answer": a} for q, a in pairs])
    return {"doc_id": "doc", "sentence_index": 1, "sentence": sentence, "context": context, "qa_json": qa_json}


def test_sentence_answers_only_drops_pairs_answered_from_the_paragraph(tiny_model_dir: Path) -> None:
    row = _sentence_row(
        "The ferry was started in 1871 by Edda Pellworth.",
        "Halvenmoor lies on the Ostrel River.",
        [
            ("Who started the ferry?", "Edda Pellworth"),
            ("What is the name of the river?", "the Ostrel River"),  # the paragraph's
            ("When did the ferry start?", "1871"),
        ],
    )
    config = {"train.holdout_share": 0}
    every = AdapterTrainer(tiny_model_dir, _config(**config)).row_pairs(row)[0]
    only = AdapterTrainer(tiny_model_dir, _config(**config, **{"train.sentence_answers_only": True})).row_pairs(row)[0]
    assert len(every) == 3 and [p["answer"] for p in only] == ["Edda Pellworth", "1871"]


def test_drop_echoed_pairs_keeps_their_questions_only_for_the_sentence_answer(tiny_model_dir: Path) -> None:
    row = _sentence_row(
        "The bridge was designed by Wilhelmina Sato.",
        "",
        [
            ("Who designed the bridge?", "Wilhelmina Sato"),
            ("What is the name of the engineer Wilhelmina Sato?", "Wilhelmina Sato"),
        ],
    )
    config = {"train.holdout_share": 0, "train.drop_echoed_pairs": True}
    trainer = AdapterTrainer(tiny_model_dir, _config(**config))
    assert [p["question"] for p in trainer.row_pairs(row)[0]] == ["Who designed the bridge?"]
    with_sentences = AdapterTrainer(tiny_model_dir, _config(**config, **{"train.sentence_answers": True}))
    answers = [
        with_sentences.tokenizer.decode([t for t in e["labels"] if t >= 0]) for e in with_sentences.qa_examples([row])
    ]
    assert len(answers) == 3 and sum(row["sentence"] in answer for answer in answers) == 2
