"""The sentence-level QA cache: each sentence generated once, across batches, documents and runs."""

from __future__ import annotations

import json
from pathlib import Path

from lift_ray.config import LiftConfig, load_config
from lift_ray.storage import Store
from lift_ray.synth.cache import SentenceQACache, complete_with_cache
from lift_ray.synth.generator import QAGenerator
from tests.unit.test_generator import ScriptedEngine, qa

PARAGRAPH = "The Orvella Glass Works stands in Tessaro."


def rows_of(doc_id: str, *sentences: str) -> list[dict]:
    return [
        {"doc_id": doc_id, "sentence_index": i, "context": PARAGRAPH, "sentence": s} for i, s in enumerate(sentences)
    ]


def replies(_attempt: int, conversation: list[dict[str, str]]) -> str:
    """A grounded pair about whichever sentence the prompt shows: its last word is the answer."""
    sentence = conversation[-1]["content"].split("Last sentence:\n")[1].split("\n")[0]
    return qa((f"What is said in {sentence!r}?", sentence.rstrip(".").split()[-1]))


def make_cache(
    tmp_path: Path, namespace: str = "ns", *overrides: str
) -> tuple[SentenceQACache, ScriptedEngine, QAGenerator]:
    config = load_config(LiftConfig, None, ["generator.answer_aware='off'", *overrides])
    engine = ScriptedEngine(replies)
    cache = SentenceQACache(Store.from_uri(tmp_path), namespace, config.generator_fingerprint())
    return cache, engine, QAGenerator(engine, config.generator)


def asked(engine: ScriptedEngine) -> list[str]:
    return [c[-1]["content"] for conversations, _ in engine.calls for c in conversations]


def test_a_sentence_shared_by_two_documents_is_generated_once(tmp_path: Path):
    cache, engine, generator = make_cache(tmp_path)
    first = complete_with_cache(
        rows_of("a", "It was founded by Ilsa Varnholt.", "The glass is blue."), cache, generator.generate
    )
    assert len(asked(engine)) == 2 and [r["cache_hit"] for r in first] == [False, False]

    second = complete_with_cache(
        rows_of("b", "It was founded by Ilsa Varnholt.", "It sells vases."), cache, generator.generate
    )
    prompts = asked(engine)
    assert len(prompts) == 3 and "It sells vases." in prompts[-1]
    assert [r["cache_hit"] for r in second] == [True, False]
    assert second[0]["doc_id"] == "b" and second[0]["sentence_index"] == 0
    assert second[0]["qa_json"] == first[0]["qa_json"] and second[0]["output_tokens"] == 0
    assert second[1]["output_tokens"] > 0


def test_repeats_inside_one_batch_are_generated_once(tmp_path: Path):
    cache, engine, generator = make_cache(tmp_path)
    batch = rows_of("a", "The glass is blue.") + rows_of("b", "The glass is blue.")
    results = complete_with_cache(batch, cache, generator.generate)
    assert len(asked(engine)) == 1
    assert [(r["doc_id"], r["cache_hit"]) for r in results] == [("a", False), ("b", True)]
    assert json.loads(results[1]["qa_json"]) == [
        {"question": "What is said in 'The glass is blue.'?", "answer": "blue"}
    ]


def test_another_paragraph_other_settings_or_namespace_miss(tmp_path: Path):
    cache, engine, generator = make_cache(tmp_path)
    complete_with_cache(rows_of("a", "The glass is blue."), cache, generator.generate)
    other_paragraph = [{**rows_of("b", "The glass is blue.")[0], "context": "Another paragraph."}]
    assert cache.lookup(other_paragraph) == [None]
    other_m, _, _ = make_cache(tmp_path, "ns", "generator.qa_per_sentence=3")
    assert other_m.lookup(rows_of("b", "The glass is blue.")) == [None]
    other_namespace, _, _ = make_cache(tmp_path, "other")
    assert other_namespace.lookup(rows_of("b", "The glass is blue.")) == [None]
    assert make_cache(tmp_path, "ns", "generator.num_replicas=3")[0].lookup(rows_of("b", "The glass is blue."))[0]


def test_a_damaged_entry_is_generated_again_and_replaced(tmp_path: Path):
    cache, engine, generator = make_cache(tmp_path)
    row = rows_of("a", "The glass is blue.")
    cache.store.write_text(cache.key(row[0]), "{not json")
    [result] = complete_with_cache(row, cache, generator.generate)
    assert not result["cache_hit"] and len(asked(engine)) == 1
    assert cache.lookup(row)[0]["qa_json"] == result["qa_json"]


def test_cache_objects_sit_outside_the_namespace_folder(tmp_path: Path):
    cache, _, generator = make_cache(tmp_path)
    complete_with_cache(rows_of("a", "The glass is blue."), cache, generator.generate)
    assert cache.store.list_keys("ns") == []
    assert [k.split("/")[:2] for k in cache.store.list_keys("_sentence_qa")] == [["_sentence_qa", "ns"]]
