"""Integration fixtures: one local Ray instance, one S3 bucket, one Serve app per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lift_ray.config import PLAIN_QA_TRAINING, LiftConfig, ServeConfig, load_config
from testkit.local_s3 import free_port

# Fractional CPUs so training workers, a generator actor (both at once when training streams from the
# generator) and a Serve replica fit on 2 cores: 2 x 0.4 + 0.4 + 0.25 (sentence split) + 0.3 + 0.1 (ingress).
TEST_OVERRIDES = [
    "train.num_workers=2",
    "train.cpus_per_worker=0.4",
    "train.threads_per_worker=1",
    "generator.num_cpus=0.4",
]

# A LIFT job that checks plumbing, not learning (test_lift_and_serve covers that): one pair per sentence, any
# parsed pair counts, no extra generation stages, one epoch of a rank-4 adapter. Tests add their CPU shares.
TINY_GENERATOR: dict[str, Any] = {
    "qa_per_sentence": 1,
    "max_new_tokens": 64,
    "max_retries": 1,
    "require_grounded": False,
    "answer_aware": "off",
    "verify_answers": False,
}
TINY_TRAIN: dict[str, Any] = {
    "epochs": 1,
    "threads_per_worker": 1,
    "batch_size": 2,
    "max_seq_len": 128,
    # plain pairs: the default recite recipe off (PLAIN_QA_TRAINING)
    "sentence_answers": False,
    "sentence_answers_prompt": "",
    "sentence_answers_with_answer": False,
}
TINY_LORA: dict[str, Any] = {"rank": 4, "alpha": 8}


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """A local Ray instance, started after the S3 server so its workers inherit the endpoint settings."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_store_root(s3_server: str) -> str:
    """A bucket on the S3 server, shared by the integration tests."""
    import boto3

    bucket = f"lift-int-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store"


@pytest.fixture(scope="session")
def lift_config(s3_store_root: str, tmp_path_factory: pytest.TempPathFactory) -> LiftConfig:
    """The CPU test configuration: the embedded model, the paper's m=5 plain pairs (PLAIN_QA_TRAINING: the
    default recite recipe off, as most tests check plumbing, and it triples training), r=16 at lr 1e-3.
    `test_generated_qa_teaches` turns the default recipe back on (`RECITE_RECIPE`)."""
    work_dir = tmp_path_factory.mktemp("lift-work")
    settings = [*TEST_OVERRIDES, *PLAIN_QA_TRAINING, f"storage.root={s3_store_root}", f"work_dir={work_dir}"]
    return load_config(LiftConfig, None, settings)


@pytest.fixture(scope="session")
def serve_url(ray_cluster: None, lift_config: LiftConfig, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The lift-ray Serve app answering HTTP on 127.0.0.1, reading adapters from the test bucket."""
    from lift_ray.cli import start_serve

    config = ServeConfig(
        model=lift_config.model,
        storage=lift_config.storage,
        port=free_port(),
        adapter_cache_dir=tmp_path_factory.mktemp("adapter-cache"),
        num_cpus_per_replica=0.3,
        torch_threads=1,
        max_adapters_per_replica=4,
    )
    return start_serve(config)
