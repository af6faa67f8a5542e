"""End to end on real parts: local Ray, Ray Train, the S3 server on loopback, Ray Serve over HTTP."""

from __future__ import annotations

import json

import pytest

from lift_ray.client import EndpointError, ask
from lift_ray.documents import Document
from lift_ray.layout import qa_cache_path, read_document_text, read_manifest, write_qa_cache
from lift_ray.pipeline import lift_documents, sentence_count
from lift_ray.storage import Store

from .facts import DOCUMENT, HELD_OUT, TRAINING_PAIRS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def published_varrow(ray_cluster, s3_store_root, lift_config):
    """The Varrow Island document trained on hand-written QA pairs and published to the S3 server.

    The pairs go in as the document's QA cache, one pair per row (so none is held out), rows for every sentence
    (a cache missing sentences is generated again); `lift_documents` then trains on them and publishes.
    """
    store = Store.from_uri(s3_store_root)
    document = Document.from_text("varrow", DOCUMENT)
    sentences = sentence_count(document, lift_config)
    pairs = [[pair] for pair in TRAINING_PAIRS] + [[] for _ in range(sentences - len(TRAINING_PAIRS))]
    rows = [
        {"doc_id": document.doc_id, "sentence_index": min(i, sentences - 1), "qa_json": json.dumps(p)}
        for i, p in enumerate(pairs)
    ]
    write_qa_cache(store, qa_cache_path(lift_config.storage.namespace, document, lift_config), rows)
    [report] = lift_documents([document], lift_config)
    assert report.status == "published", report.error
    return document, report


def test_published_adapter_has_manifest_and_peft_files(published_varrow, s3_store_root, lift_config):
    document, report = published_varrow
    store = Store.from_uri(s3_store_root)
    manifest = read_manifest(store, lift_config.storage.namespace, document.doc_id)
    assert manifest is not None
    assert manifest["config_hash"] == lift_config.adapter_hash()
    assert manifest["qa_count"] == len(TRAINING_PAIRS)
    assert manifest["final_loss"] < 0.5 < manifest["epoch_losses"][0]
    assert manifest["quality"]["holdout_pairs"] == 0 and manifest["quality"]["passed"]  # hand-written: none held out
    keys = store.list_keys(f"{lift_config.storage.namespace}/varrow/adapter")
    assert any(k.endswith("adapter_config.json") for k in keys)
    assert any(k.endswith("adapter_model.safetensors") for k in keys)
    assert report.adapter_bytes and report.adapter_bytes > 1_000_000
    # The document's text goes with its adapter, for the endpoint's with_context.
    assert manifest["document_text"] == "document.txt"
    assert read_document_text(store, lift_config.storage.namespace, document.doc_id) == DOCUMENT


def test_lifted_adapter_answers_held_out_paraphrases_and_base_does_not(published_varrow, serve_url):
    document, _ = published_varrow
    lifted = [ask(serve_url, document.doc_id, question) for question, _ in HELD_OUT]
    base = [ask(serve_url, "base", question) for question, _ in HELD_OUT]
    lifted_correct = [kw in answer.lower() for (_, kw), answer in zip(HELD_OUT, lifted, strict=True)]
    base_correct = [kw in answer.lower() for (_, kw), answer in zip(HELD_OUT, base, strict=True)]
    assert sum(lifted_correct) >= 2, f"LIFTed answers: {lifted}"
    assert sum(base_correct) == 0, f"base answers: {base}"


def test_unknown_document_is_404_with_a_message(serve_url):
    with pytest.raises(EndpointError) as raised:
        ask(serve_url, "no-such-document", "Hello?")
    assert raised.value.status == 404
    assert "no-such-document" in raised.value.detail


def test_unsafe_document_id_is_404_not_a_server_error(serve_url):
    with pytest.raises(EndpointError) as raised:
        ask(serve_url, "../secrets", "Hello?")
    assert raised.value.status == 404
    assert "not allowed" in raised.value.detail
