"""Shared fixtures: a local S3 server (moto) for the whole session, and a fresh bucket per test."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

# Variables that would point boto3 somewhere other than the test server (the service-specific endpoint wins over
# AWS_ENDPOINT_URL, a profile or session token would mix real settings in).
_AWS_VARIABLES_TO_CLEAR = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's markers."""
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "integration: slower end-to-end test (Ray cluster, real model)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the session; boto3 here and in child processes (Ray workers) uses it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in _AWS_VARIABLES_TO_CLEAR:
                patch.delenv(name, raising=False)
            patch.setenv("AWS_ACCESS_KEY_ID", "testing")
            patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            patch.setenv("AWS_ENDPOINT_URL", endpoint)
            yield endpoint
    finally:
        server.stop()


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
