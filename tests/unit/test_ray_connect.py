"""Joining a Ray cluster that is gone fails within a bound, naming the address and what to do (no Ray started)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lift_ray.cli import main
from lift_ray.ray_connect import (
    CONNECT_TIMEOUT_ENV,
    RayClusterUnreachable,
    connect_ray,
    existing_cluster_address,
    recorded_address_file,
    wait_for_cluster,
)

BOUND_S = 1.5
SLACK_S = 3.0  # a Python round trip through the retry loop, on a busy 2-core machine


@pytest.fixture
def dead_address() -> str:
    """host:port of a loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def no_ray_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No RAY_ADDRESS, a Ray temp dir of our own (no recorded cluster), and Ray not initialised here."""
    import ray

    if ray.is_initialized():
        pytest.fail("Ray is initialised in this process (tests/conftest.py runs unit tests before integration ones)")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(CONNECT_TIMEOUT_ENV, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    yield


def test_a_dead_ray_address_fails_after_the_bound_with_the_address_and_what_to_do(
    dead_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", dead_address)
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, str(BOUND_S))
    started = time.monotonic()
    with pytest.raises(RayClusterUnreachable) as failed:
        connect_ray()
    elapsed = time.monotonic() - started
    assert BOUND_S <= elapsed < BOUND_S + SLACK_S  # kept trying until the bound (a cluster may be starting)
    message = str(failed.value)
    assert f"no Ray cluster answers at {dead_address} (RAY_ADDRESS) after 1.5 s" in message
    assert "`ray stop`" in message and "ray start --head" in message and CONNECT_TIMEOUT_ENV in message
    import ray

    assert not ray.is_initialized()


def test_the_address_the_last_ray_start_recorded_is_checked_the_same_way(dead_address: str, tmp_path: Path) -> None:
    import ray._private.utils  # pinned Ray 2.60: where `ray start` records the address ray.init() joins

    recorded = recorded_address_file()
    recorded.parent.mkdir(parents=True)
    recorded.write_text(dead_address + "\n")
    assert recorded == tmp_path / "raytmp" / "ray" / "ray_current_cluster"
    assert ray._private.utils.read_ray_address() == dead_address  # Ray reads the same file
    cluster = existing_cluster_address()
    assert cluster is not None and cluster.address == dead_address
    assert existing_cluster_address("auto") == cluster
    started = time.monotonic()
    with pytest.raises(
        RayClusterUnreachable, match=re.escape(f"at {dead_address} (recorded by `ray start` in {recorded})")
    ):
        connect_ray(timeout_s=0.5)
    assert time.monotonic() - started < 0.5 + SLACK_S


def test_which_cluster_ray_init_would_join(monkeypatch: pytest.MonkeyPatch, dead_address: str) -> None:
    assert existing_cluster_address() is None  # nothing recorded, no RAY_ADDRESS: ray.init starts a local Ray
    assert existing_cluster_address("local") is None
    assert existing_cluster_address("10.0.0.5:6379").address == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", dead_address)
    assert existing_cluster_address().source == "RAY_ADDRESS"
    assert existing_cluster_address("10.0.0.5:6379").address == "10.0.0.5:6379"  # an explicit address wins
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert existing_cluster_address() is None


def test_a_listening_cluster_is_joined_at_once() -> None:
    from lift_ray.ray_connect import ClusterAddress

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        wait_for_cluster(ClusterAddress(f"127.0.0.1:{port}", "test"), timeout_s=30)
        wait_for_cluster(ClusterAddress(f"ray://127.0.0.1:{port}", "test"), timeout_s=30)  # Ray Client
    assert time.monotonic() - started < 5


def test_a_bad_timeout_setting_says_so(monkeypatch: pytest.MonkeyPatch, dead_address: str) -> None:
    monkeypatch.setenv("RAY_ADDRESS", dead_address)
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{CONNECT_TIMEOUT_ENV}='soon' is not a number"):
        connect_ray()


def test_lift_ray_serve_on_a_dead_cluster_exits_2_within_the_bound(
    dead_address: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", dead_address)
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "1")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert f"lift-ray serve: no Ray cluster answers at {dead_address} (RAY_ADDRESS) after 1 s" in err


def test_lift_on_a_dead_cluster_fails_its_documents_with_the_reason_and_writes_the_report(
    dead_address: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lift_ray.storage import Store, read_json_lines

    monkeypatch.setenv("RAY_ADDRESS", dead_address)
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "1")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "one.txt").write_text("Anna lives in Oslo.")
    output = str(tmp_path / "store")
    assert main(["lift", str(docs), "--output", output, "--run-id", "dead-cluster"]) == 1
    [row] = read_json_lines(Store.from_uri(output), "_reports/dead-cluster/report.jsonl")
    assert row["status"] == "failed"
    assert row["error"].startswith(f"pipeline failed: RayClusterUnreachable: no Ray cluster answers at {dead_address}")
