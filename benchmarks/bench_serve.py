"""Serving load test: 1,000 registered adapters, requests spread Zipf-like over 200 of them, against a real
Serve deployment on loopback that reads adapters from an S3 API server on loopback (moto).

    .venv/bin/python -m benchmarks.bench_serve [--adapters 1000] [--requests 1000] [--concurrency 32] [--hot 200]
                                               [--engine hf|vllm] [--max-tokens 4] [--set key=value ...]

Steps: start `python -m moto.server`; write and publish N random rank-8 adapters (q_proj, v_proj) for the
embedded model, plus a few rank-16 all-linear ones (the shape LIFT trains) for the cold-load figure; start
Ray and the Serve app (`ServeConfig` + overrides); send `--unloaded` requests one at a time to the base model,
then to one adapter in memory (the adapter's own cost, no queue); send the same number of requests to the base
model alone (the reference), then to the adapters, at the same concurrency; finally ask each rank-16 adapter once
(cold, from the store). Latency is measured at the client, per request, end to end over HTTP. The adapter
source (memory, disk, store) comes from the `X-Lift-Adapter-Source` header and the load time from
`X-Lift-Adapter-Ms`.

Writes docs/results/serve.json, docs/results/serve.png and the `serve` table in docs/benchmarks.md.
Not a test: latency depends on the machine; compare the ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lift_ray.config import ALL_LINEAR, ServeConfig, load_config
from lift_ray.layout import publish_adapter
from lift_ray.models import ensure_embedded_model
from lift_ray.storage import Store
from testkit.bench import RESULTS_DIR, device_description, markdown_table, update_benchmarks_section, write_results
from testkit.bench_adapters import write_random_adapter
from testkit.local_s3 import AWS_VARIABLES_TO_CLEAR, free_port, s3_environment
from testkit.local_s3 import start_s3_server as start_local_s3

NAMESPACE = "bench"
QUESTIONS = ["Name three colours.", "What is the capital of France?", "Who wrote the report?", "When did it open?"]


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on 127.0.0.1, and boto3 pointed at it through the environment (Ray inherits it)."""
    process, endpoint = start_local_s3()
    for name in AWS_VARIABLES_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(s3_environment(endpoint, key="bench"))
    return process, endpoint


def publish_adapters(root: str, model_dir: Path, count: int, cold: int, work: Path) -> dict[str, float]:
    """Publish `count` rank-8 adapters doc-0000.. and `cold` rank-16 all-linear ones cold-0..; seconds taken."""
    store = Store.from_uri(root)
    started = time.perf_counter()

    def one(index: int) -> None:
        folder = write_random_adapter(model_dir, work / f"doc-{index:04d}", rank=8, seed=index, strength=2)
        publish_adapter(store, NAMESPACE, f"doc-{index:04d}", folder, {"system_prompt": "You are a helpful assistant."})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(count)))
    made = time.perf_counter() - started
    for index in range(cold):
        folder = write_random_adapter(
            model_dir, work / f"cold-{index}", rank=16, target_modules=ALL_LINEAR, seed=9000 + index
        )
        publish_adapter(store, NAMESPACE, f"cold-{index}", folder, {"system_prompt": "You are a helpful assistant."})
    return {"publish_s": round(made, 1)}


def zipf_choices(count: int, hot: int, requests: int, seed: int = 0, exponent: float = 1.1) -> list[str]:
    """`requests` document ids drawn from `hot` of the `count` adapters with Zipf-like popularity (rank^-s)."""
    rng = np.random.default_rng(seed)
    hot_ids = rng.choice(count, size=hot, replace=False)
    weights = 1.0 / np.arange(1, hot + 1) ** exponent
    picks = rng.choice(hot, size=requests, p=weights / weights.sum())
    return [f"doc-{hot_ids[i]:04d}" for i in picks]


def ask(url: str, model: str, question: str, max_tokens: int) -> dict[str, Any]:
    """One chat request; latency, status and the adapter headers."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            json.loads(response.read())
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
    except OSError as exc:
        return {"model": model, "status": 0, "error": str(exc), "ms": (time.perf_counter() - started) * 1000}
    return {
        "model": model,
        "status": status,
        "ms": (time.perf_counter() - started) * 1000,
        "source": headers.get("X-Lift-Adapter-Source"),
        "load_ms": float(headers.get("X-Lift-Adapter-Ms") or 0),
    }


def run_load(url: str, models: list[str], concurrency: int, max_tokens: int) -> tuple[list[dict[str, Any]], float]:
    """Send one request per entry of `models`, `concurrency` at a time; results and wall seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(
            pool.map(lambda i: ask(url, models[i], QUESTIONS[i % len(QUESTIONS)], max_tokens), range(len(models)))
        )
    return results, time.perf_counter() - started


