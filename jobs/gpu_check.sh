#!/usr/bin/env bash
# The checks only a GPU can show, as one script for the device machine (PyTorch, transformers and peft are
# there; Ray and vLLM are not, and nothing can be downloaded). Under 8 minutes. Writes $OUT/gpu_check.log
# (and $OUT/gpu_junit.xml) when OUT is set. Usage, from the repository root: bash jobs/gpu_check.sh
set -uo pipefail
out="${OUT:-/tmp}"
python -m pip install -q --no-deps --no-index pydantic pyyaml pytest jsonschema 2>/dev/null || true
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)"
  # bf16 LoRA steps through AdapterTrainer on CUDA (a tiny random model: nothing to download). The vLLM test
  # (tests/unit/test_engines_gpu.py) needs the `gpu` extra and the embedded model: run it on a cluster node.
  PYTHONPATH=. timeout 420 python -m pytest tests/unit/test_train_gpu.py -m gpu -q \
    -p no:cacheprovider --junitxml="$out/gpu_junit.xml" -rs
} 2>&1 | tee "$out/gpu_check.log"
