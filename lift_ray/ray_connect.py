"""Joining a Ray cluster without waiting for minutes on a dead one.

`ray.init()` joins the cluster named by its `address`, by `RAY_ADDRESS`, or (for no address or 'auto') the one
the last `ray start` on this machine recorded in `<ray temp dir>/ray_current_cluster`, and starts a local
instance only when none is named. When the named cluster is gone (stopped without `ray stop`, a crashed head,
a reclaimed machine) Ray 2.60 retries for many minutes, printing only its own warnings. `connect_ray` first
waits a bounded time (`LIFT_RAY_CONNECT_TIMEOUT_S`, default 30 s) for the cluster's address to accept a
connection, and otherwise fails with the address, where it came from, and what to do.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT_ENV = "LIFT_RAY_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 30.0


class RayClusterUnreachable(ConnectionError):
    """The Ray cluster that `ray.init` would join does not answer; the message says what to do."""


@dataclass(frozen=True)
class ClusterAddress:
    """The host:port of an existing cluster and where the address came from (for the error message)."""

    address: str
    source: str


def recorded_address_file() -> Path:
    """Where `ray start` records the cluster to join (Ray 2.60: `$RAY_TMPDIR`, else `$TMPDIR`, else /tmp; then ray/)."""
    if "RAY_TMPDIR" in os.environ:
        temp = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        temp = os.environ["TMPDIR"]
    else:
        temp = "/tmp"
    return Path(temp) / "ray" / "ray_current_cluster"


def existing_cluster_address(address: str | None = None) -> ClusterAddress | None:
    """The existing cluster `ray.init(address)` would join, or None when it would start a local instance.

    As Ray 2.60 resolves it: an explicit address wins, then `RAY_ADDRESS`; for no address or 'auto', the
    address the last `ray start` recorded. ('auto' without a recorded address lets Ray look for a running
    local cluster by its processes, which answers at once either way: None here.)
    """
    if address not in (None, "", "auto"):
        return None if address == "local" else ClusterAddress(address, "the address given")
    from_env = os.environ.get("RAY_ADDRESS", "")
    if from_env and from_env != "auto":
        return None if from_env == "local" else ClusterAddress(from_env, "RAY_ADDRESS")
    path = recorded_address_file()
    try:
        recorded = path.read_text().strip()
    except OSError:
        return None
    return ClusterAddress(recorded, f"recorded by `ray start` in {path}") if recorded else None


def connect_timeout_s(timeout_s: float | None = None) -> float:
    """`timeout_s`, else `LIFT_RAY_CONNECT_TIMEOUT_S`, else 30 s."""
    if timeout_s is not None:
        return timeout_s
    value = os.environ.get(CONNECT_TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{CONNECT_TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if "://" in address else address  # ray://host:port (Ray Client)
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def wait_for_cluster(cluster: ClusterAddress, timeout_s: float) -> None:
    """Return once `cluster.address` accepts a TCP connection; raise `RayClusterUnreachable` after `timeout_s`."""
    host, port = _host_port(cluster.address)
    deadline = time.monotonic() + timeout_s
    pause = 0.1
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, left))):
                return
        except OSError as exc:
            error = exc
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, 2.0)
    raise RayClusterUnreachable(
        f"no Ray cluster answers at {cluster.address} ({cluster.source}) after {timeout_s:g} s: {error}. "
        "If that cluster is gone, run `ray stop` (it also forgets the address `ray start` recorded) and unset "
        "RAY_ADDRESS to let this command start a local Ray, or start a cluster first (`ray start --head`) and "
        f"point RAY_ADDRESS at it. To wait longer, set {CONNECT_TIMEOUT_ENV} (seconds)."
    )


def connect_ray(address: str | None = None, timeout_s: float | None = None, **init_kwargs: Any) -> None:
    """`ray.init(address, **init_kwargs)` unless Ray is already initialised, failing within `timeout_s` (default:
    `LIFT_RAY_CONNECT_TIMEOUT_S` or 30 s) when the existing cluster it would join does not answer."""
    import ray

    if ray.is_initialized():
        return
    cluster = existing_cluster_address(address)
    if cluster is not None:
        wait_for_cluster(cluster, connect_timeout_s(timeout_s))
    ray.init(address=address, **init_kwargs)
