"""Benchmarks, not tests: each writes docs/results/<name>.json and its section of docs/benchmarks.md.

Run from the repository root as modules, e.g. `.venv/bin/python -m benchmarks.bench_serve --help`.
"""