def unloaded(url: str, model: str, count: int, max_tokens: int) -> list[float]:
    """Latencies (ms) of `count` requests for `model` sent one after another: the engine's own cost, no queue."""
    ask(url, model, QUESTIONS[0], max_tokens)  # attach the adapter (and warm the path) first
    results = [ask(url, model, QUESTIONS[i % len(QUESTIONS)], max_tokens) for i in range(count)]
    failed = [r for r in results if r["status"] != 200]
    if failed:
        raise RuntimeError(f"unloaded requests for {model} failed: {failed[:3]}")
    return [r["ms"] for r in results]


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["ms"] for r in results if r["status"] == 200]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
    }


def plot(base: list[dict[str, Any]], adapters: list[dict[str, Any]], cold_ms: list[float], path: Path) -> None:
    """Latency CDFs of base and adapter requests (by source), and the cold loads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series = {"base model": [r["ms"] for r in base if r["status"] == 200]}
    for source in ("memory", "disk", "store"):
        values = [r["ms"] for r in adapters if r["status"] == 200 and r.get("source") == source]
        if values:
            series[f"adapter from {source} ({len(values)})"] = values
    for label, values in series.items():
        ordered = np.sort(values)
        left.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=label)
    left.set_xscale("log")
    left.set_xlabel("request latency, ms (client, end to end)")
    left.set_ylabel("fraction of requests")
    left.legend(fontsize=8)
    left.set_title("requests at the same concurrency")
    loads = [r["load_ms"] for r in adapters if r.get("source") in ("disk", "store")]
    right.boxplot(
        [cold_ms, loads] if loads else [cold_ms],
        tick_labels=["r=16 from S3", "r=8 disk/S3 in load"][: 2 if loads else 1],
    )
    right.set_ylabel("adapter load, ms")
    right.set_title("bringing an adapter into memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--hot", type=int, default=200, help="adapters the requests are spread over")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=4, help="tokens generated per request")
    parser.add_argument("--cold", type=int, default=5, help="rank-16 adapters asked once each, cold from S3")
    parser.add_argument("--unloaded", type=int, default=30, help="sequential requests each to base and one adapter")
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="ServeConfig override")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/results or docs/benchmarks.md")
    args = parser.parse_args()

    import ray
    from ray import serve

    from lift_ray.client import wait_until_healthy
    from serve.app import build_app

    server, endpoint = start_s3_server()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        root = f"s3://{bucket}/lift"
        model_dir = ensure_embedded_model(load_config(ServeConfig).model.cache_dir)
        timings = publish_adapters(root, model_dir, args.adapters, args.cold, work / "made")
        print(f"published {args.adapters} adapters in {timings['publish_s']} s", flush=True)

        port = free_port()
        config = load_config(
            ServeConfig,
            None,
            [
                f"storage.root={root}",
                f"storage.namespace={NAMESPACE}",
                f"engine={args.engine}",
                f"adapter_cache_dir={work / 'cache'}",
                f"port={port}",
                "num_cpus_per_replica=1",
                f"max_ongoing_requests={args.concurrency}",
                "max_adapters_per_replica=16",
                "max_lora_rank=16",
                *args.overrides,
            ],
        )
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.perf_counter()
        serve.run(build_app(config), name="bench", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, timeout=900)
        startup_s = time.perf_counter() - started
        ask(url, "base", QUESTIONS[0], args.max_tokens)  # warm-up
        unloaded_base = unloaded(url, "base", args.unloaded, args.max_tokens)
        unloaded_warm = unloaded(url, "doc-0000", args.unloaded, args.max_tokens)
        print("unloaded p50 ms: base", percentile(unloaded_base, 50), "warm", percentile(unloaded_warm, 50), flush=True)

        base, base_s = run_load(url, ["base"] * args.requests, args.concurrency, args.max_tokens)
        print("base", summary(base), f"{base_s:.0f} s", flush=True)
        models = zipf_choices(args.adapters, args.hot, args.requests)
        adapters, adapters_s = run_load(url, models, args.concurrency, args.max_tokens)
        print("adapters", summary(adapters), f"{adapters_s:.0f} s", flush=True)
        cold = [ask(url, f"cold-{i}", QUESTIONS[0], args.max_tokens) for i in range(args.cold)]
        cold_ms = [r["load_ms"] for r in cold if r["status"] == 200 and r["source"] == "store"]
        print("cold r=16 load ms", cold_ms, flush=True)
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            server.terminate()

    by_source: dict[str, Any] = {}
    for source in ("memory", "disk", "store"):
        rows = [r for r in adapters if r["status"] == 200 and r.get("source") == source]
        by_source[source] = {
            "requests": len(rows),
            "p50_ms": percentile([r["ms"] for r in rows], 50),
            "p99_ms": percentile([r["ms"] for r in rows], 99),
            "load_p50_ms": percentile([r["load_ms"] for r in rows], 50),
        }
    overall, reference = summary(adapters), summary(base)
    figures = {
        "device": device_description(),
        "engine": args.engine,
        "adapters_registered": args.adapters,
        "hot_adapters": args.hot,
        "requests": overall["requests"],
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "errors": overall["errors"] + reference["errors"] + sum(r["status"] != 200 for r in cold),
        "p50_ms": overall["p50_ms"],
        "p99_ms": overall["p99_ms"],
        "base_p50_ms": reference["p50_ms"],
        "base_p99_ms": reference["p99_ms"],
        "warm_p50_ms": by_source["memory"]["p50_ms"],
        "warm_p99_ms": by_source["memory"]["p99_ms"],
        "warm_p50_vs_base": round(by_source["memory"]["p50_ms"] / reference["p50_ms"], 2)
        if by_source["memory"]["p50_ms"] and reference["p50_ms"]
        else None,
        "unloaded_requests": args.unloaded,
        "unloaded_base_p50_ms": percentile(unloaded_base, 50),
        "unloaded_warm_p50_ms": percentile(unloaded_warm, 50),
        "unloaded_warm_vs_base": round(percentile(unloaded_warm, 50) / percentile(unloaded_base, 50), 2),
        "cold_load_ms": round(statistics.median(cold_ms), 1) if cold_ms else None,
        "cold_load_all_ms": [round(v, 1) for v in cold_ms],
        "by_source": by_source,
        "requests_per_s": round(len(adapters) / adapters_s, 2),
        "base_requests_per_s": round(len(base) / base_s, 2),
        "serve_startup_s": round(startup_s, 1),
        "memory_adapters_per_replica": config.max_adapters_per_replica,
        **timings,
    }
    print(json.dumps(figures, indent=2))
    if args.no_docs:
        return
    write_results("serve", figures)
    plot(base, adapters, cold_ms, RESULTS_DIR / "serve.png")
    rows = [
        ["base model alone", reference["requests"], reference["errors"], reference["p50_ms"], reference["p99_ms"], "-"],
        ["adapters, all", overall["requests"], overall["errors"], overall["p50_ms"], overall["p99_ms"], "-"],
    ]
    for source, entry in by_source.items():
        rows.append(
            [f"adapters from {source}", entry["requests"], "-", entry["p50_ms"], entry["p99_ms"], entry["load_p50_ms"]]
        )
    rows.append([f"rank-16 adapter cold from S3 (x{len(cold_ms)})", len(cold), "-", "-", "-", figures["cold_load_ms"]])
    rows.append(["base, one at a time", args.unloaded, 0, figures["unloaded_base_p50_ms"], "-", "-"])
    rows.append(["warm adapter, one at a time", args.unloaded, 0, figures["unloaded_warm_p50_ms"], "-", "-"])
    markdown = "\n\n".join(
        [
            "## Serving: 1,000 adapters behind one endpoint (`benchmarks/bench_serve.py`)",
            f"{figures['device']}; engine `{args.engine}`; {args.adapters} rank-8 adapters registered on the S3 server "
            f"(moto, loopback), {args.requests} requests at concurrency {args.concurrency} spread Zipf-like over "
            f"{args.hot} of them, {args.max_tokens} tokens each, one replica with {config.max_adapters_per_replica} "
            "adapters in memory. Latency at the client, end to end over HTTP. Figures: `docs/results/serve.json`.",
            markdown_table(["requests", "n", "errors", "p50 ms", "p99 ms", "adapter load p50 ms"], rows),
            f"Warm adapter p50 / base p50, one request at a time (the adapter's own cost): "
            f"**{figures['unloaded_warm_vs_base']}**; under the load above (queueing included): "
            f"{figures['warm_p50_vs_base']}. Cold rank-16 adapter from S3 into memory: "
            f"**{figures['cold_load_ms']} ms** (median); errors: **{figures['errors']}**.",
            "![serving latency](results/serve.png)",
        ]
    )
    update_benchmarks_section("serve", markdown)


if __name__ == "__main__":
    main()
