"""The `gpu` extra's pins resolve on the package index and agree with each other (network: package index only)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def gpu_pins() -> dict[str, Requirement]:
    """The `gpu` extra of pyproject.toml, by package name."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {Requirement(spec).name: Requirement(spec) for spec in extras["gpu"]}


def test_gpu_extra_pins_resolve_and_agree(tmp_path: Path) -> None:
    pins = gpu_pins()
    assert set(pins) == {"vllm", "torch"}, "the gpu extra pins vLLM and the torch it needs"
    for requirement in pins.values():
        assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", (
            f"{requirement} is not pinned to one release"
        )
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"]
        + ["--report", str(report)]
        + [str(requirement) for requirement in pins.values()],
        check=True,
        timeout=300,
    )
    installed = json.loads(report.read_text())["install"]
    resolved = {item["metadata"]["name"].lower(): item["metadata"] for item in installed}
    assert set(resolved) == set(pins)
    torch_version = Version(resolved["torch"]["version"]).base_version
    assert Version(torch_version) in pins["torch"].specifier
    vllm_torch = [Requirement(spec) for spec in resolved["vllm"].get("requires_dist", [])]
    vllm_torch = [requirement for requirement in vllm_torch if requirement.name == "torch" and not requirement.marker]
    assert vllm_torch, "vLLM's metadata names no torch requirement"
    assert all(Version(torch_version) in requirement.specifier for requirement in vllm_torch), (
        f"vllm {resolved['vllm']['version']} needs {vllm_torch[0]}, the gpu extra pins torch {torch_version}"
    )
