"""The full LIFT path through the real generator: Ray Data → vLLM generator actor → Ray Train → publish."""

from __future__ import annotations

import json
import time

import pytest

from lift_ray.cli import run_lift
from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.layout import REPORT_NAME, SUMMARY_NAME, qa_cache_path, read_manifest, report_key
from lift_ray.storage import Store, read_json_lines

pytestmark = pytest.mark.integration

EXTRA_SENTENCE = "Its garden has 40 apple trees."
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
            "generator": lift_config.generator.model_copy(
                update={"qa_per_sentence": 3, "batch_size": 8, "sentence_cache": True}
            ),
            "train": lift_config.train.model_copy(update={"epochs": 1}),
            "storage": lift_config.storage.model_copy(update={"namespace": "pipeline"}),
        }
    )


def _report(store: Store, run_id: str) -> dict[str, dict]:
    rows = read_json_lines(store, report_key(run_id, REPORT_NAME))
    return {row["doc_id"]: row for row in rows}


def test_full_path_publishes_and_a_rerun_redoes_nothing(ray_cluster, pipeline_config, s3_bucket):
    """The bulk job's own entry (`run_lift`) on documents in S3: real generator, trainer, publish, report.

    `pellworth-2` repeats pellworth and adds a sentence: with the sentence cache, the shared sentences are
    generated once for the two documents.
    """
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="docs/pellworth.txt", Body=SMALL_DOCUMENT.encode())
    s3.put_object(Bucket=bucket, Key="docs/pellworth-2.txt", Body=f"{SMALL_DOCUMENT} {EXTRA_SENTENCE}".encode())
    s3.put_object(Bucket=bucket, Key="docs/blank.txt", Body=b"   \n  ")
    inputs = [f"{s3_bucket}/docs/"]

    assert run_lift(pipeline_config, inputs, run_id="first") == 1  # the blank document failed
    store = Store.from_uri(pipeline_config.storage.root)
    report = _report(store, "first")
    assert report["blank"]["status"] == "failed" and "empty" in report["blank"]["error"]
    pellworth = report["pellworth"]
    assert pellworth["status"] == "published", pellworth["error"]
    assert pellworth["sentences"] == 3
    assert pellworth["sentences_with_pairs"] >= 1 and pellworth["qa_count"] >= 1
    assert pellworth["timings"]["generate_s"] > 0 and pellworth["timings"]["train_s"] > 0
    summary = json.loads(store.read_bytes(report_key("first", SUMMARY_NAME)))
    assert summary["counts"] == {"published": 2, "low_quality": 0, "skipped": 0, "failed": 1}
    second = report["pellworth-2"]
    assert second["status"] == "published" and second["sentences"] == 4
    assert pellworth["cached_sentences"] + second["cached_sentences"] == 3

    manifest = read_manifest(store, "pipeline", "pellworth")
    assert manifest["qa_count"] == pellworth["qa_count"]
    good = Document.from_text("pellworth", SMALL_DOCUMENT)
    cached = read_json_lines(store, qa_cache_path("pipeline", good, pipeline_config))
    assert [row["sentence_index"] for row in cached] == [0, 1, 2]
    assert sum(len(json.loads(row["qa_json"])) for row in cached) == pellworth["qa_count"]

    assert run_lift(pipeline_config, inputs, run_id="rerun") == 1
    assert _report(store, "rerun")["pellworth"]["status"] == "skipped"
    assert read_manifest(store, "pipeline", "pellworth")["published_at"] == manifest["published_at"]


def test_streaming_falls_back_to_sequential_when_both_stages_do_not_fit(ray_cluster, lift_config):
    from lift_ray.pipeline import stage_bundles, stage_resources, streaming_fits

    # The default CPU config (1 CPU per generator actor and per trainer worker) needs 3.25 CPUs at once.
    defaults = LiftConfig()
    assert stage_resources(defaults) == {"CPU": 3.25, "GPU": 0}
    assert not streaming_fits(defaults)  # this Ray instance has 2 CPUs
    assert stage_resources(lift_config)["CPU"] <= 2
    # Asked to wait for a scale-up that never comes (no autoscaler here): it waits that long, then falls back.
    waiting = defaults.model_copy(update={"train": defaults.train.model_copy(update={"scale_up_wait_s": 1.0})})
    started = time.monotonic()
    assert not streaming_fits(waiting, poll_s=0.2)
    assert 1.0 <= time.monotonic() - started < 30
    assert stage_bundles(defaults) == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]  # one actor, two workers
