"""Serving load test: 1,000 registered adapters of the shape LIFT writes (rank 16, every linear layer), requests
spread Zipf-like over 200 of them, against real Serve deployments on loopback that read adapters from an S3 API
server on loopback (moto); several engine / replica settings in one run, on the same adapters.

    .venv/bin/python -m benchmarks.bench_serve [--configs hf:1,vllm:1,vllm:2] [--adapters 1000] [--requests 1000]
                                               [--concurrency 32] [--hot 200] [--max-tokens 4] [--set key=value ...]

Steps: start `python -m moto.server`; write and publish N random rank-16 all-linear adapters (doc-0000..) and a
few more (cold-0..) for the cold-load figure. Then for each `engine:replicas` setting in `--configs`: start Ray
and the Serve app (`ServeConfig` + overrides, its own empty disk cache); send `--unloaded` requests one at a
time to the base model, then to one adapter in memory (the engine's own cost, no queue); attach `--distinct`
adapters (one request each, not measured) and send `--distinct-requests` requests to one of them, then the same
number spread evenly over all of them, at the same concurrency (throughput of many adapters in flight against
one: S-LoRA's measure); then the load: `--requests` requests at `--concurrency`, Zipf-like over `--hot`
adapters, every `--base-every`-th one to the base model, so that base and warm-adapter latency are measured
under the same load; finally ask each cold adapter once (from the store). Latency is measured at the client,
per request, end to end over HTTP. The adapter source (memory, disk, store) comes from the
`X-Lift-Adapter-Source` header and the load time from `X-Lift-Adapter-Ms`.

Writes docs/results/serve.json (one entry per setting under `runs`), docs/results/serve.png and the `serve`
table in docs/benchmarks.md. Not a test: latency depends on the machine; compare the ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from tqdm import tqdm

from lift_ray.config import ALL_LINEAR, ServeConfig, load_config
from lift_ray.engines.runtime import available_cpus
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


ADAPTER_RANK = 16  # the shape LIFT trains: rank 16 on every linear layer (ALL_LINEAR)


def publish_adapters(root: str, model_dir: Path, count: int, cold: int, work: Path) -> dict[str, Any]:
    """Publish `count` adapters doc-0000.. and `cold` more cold-0.., rank 16 on every linear layer (fp32, as
    LIFT writes them); seconds taken and the bytes of one adapter."""
    store = Store.from_uri(root)
    started = time.perf_counter()
    sizes: list[int] = []

    def one(name: str, seed: int) -> None:
        folder = write_random_adapter(
            model_dir, work / name, rank=ADAPTER_RANK, target_modules=ALL_LINEAR, seed=seed, strength=2
        )
        sizes.append(sum(f.stat().st_size for f in folder.iterdir()))
        publish_adapter(store, NAMESPACE, name, folder, {"system_prompt": "You are a helpful assistant."})
        shutil.rmtree(folder)  # the store holds it now; 1,000 local copies would be ~20 GB

    names = [(f"doc-{i:04d}", i) for i in range(count)] + [(f"cold-{i}", 9000 + i) for i in range(cold)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(tqdm(pool.map(lambda item: one(*item), names), total=len(names), desc="publishing adapters"))
    return {"publish_s": round(time.perf_counter() - started, 1), "adapter_bytes": max(sizes)}


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


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Per setting: latency CDFs of base and warm-adapter requests under the same load, and requests/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, run in enumerate(runs):
        label = f"{run['engine']} x{run['replicas']}"
        for kind, style in (("base_ms", "--"), ("warm_ms", "-")):
            ordered = np.sort(run["latencies"][kind])
            if len(ordered):
                fraction = np.arange(1, len(ordered) + 1) / len(ordered)
                left.plot(ordered, fraction, style, color=f"C{index}", label=f"{label} {kind[:-3]}")
    left.set_xscale("log")
    left.set_xlabel("request latency under the same load, ms (client, end to end)")
    left.set_ylabel("fraction of requests")
    left.legend(fontsize=7)
    names = [f"{run['engine']} x{run['replicas']}" for run in runs]
    positions = np.arange(len(runs))
    bars = (
        ("requests_per_s", "Zipf load over hot adapters"),
        ("single_requests_per_s", "one adapter"),
        ("distinct_requests_per_s", "distinct adapters"),
    )
    for offset, (key, label) in zip((-0.27, 0.0, 0.27), bars, strict=True):
        right.bar(positions + offset, [run[key] for run in runs], 0.27, label=label)
    right.set_xticks(positions, names)
    right.set_ylabel("requests/s")
    right.legend(fontsize=8)
    right.set_title("throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_settings(text: str) -> list[tuple[str, int]]:
    """`hf:1,vllm:2` -> [("hf", 1), ("vllm", 2)]."""
    settings = []
    for item in text.split(","):
        engine, _, replicas = item.strip().partition(":")
        if engine not in ("hf", "vllm") or not replicas.isdigit() or int(replicas) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected engine:replicas with engine hf or vllm")
        settings.append((engine, int(replicas)))
    return settings


def load_models(args: argparse.Namespace) -> list[str]:
    """The load's request models: Zipf-like over the hot adapters, every `base_every`-th one the base model."""
    models = zipf_choices(args.adapters, args.hot, args.requests)
    return [
        "base" if args.base_every and i % args.base_every == args.base_every - 1 else m for i, m in enumerate(models)
    ]


