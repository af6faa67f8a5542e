"""The full LIFT path through the real generator: Ray Data → vLLM generator actor → Ray Train → publish."""

from __future__ import annotations

import json

import pytest

from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.pipeline import lift_documents, qa_cache_path
from lift_ray.storage import Store, read_json_lines, read_manifest

pytestmark = pytest.mark.integration

SMALL_DOCUMENT = (
    "The Pellworth Museum opened in 1904 in the town of Caldry. "
    "Its most famous exhibit is a bronze clock called the Marrow Bell. "
    "The museum is closed every Tuesday."
)


@pytest.fixture(scope="module")
def pipeline_config(lift_config: LiftConfig) -> LiftConfig:
    """Few pairs and one epoch: this test checks the path, not the learning (the serve test does that)."""
    return lift_config.model_copy(
        update={
            "generator": lift_config.generator.model_copy(update={"qa_per_sentence": 3, "batch_size": 8}),
            "train": lift_config.train.model_copy(update={"epochs": 1}),
            "storage": lift_config.storage.model_copy(update={"namespace": "pipeline"}),
        }
    )


def test_full_path_publishes_and_a_rerun_redoes_nothing(ray_cluster, pipeline_config):
    good = Document.from_text("pellworth", SMALL_DOCUMENT)
    empty = Document.from_text("blank", "   \n  ")
    reports = {r.doc_id: r for r in lift_documents([good, empty], pipeline_config)}

    assert reports["blank"].status == "failed" and "empty" in reports["blank"].error
    report = reports["pellworth"]
    assert report.status == "published", report.error
    assert report.sentences == 3
    assert report.sentences_with_pairs >= 1 and report.qa_count >= 1
    assert report.timings["generate_s"] > 0 and report.timings["train_s"] > 0

    store = Store.from_uri(pipeline_config.storage.root)
    manifest = read_manifest(store, "pipeline", "pellworth")
    assert manifest["qa_count"] == report.qa_count
    cached = read_json_lines(store, qa_cache_path("pipeline", good, pipeline_config))
    assert [row["sentence_index"] for row in cached] == [0, 1, 2]
    assert sum(len(json.loads(row["qa_json"])) for row in cached) == report.qa_count

    rerun = {r.doc_id: r for r in lift_documents([good], pipeline_config)}
    assert rerun["pellworth"].status == "skipped"
    assert read_manifest(store, "pipeline", "pellworth")["published_at"] == manifest["published_at"]
