"""A Ray Train worker killed mid-training: the run restarts (FailureConfig) and every document publishes once."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lift_ray.config import LiftConfig
from lift_ray.layout import read_manifest
from lift_ray.storage import Store
from lift_ray.train.loop import DocumentJob
from lift_ray.train.trainer import train_documents_on_ray

pytestmark = pytest.mark.integration


def _job(doc_id: str) -> DocumentJob:
    pairs = [{"question": f"What is fact {i} of {doc_id}?", "answer": f"Fact {i} is {doc_id}-{i}."} for i in range(8)]
    return DocumentJob(doc_id, sha256=f"sha-{doc_id}", rows=[{"sentence_index": 0, "qa_json": json.dumps(pairs)}])


def kill_once(marker: Path, doc_id: str) -> Callable[[int], Callable[[str, int], None] | None]:
    """An `after_step` factory: a real worker death in the middle of a document's training, once.

    The worker of rank 1 kills its own process (SIGKILL) right after its first training step on `doc_id`,
    having written its pid to `marker`; a restarted worker finds the marker and runs clean. The closures
    travel to the workers by value (cloudpickle), so they need no import path there.
    """

    def factory(rank: int) -> Callable[[str, int], None] | None:
        if rank != 1 or marker.exists():
            return None

        def after_step(step_doc_id: str, step: int) -> None:
            if step_doc_id == doc_id and step == 1:
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        return after_step

    return factory


def test_a_killed_worker_is_retried_and_each_document_publishes_once(
    ray_cluster, lift_config: LiftConfig, tiny_model_dir: Path, tmp_path: Path
):
    marker = tmp_path / "killed"  # rank 1 SIGKILLs itself after its first step on "beta", once
    config = lift_config.model_copy(
        update={
            "model": lift_config.model.model_copy(update={"base_model": str(tiny_model_dir)}),
            "train": lift_config.train.model_copy(update={"epochs": 2, "batch_size": 4, "max_failures": 1}),
            "storage": lift_config.storage.model_copy(update={"namespace": "failure"}),
        }
    )
    results, error = train_documents_on_ray(config, [_job("alpha"), _job("beta")], after_step=kill_once(marker, "beta"))

    assert error is None
    assert marker.exists(), "the worker of rank 1 was never killed: the test proved nothing"
    assert {doc: r["status"] for doc, r in results.items()} == {"alpha": "published", "beta": "published"}
    assert {doc: r["publishes"] for doc, r in results.items()} == {"alpha": 1, "beta": 1}
    store = Store.from_uri(config.storage.root)
    for doc_id in ("alpha", "beta"):
        manifest = read_manifest(store, "failure", doc_id)
        assert manifest is not None and manifest["config_hash"] == config.adapter_hash()
        files = manifest["adapter_files"]
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files) and len(files) == len(set(files))
