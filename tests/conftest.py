"""Shared fixtures: a local S3 server (moto) for the whole session, a fresh bucket per test, the embedded model
and a tiny random-weight Llama with its tokenizer (training mechanics without the cost of 135M)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.local_s3 import AWS_VARIABLES_TO_CLEAR, s3_environment, start_s3_server


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's markers."""
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "integration: slower end-to-end test (Ray cluster, real model)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first (they need a process where Ray was never started; the integration fixtures start it for
    the session); skip `gpu` tests where torch sees no CUDA GPU (`make unit` on a CPU machine), saying why."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is not None)  # stable: order kept otherwise
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the session; boto3 here and in child processes (Ray workers) uses it."""
    process, endpoint = start_s3_server()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in AWS_VARIABLES_TO_CLEAR:
                patch.delenv(name, raising=False)
            for name, value in s3_environment(endpoint).items():
                patch.setenv(name, value)
            yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty, uniquely named bucket on the test server, as 's3://<bucket>'."""
    import boto3

    bucket = f"lift-test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted from its GGUF on first use)."""
    from lift_ray.config import DEFAULT_CACHE_DIR
    from lift_ray.models import ensure_embedded_model

    return ensure_embedded_model(DEFAULT_CACHE_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A 2-layer, 64-wide Llama with random weights (seed 0) and SmolLM2's tokenizer, saved as a model folder."""
    from testkit.tiny_model import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_model_dir)
