"""Shared plumbing for benchmarks: their LIFT settings, invented documents, how docs/benchmarks.md gets their
tables, CPU sampling. Where figures go (`RESULTS_DIR`, `write_results`, `markdown_table`) is lift_ray.results."""

from __future__ import annotations

import argparse
import os
import platform
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lift_ray.config import PLAIN_QA_TRAINING, LiftConfig, load_config
from lift_ray.documents import Document
from lift_ray.results import REPO_ROOT
from lift_ray.results import RESULTS_DIR as RESULTS_DIR  # re-exported for the benchmarks
from lift_ray.results import markdown_table as markdown_table
from lift_ray.results import write_results as write_results

BENCHMARKS_MD = REPO_ROOT / "docs" / "benchmarks.md"
# LIFT settings of the CPU benchmarks: small enough for minutes on 2 cores, the same in each of them. They
# measure the machinery (pipelines, start-up, TTFT), so they train the paper's plain pairs, as when recorded
# (PLAIN_QA_TRAINING: the default recite recipe off).
BENCH_DEFAULTS = [
    *PLAIN_QA_TRAINING,
    "train.epochs=2",
    "generator.qa_per_sentence=2",
    "generator.batch_size=4",
    "train.num_workers=2",
    "train.cpus_per_worker=0.5",
    "generator.num_cpus=0.5",
]
PLACES = ["Caldry", "Morwen", "Tessel", "Brannock", "Ilvar", "Quenby", "Ostrel", "Pardith", "Sollen", "Vaske"]
THINGS = ["bronze clock", "glass works", "salt mill", "river ferry", "copper bell", "stone bridge", "paper mill"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and `--set`, as every benchmark takes them."""
    parser.add_argument("--config", type=Path, default=None, help="a LiftConfig YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")


def bench_config(args: argparse.Namespace, tmp: str) -> LiftConfig:
    """The benchmark's LiftConfig: `BENCH_DEFAULTS`, a store and work dir under `tmp`, then the user's; printed."""
    config = load_config(
        LiftConfig, args.config, [*BENCH_DEFAULTS, f"storage.root={tmp}/store", f"work_dir={tmp}/work", *args.overrides]
    )
    print(config.model_dump_json(indent=2))
    return config


def make_document(doc_id: str, sentences: int, first: int = 0) -> Document:
    """A document of `sentences` invented facts (the base model cannot know them), from fact number `first`."""
    lines = [
        f"The {THINGS[i % len(THINGS)]} of {PLACES[(i * 3) % len(PLACES)]} was built in {1801 + 7 * i} "
        f"by a mason named {PLACES[(i * 7 + 1) % len(PLACES)]}son."
        for i in range(first, first + sentences)
    ]
    return Document.from_text(doc_id, " ".join(lines))


def device_description() -> str:
    """The machine a figure was measured on, in words: GPU name, or CPU model and core count."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {len(os.sched_getaffinity(0))} cores"


def update_benchmarks_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between `<!-- bench:name -->` and `<!-- /bench:name -->` (appended if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.write_text(text)


def _process_cpu_seconds() -> dict[int, tuple[float, str]]:
    """Every process's CPU time so far (user + system, its exited threads included) and command line."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            command = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited meanwhile
            continue
        found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / ticks, command)
    return found


class ProcessCpuSampler:
    """Samples the CPU time of every process on this machine (Linux `/proc`) on a thread, every `interval_s`.

    For benchmarks that need to know where a machine's CPU went during a window of a run: which share of a
    core the measured processes got, and how much everything else took.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[int, tuple[float, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), _process_cpu_seconds()))
            if self._stop.wait(self.interval_s):
                self.samples.append((time.time(), _process_cpu_seconds()))
                return

    def __enter__(self) -> ProcessCpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def usage(self, start: float, end: float) -> tuple[float, dict[int, tuple[float, str]]]:
        """The sampled span inside [`start`, `end`] (epoch seconds) and each process's CPU seconds in it.

        A process seen only after the span's first sample counts from zero; one that exited inside the span
        counts up to the last sample that saw it.
        """
        inside = [(at, seen) for at, seen in self.samples if start <= at <= end]
        if len(inside) < 2:
            raise ValueError(f"fewer than two samples between {start} and {end}: sample more often")
        (first_at, first), (last_at, _) = inside[0], inside[-1]
        latest: dict[int, tuple[float, str]] = {}
        for _, seen in inside:
            latest.update(seen)
        used = {pid: (cpu - first.get(pid, (0.0, ""))[0], command) for pid, (cpu, command) in latest.items()}
        return last_at - first_at, used


def cpu_shares(
    sampler: ProcessCpuSampler, start: float, end: float, is_measured: Callable[[str], bool]
) -> dict[str, float]:
    """Between `start` and `end`: the mean share of a core each measured process got (by command line), and
    the cores everything else on the machine used meanwhile."""
    span, used = sampler.usage(start, end)
    measured = [cpu for cpu, command in used.values() if is_measured(command)]
    others = sum(cpu for cpu, command in used.values() if not is_measured(command))
    if not measured:
        raise ValueError("no measured process ran in the window")
    return {
        "worker_cpu_share": round(sum(measured) / len(measured) / span, 3),
        "other_cpu_cores": round(others / span, 3),
    }


def _status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak resident set; VmRSS: now), or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class ProcessMemorySampler:
    """Peak resident memory of chosen processes (Linux `/proc`), sampled on a thread every `interval_s`.

    `roles` maps a name to a test of a process's command line (and pid: `accept(pid, command)`); a process
    is tested at each sample until it matches (a Ray worker takes its actor's name after it starts), so a
    test that looks beyond the command line should cache what it finds. Each role's peak is the largest
    `VmHWM` (the kernel's own high-water mark of the process's resident set, so nothing between two samples
    is missed) of any process it matched.
    """

    def __init__(self, roles: dict[str, Callable[[int, str], bool]], interval_s: float = 0.5) -> None:
        self.roles, self.interval_s = roles, interval_s
        self.peak_kb: dict[str, int] = {}
        self.pids: dict[str, set[int]] = {name: set() for name in roles}
        self._matched: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        """Look at every process once: match new ones, update the peaks of matched ones still alive."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in self._matched:
                continue
            pid = int(entry.name)
            command = _command_line(pid)
            for name, accept in self.roles.items():
                if command and accept(pid, command):
                    self.pids[name].add(pid)
                    self._matched.add(pid)
        for name, pids in self.pids.items():
            for pid in pids:
                peak = _status_kb(pid, "VmHWM")
                if peak is not None:
                    self.peak_kb[name] = max(self.peak_kb.get(name, 0), peak)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> ProcessMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, name: str) -> float | None:
        """The role's peak resident memory in MiB, or None if no process of it was seen."""
        return round(self.peak_kb[name] / 1024, 1) if name in self.peak_kb else None
