"""The serving benchmark's settings and request mix (the benchmark itself runs outside the suite)."""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from benchmarks.bench_serve import load_models, parse_settings, zipf_choices


def test_settings_are_engine_colon_replicas() -> None:
    assert parse_settings("hf:1, vllm:1,vllm:2") == [("hf", 1), ("vllm", 1), ("vllm", 2)]
    for bad in ("tgi:1", "vllm", "vllm:0", "hf:two"):
        with pytest.raises(argparse.ArgumentTypeError, match="engine:replicas"):
            parse_settings(bad)


def test_the_load_sends_every_nth_request_to_the_base_model_and_the_rest_zipf_over_the_hot_adapters() -> None:
    args = argparse.Namespace(adapters=1000, hot=200, requests=1000, base_every=10)
    models = load_models(args)
    assert len(models) == 1000 and models.count("base") == 100
    assert all(model == "base" for model in models[9::10])
    adapters = Counter(model for model in models if model != "base")
    assert len(adapters) <= 200 and all(model.startswith("doc-") for model in adapters)
    assert adapters.most_common(1)[0][1] > 5 * (900 / 200)  # Zipf-like: the first adapter far above the mean
    assert zipf_choices(1000, 200, 50) == zipf_choices(1000, 200, 50)  # the same draw every run
    assert "base" not in load_models(argparse.Namespace(adapters=1000, hot=200, requests=50, base_every=0))
