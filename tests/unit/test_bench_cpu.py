"""ProcessCpuSampler: where a machine's CPU went during a window, read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from testkit.bench import ProcessCpuSampler, cpu_shares

# Spins until it has used 1.5 s of CPU (however long a loaded machine makes that take), at most 60 s.
BUSY_CPU_S = 1.5
# Mostly asleep, with a moment of work in the middle so that it is seen running inside the window.
IDLE = (
    "import time\ntime.sleep(2.0)\nend = time.process_time() + 0.05\n"
    "while time.process_time() < end: pass\ntime.sleep(2.0)"
)
BUSY = f"import time\nend = time.time() + 60\nwhile time.process_time() < {BUSY_CPU_S} and time.time() < end: pass"


def test_sampler_tells_a_busy_process_from_an_idle_one() -> None:
    with ProcessCpuSampler(interval_s=0.2) as sampler:
        busy = subprocess.Popen([sys.executable, "-c", BUSY, "busy-marker"])
        idle = subprocess.Popen([sys.executable, "-c", IDLE, "idle-marker"])
        start = time.time()
        busy.wait()
        idle.wait()
        end = time.time()
    span, used = sampler.usage(start, end)
    assert 1.5 < span <= end - start
    by_marker = {
        marker: cpu for cpu, command in used.values() for marker in ("busy-marker", "idle-marker") if marker in command
    }
    # The busy process's CPU time as sampled (0.2 s apart, so up to a sample's worth early or late of its own).
    assert BUSY_CPU_S - 0.6 < by_marker["busy-marker"] <= BUSY_CPU_S + 0.3
    assert by_marker.get("idle-marker", 0.0) < 0.2 * span
    shares = cpu_shares(sampler, start, end, lambda command: "busy-marker" in command)
    assert shares["worker_cpu_share"] == round(by_marker["busy-marker"] / span, 3)
    # everything else: every sampled process but the measured one (the idle one, this one, the machine's rest)
    others = sum(cpu for cpu, command in used.values() if "busy-marker" not in command)
    assert shares["other_cpu_cores"] == round(others / span, 3)
    assert others >= by_marker.get("idle-marker", 0.0)
    # measuring the idle process instead moves the busy one's core into "everything else"
    flipped = cpu_shares(sampler, start, end, lambda command: "idle-marker" in command)
    assert flipped["worker_cpu_share"] == round(by_marker.get("idle-marker", 0.0) / span, 3) < 0.2
    assert flipped["worker_cpu_share"] < shares["worker_cpu_share"]
    assert flipped["other_cpu_cores"] >= shares["worker_cpu_share"] - 0.002  # rounding of both


def test_a_window_without_samples_is_an_error() -> None:
    with ProcessCpuSampler(interval_s=0.2) as sampler:
        time.sleep(0.5)
    with pytest.raises(ValueError, match="fewer than two samples"):
        sampler.usage(0.0, 1.0)
