"""A local S3 API server (moto's server mode in its own process) for tests and benchmarks on loopback.

boto3 finds it through the standard environment (`s3_environment`), so the code under test and its Ray
workers talk to it exactly as they would to AWS or MinIO.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

# Variables that would point boto3 somewhere other than the local server (the service-specific endpoint wins
# over AWS_ENDPOINT_URL; a profile or session token would mix real settings in).
AWS_VARIABLES_TO_CLEAR = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3_server(timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start moto's S3 server on a free loopback port; returns the process and its endpoint URL once it listens.

    It runs in its own process: moto's server imports flask, and vLLM's CPU start-up scans every loaded
    module and trips over flask's context proxies ("Working outside of application context").
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with status {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    process.terminate()
    raise TimeoutError(f"the S3 server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def s3_environment(endpoint: str, key: str = "testing") -> dict[str, str]:
    """The AWS variables that point boto3 at `endpoint` (clear `AWS_VARIABLES_TO_CLEAR` as well)."""
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
