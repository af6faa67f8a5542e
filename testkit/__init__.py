"""Test and benchmark kit, not product: an OpenAI-compatible stub server (`chat_stub`), a local S3 API
server (`local_s3`), random LoRA adapters (`bench_adapters`) and the benchmarks' shared plumbing (`bench`).
Not installed with lift-ray (pyproject.toml installs `lift_ray*` and `serve*` only); importable from the
repository root, where pytest (`pythonpath = ["."]`) and `python -m benchmarks.bench_...` put it on the path.
"""
