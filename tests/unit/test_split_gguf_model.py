"""Models shipped as a GGUF split across PyPI packages: found, joined, checked, converted once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lift_ray import models
from lift_ray.models import ModelError, assemble_split_gguf, embedded_gguf_path, resolve_base_model, split_gguf_parts


def fake_split_packages(root: Path, gguf: Path, count: int) -> tuple[str, ...]:
    """`count` importable packages `fake_part<i>/data/part<i>.bin` holding consecutive slices of `gguf`."""
    data = gguf.read_bytes()
    size = -(-len(data) // count)
    names = []
    for i in range(count):
        folder = root / f"fake_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{i}.bin").write_bytes(data[i * size : (i + 1) * size])
        names.append(f"fake_part{i}")
    return tuple(names)


def test_parts_are_joined_in_order_and_converted_once(tmp_path, monkeypatch):
    gguf = embedded_gguf_path()
    packages = fake_split_packages(tmp_path / "site", gguf, 3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(models.SPLIT_GGUF_MODELS, "fake-135m", ("Fake-135M", packages))

    parts = split_gguf_parts(packages)
    assert [p.name for p in parts] == ["part0.bin", "part1.bin", "part2.bin"]
    joined = assemble_split_gguf(parts, tmp_path / "joined.gguf")
    assert joined.read_bytes() == gguf.read_bytes()
    with pytest.raises(ModelError, match="do not make a GGUF"):
        assemble_split_gguf(list(reversed(parts)), tmp_path / "reversed.gguf")
    assert not (tmp_path / "reversed.gguf").exists() and not (tmp_path / "reversed.gguf.partial").exists()
    pinned = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert assemble_split_gguf(parts, tmp_path / "checked.gguf", pinned).read_bytes() == gguf.read_bytes()
    with pytest.raises(ModelError, match="not the pinned"):
        assemble_split_gguf(parts, tmp_path / "damaged.gguf", "0" * 64)
    assert not (tmp_path / "damaged.gguf").exists() and not (tmp_path / "damaged.gguf.partial").exists()
    monkeypatch.setitem(models.SPLIT_GGUF_SHA256, "fake-135m", pinned)

    model_dir = resolve_base_model("fake-135m", tmp_path / "cache")
    assert model_dir == tmp_path / "cache" / "models" / "Fake-135M"
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "llama"
    source = json.loads((model_dir / models.SOURCE_FILE).read_text())  # named by its own GGUF metadata
    assert (
        source["size_label"] == "135M" and source["quantization"] == "Q4_1" and "dequantised" in source["converted_to"]
    )
    assert list((tmp_path / "cache" / "models").glob("*.gguf")) == []  # the joined file is not kept
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model("fake-135m", tmp_path / "cache") == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_missing_part_names_the_package_and_the_requirements_file(monkeypatch):
    monkeypatch.setitem(models.SPLIT_GGUF_MODELS, "absent", ("Absent", ("no_such_part_package_1",)))
    with pytest.raises(ModelError, match=r"no_such_part_package_1.*requirements/absent.txt"):
        resolve_base_model("absent", Path("/tmp/unused-cache"))
    with pytest.raises(ModelError, match="qwen2.5-coder-0.5b"):
        resolve_base_model("no-such-model", Path("/tmp/unused-cache"))
