from __future__ import annotations

from pathlib import Path

from lift_ray.config import LiftConfig, load_config
from lift_ray.documents import Document
from lift_ray.layout import qa_cache_key, qa_cache_path
from lift_ray.pipeline import missing_sentences, sentence_count

DOCUMENT = Document.from_text("doc", "Anna lives in Oslo. She builds boats.")


def key(*overrides: str) -> str:
    return qa_cache_key(DOCUMENT, load_config(LiftConfig, None, list(overrides)))


def test_key_changes_with_what_changes_the_pairs(tmp_path: Path):
    base = key()
    template = tmp_path / "prompt.txt"
    template.write_text("Write {m} pairs.", encoding="utf-8")
    changed = [
        key("generator.qa_per_sentence=3"),
        key("generator.preset=general"),
        key("generator.require_grounded=false"),
        key("generator.samples_per_retry=2"),
        key("generator.model=/models/other"),
        key(f"generator.template_file={template}"),
        key("generator.engine=openai"),
        qa_cache_key(Document.from_text("doc", "Anna lives in Bergen."), LiftConfig()),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_key_ignores_resources_and_training_settings():
    assert key() == key("generator.num_replicas=4", "generator.batch_size=64", "train.epochs=2", "lora.rank=8")


def test_cache_path_is_under_the_document():
    assert qa_cache_path("ns", DOCUMENT, LiftConfig()) == f"ns/doc/qa/{key()}.jsonl"


def test_adapter_hash_changes_with_every_setting_that_changes_the_pairs(tmp_path: Path):
    """A rerun after changing how QA is written must train again, not skip as already published."""
    template = tmp_path / "prompt.txt"
    template.write_text("Write {m} pairs.", encoding="utf-8")

    def adapter_hash(*overrides: str) -> str:
        return load_config(LiftConfig, None, list(overrides)).adapter_hash()

    changed = [
        adapter_hash("generator.answer_aware=fill"),
        adapter_hash("generator.verify_answers=true"),
        adapter_hash("generator.max_retries=1"),
        adapter_hash(f"generator.template_file={template}"),
        adapter_hash("generator.qa_per_sentence=3"),
    ]
    assert adapter_hash() not in changed and len(set(changed)) == len(changed)
    assert adapter_hash() == adapter_hash("generator.batch_size=64", "generator.sentence_cache=true")


def test_a_cache_missing_sentences_is_told_apart_from_a_complete_one():
    config = LiftConfig()
    assert sentence_count(DOCUMENT, config) == 2
    rows = [{"doc_id": "doc", "sentence_index": i, "qa_json": "[]"} for i in range(2)]
    assert missing_sentences(rows, DOCUMENT, config) == 0
    assert missing_sentences(rows[:1] + rows[:1], DOCUMENT, config) == 1  # a repeated row is not a sentence
    assert missing_sentences([], DOCUMENT, config) == 2