def run_setting(args: argparse.Namespace, engine: str, replicas: int, root: str, work: Path) -> dict[str, Any]:
    """One engine / replica setting: start Serve, measure, shut it down; its figures and raw latencies."""
    import ray
    from ray import serve

    from lift_ray.client import wait_until_healthy
    from serve.app import build_app

    port = free_port()
    # The cores shared out between the replicas: each its own threads, none bound to cores another one binds.
    # The ingress needs 0.1 CPU beside the replicas.
    cores = len(available_cpus())
    threads = max(1, cores // replicas)
    sharing = [
        f"torch_threads={threads}",
        f"num_cpus_per_replica={min(1.0, round((cores - 0.1) / replicas, 2))}",
        *(["vllm.cpu_threads_bind=nobind"] if replicas > 1 else []),
    ]
    config = load_config(
        ServeConfig,
        None,
        [
            f"storage.root={root}",
            f"storage.namespace={NAMESPACE}",
            f"engine={engine}",
            f"num_replicas={replicas}",
            f"adapter_cache_dir={work / f'cache-{engine}-{replicas}'}",
            f"port={port}",
            f"max_ongoing_requests={args.concurrency}",
            f"max_adapters_per_replica={args.memory_adapters}",
            f"max_lora_rank={ADAPTER_RANK}",
            *sharing,
            *args.overrides,
        ],
    )
    print(f"== {engine} x{replicas}", flush=True)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
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

        distinct = [f"doc-{i:04d}" for i in range(args.distinct)]
        attached, _ = run_load(url, distinct, args.concurrency, args.max_tokens)
        single, single_s = run_load(url, [distinct[0]] * args.distinct_requests, args.concurrency, args.max_tokens)
        spread = [distinct[i % len(distinct)] for i in range(args.distinct_requests)]
        many, many_s = run_load(url, spread, args.concurrency, args.max_tokens)
        print(f"one adapter {single_s:.0f} s, {args.distinct} adapters {many_s:.0f} s", flush=True)

        load, load_s = run_load(url, load_models(args), args.concurrency, args.max_tokens)
        print("load", summary(load), f"{load_s:.0f} s", flush=True)
        cold = [ask(url, f"cold-{i}", QUESTIONS[0], args.max_tokens) for i in range(args.cold)]
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    cold_ms = [r["load_ms"] for r in cold if r["status"] == 200 and r["source"] == "store"]
    print("cold load ms", cold_ms, flush=True)

    base_rows = [r for r in load if r["model"] == "base"]
    adapter_rows = [r for r in load if r["model"] != "base"]
    by_source: dict[str, Any] = {}
    for source in ("memory", "disk", "store"):
        rows = [r for r in adapter_rows if r["status"] == 200 and r.get("source") == source]
        by_source[source] = {
            "requests": len(rows),
            "p50_ms": percentile([r["ms"] for r in rows], 50),
            "p99_ms": percentile([r["ms"] for r in rows], 99),
            "load_p50_ms": percentile([r["load_ms"] for r in rows], 50),
        }
    warm_ms = [r["ms"] for r in adapter_rows if r["status"] == 200 and r.get("source") == "memory"]
    base_ms = [r["ms"] for r in base_rows if r["status"] == 200]
    warm_p50, base_p50 = percentile(warm_ms, 50), percentile(base_ms, 50)
    single_rps, many_rps = len(single) / single_s, len(many) / many_s
    everything = [*attached, *single, *many, *load, *cold]
    overall = summary(load)
    return {
        "engine": engine,
        "replicas": replicas,
        "threads_per_replica": config.torch_threads,
        "cpu_threads_bind": config.vllm.cpu_threads_bind,
        "errors": sum(r["status"] != 200 for r in everything),
        "requests_sent": len(everything) + 2 * args.unloaded + 1,
        "requests_per_s": round(len(load) / load_s, 2),
        "p50_ms": overall["p50_ms"],
        "p99_ms": overall["p99_ms"],
        "warm_p50_ms": warm_p50,
        "warm_requests": len(warm_ms),
        "base_p50_same_load_ms": base_p50,
        "base_requests": len(base_ms),
        "warm_vs_base_same_load": round(warm_p50 / base_p50, 2) if warm_p50 and base_p50 else None,
        "by_source": by_source,
        "single_requests_per_s": round(single_rps, 2),
        "distinct_requests_per_s": round(many_rps, 2),
        "distinct_100_vs_single": round(many_rps / single_rps, 2),
        "unloaded_base_p50_ms": percentile(unloaded_base, 50),
        "unloaded_warm_p50_ms": percentile(unloaded_warm, 50),
        "unloaded_warm_vs_base": round(percentile(unloaded_warm, 50) / percentile(unloaded_base, 50), 2),
        "cold_load_ms": round(statistics.median(cold_ms), 1) if cold_ms else None,
        "cold_load_all_ms": [round(v, 1) for v in cold_ms],
        "serve_startup_s": round(startup_s, 1),
        "latencies": {"base_ms": base_ms, "warm_ms": warm_ms},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        type=parse_settings,
        default=parse_settings("hf:1,vllm:1,vllm:2"),
        help="engine:replicas settings, comma-separated, run one after another on the same adapters",
    )
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--hot", type=int, default=200, help="adapters the load is spread over")
    parser.add_argument("--requests", type=int, default=1000, help="requests in the load")
    parser.add_argument("--base-every", type=int, default=10, help="every n-th request of the load to the base model")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=4, help="tokens generated per request")
    parser.add_argument("--distinct", type=int, default=100, help="adapters in flight for the many-adapter figure")
    parser.add_argument("--distinct-requests", type=int, default=200, help="requests for one / many adapters each")
    parser.add_argument("--memory-adapters", type=int, default=128, help="ServeConfig.max_adapters_per_replica")
    parser.add_argument("--cold", type=int, default=5, help="adapters asked once each per setting, cold from S3")
    parser.add_argument("--unloaded", type=int, default=20, help="sequential requests each to base and one adapter")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="ServeConfig override")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/results or docs/benchmarks.md")
    args = parser.parse_args()
    if args.distinct > min(args.hot, args.adapters) or args.distinct > args.memory_adapters:
        parser.error("--distinct must fit in --hot, --adapters and --memory-adapters")
    print(json.dumps({k: v for k, v in vars(args).items()}, indent=2, default=str), flush=True)

    server, endpoint = start_s3_server()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        root = f"s3://{bucket}/lift"
        model_dir = ensure_embedded_model(load_config(ServeConfig).model.cache_dir)
        timings = publish_adapters(root, model_dir, args.adapters, args.cold * len(args.configs), work / "made")
        print(f"published {args.adapters} adapters in {timings['publish_s']} s", flush=True)
        runs = []
        for index, (engine, replicas) in enumerate(args.configs):
            run = run_setting(args, engine, replicas, root, work)
            run["cold_ids"] = f"cold-{index * args.cold}..{(index + 1) * args.cold - 1}"
            runs.append(run)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)

    hf = next((run for run in runs if run["engine"] == "hf" and run["replicas"] == 1), None)
    vllm_best = max((run for run in runs if run["engine"] == "vllm"), key=lambda r: r["requests_per_s"], default=None)
    figures = {
        "device": device_description(),
        "adapters_registered": args.adapters,
        "adapter_shape": f"rank {ADAPTER_RANK}, every linear layer ({', '.join(ALL_LINEAR)}), fp32, random weights",
        "adapter_bytes": timings["adapter_bytes"],
        "hot_adapters": args.hot,
        "requests": args.requests,
        "base_every": args.base_every,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "distinct_adapters": args.distinct,
        "distinct_requests": args.distinct_requests,
        "memory_adapters_per_replica": args.memory_adapters,
        "overrides": args.overrides,
        "publish_s": timings["publish_s"],
        "errors": sum(run["errors"] for run in runs),
        "vllm_vs_hf_requests_per_s": round(vllm_best["requests_per_s"] / hf["requests_per_s"], 2)
        if hf and vllm_best
        else None,
        "runs": [{k: v for k, v in run.items() if k != "latencies"} for run in runs],
    }
    print(json.dumps(figures, indent=2))
    if args.no_docs:
        return
    write_results("serve", figures)
    plot(runs, RESULTS_DIR / "serve.png")
    rows = [
        [
            f"`{run['engine']}` x{run['replicas']} (random-weight adapters)",
            run["requests_per_s"],
            run["p50_ms"],
            run["warm_p50_ms"],
            run["base_p50_same_load_ms"],
            run["warm_vs_base_same_load"],
            run["distinct_100_vs_single"],
            run["unloaded_warm_vs_base"],
            run["cold_load_ms"],
            run["errors"],
        ]
        for run in runs
    ]
    markdown = "\n\n".join(
        [
            "## Serving: 1,000 adapters behind one endpoint (`benchmarks/bench_serve.py`)",
            f"{figures['device']}; {args.adapters} adapters registered on the S3 server (moto, loopback), "
            f"{figures['adapter_shape']}; per setting {args.requests} requests at concurrency {args.concurrency}, "
            f"Zipf-like over {args.hot} of the adapters with every {args.base_every}th to the base model, "
            f"{args.max_tokens} tokens each; {args.memory_adapters} adapters in memory per replica; the cores shared "
            "out between the replicas (`torch_threads`; vLLM's core binding off with more than one). Latency at the "
            'client, end to end over HTTP; "warm" = adapter already in memory; "distinct / single" = '
            f"requests/s with {args.distinct} adapters in flight over requests/s with one "
            f"({args.distinct_requests} requests each). Figures: `docs/results/serve.json`.",
            markdown_table(
                [
                    "engine x replicas",
                    "requests/s",
                    "p50 ms",
                    "warm p50 ms",
                    "base p50 ms, same load",
                    "warm / base",
                    "distinct / single",
                    "warm / base, one at a time",
                    "cold load from S3, ms",
                    "errors",
                ],
                rows,
            ),
            f"Best vLLM setting over hf x1, requests/s: **{figures['vllm_vs_hf_requests_per_s']}**; "
            f"errors: **{figures['errors']}**.",
            "![serving latency and throughput](results/serve.png)",
        ]
    )
    update_benchmarks_section("serve", markdown)


if __name__ == "__main__":
    main()
