"""A Ray cluster of `ray start` processes on this machine, for tests and benchmarks that need the real job path.

The cluster is its own: `ray start --head` and `ray start --address` in separate processes, with their own
temp dir and ports, driven only through subprocesses, the dashboard's HTTP API and `JobSubmissionClient`
(a local Ray in the calling process is never touched). Every process the cluster starts inherits one
environment variable naming its node, so the caller kills exactly its own processes (a whole node to simulate
a lost spot instance, everything at the end) and never runs `ray stop`, which would stop every Ray instance
on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from testkit.local_s3 import free_port

VENV_BIN = Path(sys.executable).parent
NODE_MARKER = "LIFT_RAY_TEST_NODE"


def _node_ports() -> list[str]:
    """Free ports for everything a node listens on, so that it cannot meet another Ray instance's defaults."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


class LocalCluster:
    """A Ray cluster of `ray start` processes on this machine, each node's processes marked in their environment."""

    def __init__(self, temp_dir: Path, env: dict[str, str]) -> None:
        self.temp_dir = temp_dir
        self.cluster_id = uuid.uuid4().hex[:8]
        self.env = env
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()

    @property
    def dashboard_url(self) -> str:
        """Where the job server (the dashboard) listens."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        env = {**self.env, NODE_MARKER: f"{self.cluster_id}/{name}"}
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 - the node keeps writing to it
        # --block keeps `ray start` as the parent of the node's processes; a new session keeps signals to
        # pytest (Ctrl-C) away from the node.
        self.nodes[name] = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", "--temp-dir", str(self.temp_dir)]
            + _node_ports()
            + args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_head(self, num_cpus: int) -> None:
        """The head node: GCS, dashboard with the job server on 127.0.0.1, `num_cpus` CPUs; waits until it is up."""

        def args() -> list[str]:
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            return [
                "--head",
                "--port",
                str(self.gcs_port),
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(free_port()),
                f"--num-cpus={num_cpus}",
            ]

        self._start_and_wait("head", args, count=1)

    def add_node(self, name: str, num_cpus: int) -> None:
        """Another node joining the head (what an autoscaler's new instance does); waits until it is alive."""
        count = len(self.alive_nodes()) + 1
        self._start_and_wait(
            name, lambda: ["--address", f"127.0.0.1:{self.gcs_port}", f"--num-cpus={num_cpus}"], count=count
        )

    def _start_and_wait(self, name: str, args: Callable[[], list[str]], count: int, attempts: int = 5) -> None:
        """Start a node and wait for `count` live nodes.

        `ray start` gives up (or hangs) when a node's processes take more than 30 s to come up, which happens
        when other work loads the machine: then the node's leftovers are killed and it is started again.
        """
        for attempt in range(attempts):
            self._start(name, args())
            try:
                self.wait_for_nodes(count)
                return
            except (RuntimeError, TimeoutError):
                if attempt + 1 == attempts:
                    raise
                self._kill(self.processes(name))

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes, from the dashboard's state API (HTTP; no Ray driver in this process)."""
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.dashboard_url, raise_on_missing_output=False) if n.state == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 180.0) -> list[Any]:
        """Block until `count` nodes are alive; raise with the node logs' tails if they do not come up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.nodes.items():
                if process.poll() is not None and name not in self.killed:
                    raise RuntimeError(f"ray start for {name} exited: {self._log_tail(name)}")
            try:
                nodes = self.alive_nodes()
                if len(nodes) >= count:
                    return nodes
            except Exception:  # the dashboard is not up yet
                pass
            time.sleep(1.0)
        raise TimeoutError(f"{count} nodes not alive within {timeout:.0f} s: {self._log_tail('head')}")

    def _log_tail(self, name: str) -> str:
        return (self.temp_dir / f"{name}.log").read_text(errors="replace")[-2000:]

    def processes(self, name: str | None = None) -> list[psutil.Process]:
        """Every live process of this cluster (or of one node), found by the marker in its environment."""
        prefix = f"{self.cluster_id}/{name}" if name else f"{self.cluster_id}/"
        found = []
        for process in psutil.process_iter():
            try:
                marker = process.environ().get(NODE_MARKER, "")
            except (psutil.Error, OSError):
                continue
            if (marker == prefix) if name else marker.startswith(prefix):
                found.append(process)
        return found

    def kill_node(self, name: str) -> int:
        """SIGKILL a node's raylet, then every other process of that node: the node is gone, as a lost spot
        instance is. Returns how many processes were killed."""
        self.killed.add(name)
        victims = self.processes(name)
        raylets = [p for p in victims if p.name() == "raylet"]
        assert raylets, f"node {name} has no raylet to kill"
        self._kill(raylets + [p for p in victims if p not in raylets])
        return len(victims)

    @staticmethod
    def _kill(processes: list[psutil.Process]) -> None:
        """SIGKILL `processes`, in order, and wait for them to be gone."""
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=30)

    def shutdown(self) -> None:
        """Kill every process of this cluster (and only those); `ray stop` would stop every Ray on the machine."""
        for _ in range(3):  # workers started while the first sweep ran
            victims = self.processes()
            if not victims:
                return
            self._kill(victims)


def cluster_environment() -> dict[str, str]:
    """This process's environment for a cluster's nodes: no RAY_ variables, the venv first on PATH (the jobs'
    `python`), authentication and usage stats off, a longer agent start-up allowance for a busy machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != NODE_MARKER}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the job's entrypoint is the venv's
            "RAY_AUTH_MODE": "disabled",  # a token in ~/.ray would otherwise switch authentication on
            "RAY_USAGE_STATS_ENABLED": "0",
            # On a busy machine the dashboard agent can take more than the default 15 s to start; the
            # raylet then exits and the node never joins.
            "RAY_agent_register_timeout_ms": "60000",
        }
    )
    return env
