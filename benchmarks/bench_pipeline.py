"""Pipeline benchmark: training while generating vs generate-then-train, TTFT vs length, bulk overheads.

    .venv/bin/python -m benchmarks.bench_pipeline [--sentences 8] [--ttft-lengths 4,16] [--bulk-copies 3]
                                                  [--config lift.yaml] [--set key=value ...]

On one local Ray instance, with the configured engine and settings (defaults: 2 epochs, m=2, small
invented-fact documents, so it stays around 9-13 minutes on 2 cores):

1. generate-then-train (`train.pipeline=sequential`) and pipelined (`streaming`) LIFT of the same
   document, each in a fresh namespace (no cache): wall times, their ratio, and how close the
   pipelined time comes to max(generation alone, training alone), both taken from the sequential run;
2. TTFT (document in → adapter published, i.e. servable) of pipelined LIFT at a few document lengths;
3. bulk: the documents of 1-2 again from their QA caches (`--bulk-copies` times each, as distinct
   documents, so the run is long enough to stand for a bulk job) in one TorchTrainer run, against a bare
   PyTorch data-parallel loop on the same work (`bare_data_parallel`: the same ranks and threads, a gloo
   process group set up by hand, the same `AdapterTrainer` and publishing, fresh processes). Fixed
   per-document overhead = time in a document's training that is not optimizer steps or waiting for data
   (fresh adapter, gathering rows, saving, publishing) over its step time; Ray Train overhead = (Ray run
   wall − bare run wall) / bare run wall, both from launch to the last adapter published and the processes
   gone; Ray Train start-up = from `fit()` to the workers entering the training function (worker
   processes, imports, process group), paid once per run. While both runs' steps run, the CPU of every
   process on the machine is sampled (`ProcessCpuSampler`): the share of a core each training process got,
   and the cores everything else used (Ray's own processes in the Ray run), which is where the steps' extra
   time in the Ray run comes from on a machine whose cores the workers fill;
4. a generator on other hardware (`--remote-epochs`, default 1): on this machine both stages share the
   same 2 cores, so overlapping them cannot do more work per second. A cluster gives the generator its
   own GPUs; the stand-in for that is an OpenAI-compatible server on loopback (`testkit.chat_stub`) that
   replays the pairs the real generator wrote for each sentence of the main document after a fixed
   latency and uses no CPU meanwhile. Latency per request batch is set so that generation alone costs
   about what training alone costs at `--remote-epochs` (1's training time with its optimizer steps
   scaled to that many epochs): the issue's "stages cost about the same". Generate-then-train and
   pipelined then run as in 1, with `generator.engine=openai` and `--remote-batch-size` sentences per
   batch (default 1: a server with continuous batching answers each request as it finishes).

Writes docs/results/pipeline.json, docs/results/pipeline_ttft.png and the `pipeline` table in
docs/benchmarks.md. Not a test: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.layout import qa_cache_path
from lift_ray.models import load_tokenizer, resolve_base_model
from lift_ray.pipeline import lift_documents
from lift_ray.storage import Store, read_json_lines
from lift_ray.train.loop import AdapterTrainer, DocumentJob
from testkit.bench import (
    RESULTS_DIR,
    ProcessCpuSampler,
    add_config_arguments,
    bench_config,
    cpu_shares,
    device_description,
    make_document,
    markdown_table,
    update_benchmarks_section,
    write_results,
)
from testkit.chat_stub import ChatStub, replay_recorded_pairs, serving


def _config(base: LiftConfig, namespace: str, pipeline: str) -> LiftConfig:
    return base.model_copy(
        update={
            "storage": base.storage.model_copy(update={"namespace": namespace}),
            "train": base.train.model_copy(update={"pipeline": pipeline}),
        }
    )


def lift_one(base: LiftConfig, document: Document, namespace: str, pipeline: str) -> dict[str, Any]:
    """LIFT one document in a fresh namespace; wall time and its report."""
    started = time.perf_counter()
    [report] = lift_documents([document], _config(base, namespace, pipeline))
    wall = time.perf_counter() - started
    if report.status != "published":
        raise RuntimeError(f"{document.doc_id} ({pipeline}): {report.error}")
    logging.info("%s %s: %.1f s %s", document.doc_id, pipeline, wall, report.timings)
    return {"wall_s": wall, "report": report.to_dict()}


def cached_jobs(base: LiftConfig, documents: dict[str, tuple[Document, str]], copies: int) -> list[DocumentJob]:
    """Jobs with the QA rows the earlier runs cached, each document `copies` times under distinct ids."""
    store = Store.from_uri(base.storage.root)
    jobs = []
    for document, namespace in documents.values():
        rows = read_json_lines(store, qa_cache_path(namespace, document, base))
        jobs.append(DocumentJob(document.doc_id, document.sha256, document.text, rows=rows))
    return [dataclasses.replace(job, doc_id=f"{job.doc_id}-{copy}") for copy in range(copies) for job in jobs]


def _bare_rank(
    rank: int, world_size: int, port: int, config_json: dict[str, Any], jobs: list[DocumentJob], out: str
) -> None:
    """One rank of the bare data-parallel loop: torch.distributed by hand, the workers' code without Ray."""
    import json

    import torch
    import torch.distributed as dist

    from lift_ray.train.loop import TorchCollective
    from lift_ray.train.trainer import StorePublisher

    config = LiftConfig.model_validate(config_json)
    torch.set_num_threads(config.train.threads_per_worker)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
    trainer = AdapterTrainer(model_dir, config, TorchCollective())
    publisher = StorePublisher(config) if rank == 0 else None
    results = [trainer.train_document(job, on_adapter=publisher.adapter if publisher else None) for job in jobs]
    if rank == 0:
        Path(out).write_text(json.dumps([{"status": r.status, **r.timings} for r in results]))
    dist.destroy_process_group()


def steps_window(timings: list[dict[str, Any]]) -> tuple[float, float]:
    """From the first document's training start to the last one's end (epoch seconds): where the steps ran."""
    return min(t["started_at"] for t in timings), max(t["done_at"] for t in timings)


def is_ray_train_worker(command: str) -> bool:
    """A Ray Train worker process, by the title Ray gives it."""
    return command.startswith("ray::RayTrainWorker")


def is_bare_worker(command: str) -> bool:
    """A process of `bare_data_parallel` (started by multiprocessing's spawn)."""
    return "spawn_main" in command


def bare_data_parallel(base: LiftConfig, jobs: list[DocumentJob]) -> dict[str, Any]:
    """The Ray run's work without Ray: the same ranks, threads, gloo process group, training and publishing.

    `train.num_workers` processes started fresh (spawn), as Ray starts its workers, so the wall time includes
    interpreter start-up, imports and model loading as the Ray run's does.
    """
    import json
    import socket

    import torch.multiprocessing as mp

    config = _config(base, "bulk-bare", "sequential")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    world = config.train.num_workers
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/results.json"
        started = time.perf_counter()
        mp.start_processes(
            _bare_rank,
            args=(world, port, config.model_dump(mode="json"), jobs, out),
            nprocs=world,
            start_method="spawn",
        )
        wall = time.perf_counter() - started
        results = json.loads(Path(out).read_text())
    if [r["status"] for r in results] != ["published"] * len(jobs):
        raise RuntimeError(f"bare data-parallel run failed: {results}")
    return {"wall_s": wall, "compute_s": sum(r["compute_s"] for r in results), "steps_window": steps_window(results)}


def bulk_on_ray(base: LiftConfig, jobs: list[DocumentJob]) -> dict[str, Any]:
    """The same documents in one TorchTrainer run, published to a fresh namespace."""
    from lift_ray.train.trainer import train_documents_on_ray

    config = _config(base, "bulk", "sequential")
    started, started_at = time.perf_counter(), time.time()
    results, error = train_documents_on_ray(config, jobs)
    wall = time.perf_counter() - started
    if error or len(results) != len(jobs):
        raise RuntimeError(f"bulk run failed: {error}")
    per_doc = []
    for job in jobs:
        timings = results[job.doc_id]["timings"]
        fixed = timings["overhead_s"]  # includes publish_s (rank 0)
        per_doc.append({"doc_id": job.doc_id, "compute_s": timings["compute_s"], "fixed_s": fixed})
    first = results[jobs[0].doc_id]
    return {
        "wall_s": wall,
        "steps_window": steps_window([results[job.doc_id]["timings"] for job in jobs]),
        "per_doc": per_doc,
        "load_s": first["load_s"],
        "startup_s": first["worker_entered_at"] - started_at,
    }


def remote_generator_runs(
    base: LiftConfig, document: Document, rows: list[dict[str, Any]], epochs: int, latency_s: float
) -> dict[str, Any]:
    """Generate-then-train and pipelined LIFT of `document` with the generator replayed from another 'machine'."""
    stub = ChatStub(delay_s=latency_s, reply=replay_recorded_pairs(rows))
    with serving() as start:
        generator = base.generator.model_copy(
            update={
                "engine": "openai",
                "openai": base.generator.openai.model_copy(update={"base_url": start(stub)}),
                "answer_aware": "off",
                "verify_answers": False,
                "max_retries": 0,
            }
        )
        config = base.model_copy(
            update={"generator": generator, "train": base.train.model_copy(update={"epochs": epochs})}
        )
        sequential = lift_one(config, document, "remote-sequential", "sequential")
        pipelined = lift_one(config, document, "remote-pipelined", "streaming")
    return {
        "epochs": epochs,
        "latency_s": round(latency_s, 2),
        "requests": len(stub.bodies),
        **compare_runs(sequential, pipelined),
    }


def stage_times(sequential: dict[str, Any]) -> tuple[float, float]:
    """Generation alone and training alone, both from a generate-then-train run."""
    generation_only = sequential["report"]["timings"]["generate_s"]
    return generation_only, sequential["wall_s"] - generation_only


def compare_runs(sequential: dict[str, Any], pipelined: dict[str, Any]) -> dict[str, float]:
    """Both wall times, their ratio, the stages alone, the pipelined time over the slower stage, both TTFTs.

    Wall times run from the LIFT call to its return (after Ray Train's shut-down); TTFT to the adapter's
    publication (servable).
    """
    generation_only, training_only = stage_times(sequential)
    return {
        "sequential_s": round(sequential["wall_s"], 1),
        "pipelined_s": round(pipelined["wall_s"], 1),
        "speedup": round(sequential["wall_s"] / pipelined["wall_s"], 2),
        "generation_only_s": round(generation_only, 1),
        "training_only_s": round(training_only, 1),
        "pipelined_over_ideal": round(pipelined["wall_s"] / max(generation_only, training_only), 2),
        "sequential_ttft_s": sequential["report"]["timings"]["ttft_s"],
        "pipelined_ttft_s": pipelined["report"]["timings"]["ttft_s"],
    }


def plot_ttft(points: list[dict[str, Any]], path: Path) -> None:
    """TTFT vs document length (tokens), pipelined and sequential where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in (("pipelined", "o-"), ("sequential", "s--")):
        chosen = sorted((p["tokens"], p["ttft_s"]) for p in points if p["mode"] == mode)
        if chosen:
            ax.plot([c[0] for c in chosen], [c[1] for c in chosen], marker, label=mode)
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("TTFT: document in → adapter servable (s)")
    ax.set_title("LIFT time to first token")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sentences", type=int, default=8, help="length of the main document")
    parser.add_argument("--ttft-lengths", default="4,16", help="more document lengths (sentences) for the TTFT plot")
    parser.add_argument("--bulk-copies", type=int, default=6, help="each document this many times in the bulk run")
    parser.add_argument("--remote-epochs", type=int, default=1, help="epochs of the remote-generator runs (0: skip)")
    parser.add_argument("--remote-batch-size", type=int, default=1, help="sentences per remote-generator batch")
    add_config_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import ray

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        base = bench_config(args, tmp)
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False)
        tokenizer = load_tokenizer(resolve_base_model(base.model.base_model, Path(base.model.cache_dir)))
        main_doc = make_document(f"doc{args.sentences}", args.sentences)
        sequential = lift_one(base, main_doc, "sequential", "sequential")
        pipelined = lift_one(base, main_doc, "pipelined", "streaming")
        training_only = stage_times(sequential)[1]
        ttft = [
            {"mode": "sequential", "ttft_s": sequential["report"]["timings"]["ttft_s"]},
            {"mode": "pipelined", "ttft_s": pipelined["report"]["timings"]["ttft_s"]},
        ]
        for point in ttft:
            point.update(sentences=args.sentences, tokens=len(tokenizer(main_doc.text)["input_ids"]))
        documents = {main_doc.doc_id: (main_doc, "pipelined")}
        for length in [int(x) for x in args.ttft_lengths.split(",") if x.strip()]:
            document = make_document(f"doc{length}", length)
            run = lift_one(base, document, f"ttft{length}", "streaming")
            tokens = len(tokenizer(document.text)["input_ids"])
            ttft.append(
                {
                    "mode": "pipelined",
                    "sentences": length,
                    "tokens": tokens,
                    "ttft_s": run["report"]["timings"]["ttft_s"],
                }
            )
            documents[document.doc_id] = (document, f"ttft{length}")

        remote = None
        if args.remote_epochs:
            [main_job] = cached_jobs(base, {main_doc.doc_id: documents[main_doc.doc_id]}, 1)
            batches = math.ceil(len(main_job.rows or []) / args.remote_batch_size)
            # training alone at --remote-epochs: the measured run's start-up and publishing, its steps scaled
            steps_s = sequential["report"]["timings"]["compute_s"]
            remote_training = training_only - steps_s * (1 - args.remote_epochs / base.train.epochs)
            latency = remote_training / batches
            remote_base = base.model_copy(
                update={"generator": base.generator.model_copy(update={"batch_size": args.remote_batch_size})}
            )
            remote = remote_generator_runs(remote_base, main_doc, main_job.rows or [], args.remote_epochs, latency)
        jobs = cached_jobs(base, documents, args.bulk_copies)
        with ProcessCpuSampler() as sampler:
            ray_bulk = bulk_on_ray(base, jobs)
        ray_cpu = cpu_shares(sampler, *ray_bulk["steps_window"], is_ray_train_worker)
        ray.shutdown()
        with ProcessCpuSampler() as sampler:
            bare = bare_data_parallel(base, jobs)
        bare_cpu = cpu_shares(sampler, *bare["steps_window"], is_bare_worker)

    fixed = sum(d["fixed_s"] for d in ray_bulk["per_doc"])
    compute = sum(d["compute_s"] for d in ray_bulk["per_doc"])
    figures = {
        "device": device_description(),
        "engine": base.generator.engine,
        "settings": {
            "epochs": base.train.epochs,
            "qa_per_sentence": base.generator.qa_per_sentence,
            "lora_rank": base.lora.rank,
            "num_workers": base.train.num_workers,
            "main_document_sentences": args.sentences,
        },
        **compare_runs(sequential, pipelined),
        "ttft": ttft,
        "bulk_documents": len(jobs),
        "bulk_ray_wall_s": round(ray_bulk["wall_s"], 1),
        "bulk_bare_wall_s": round(bare["wall_s"], 1),
        "bulk_model_load_s": round(ray_bulk["load_s"], 1),
        "ray_train_startup_s": round(ray_bulk["startup_s"], 1),
        "bulk_per_doc": ray_bulk["per_doc"],
        "per_doc_overhead_fraction": round(fixed / compute, 3),
        "ray_train_overhead_fraction": round((ray_bulk["wall_s"] - bare["wall_s"]) / bare["wall_s"], 3),
        "ray_train_step_overhead_fraction": round((compute - bare["compute_s"]) / bare["compute_s"], 3),
        "bulk_ray_worker_cpu_share": ray_cpu["worker_cpu_share"],
        "bulk_bare_worker_cpu_share": bare_cpu["worker_cpu_share"],
        "bulk_ray_other_cpu_cores": ray_cpu["other_cpu_cores"],
        "bulk_bare_other_cpu_cores": bare_cpu["other_cpu_cores"],
    }
    if remote:
        figures["remote_generator"] = remote
    write_results("pipeline", figures)
    plot_ttft(ttft, RESULTS_DIR / "pipeline_ttft.png")
    rows = [
        ["generate-then-train (s)", figures["sequential_s"]],
        ["pipelined (s)", figures["pipelined_s"]],
        ["speedup", figures["speedup"]],
        ["generation alone / training alone (s)", f"{figures['generation_only_s']} / {figures['training_only_s']}"],
        ["pipelined / max(generation, training)", figures["pipelined_over_ideal"]],
        [
            f"bulk: {len(jobs)} documents, one Ray Train run / bare torch.distributed run (s)",
            f"{figures['bulk_ray_wall_s']} / {figures['bulk_bare_wall_s']}",
        ],
        ["Ray Train start-up, once per run (s)", figures["ray_train_startup_s"]],
        ["fixed per-document overhead / step time", figures["per_doc_overhead_fraction"]],
        ["Ray Train overhead vs bare torch.distributed (wall, incl. start-up)", figures["ray_train_overhead_fraction"]],
        ["Ray Train overhead vs bare torch.distributed (steps only)", figures["ray_train_step_overhead_fraction"]],
        [
            "bulk steps: share of a core each worker got, Ray / bare",
            f"{figures['bulk_ray_worker_cpu_share']} / {figures['bulk_bare_worker_cpu_share']}",
        ],
        [
            "bulk steps: cores everything else on the machine used, Ray / bare",
            f"{figures['bulk_ray_other_cpu_cores']} / {figures['bulk_bare_other_cpu_cores']}",
        ],
    ]
    remote_note = ""
    if remote:
        # No generator model runs in these rows: ChatStub replays the pairs recorded above after a sleep.
        simulated = "simulated remote generator (ChatStub replay)"
        rows += [
            [
                f"simulated remote generator (ChatStub replays recorded pairs after a {remote['latency_s']} s sleep "
                f"per request; {remote['epochs']} epoch): generate-then-train / pipelined (s)",
                f"{remote['sequential_s']} / {remote['pipelined_s']}",
            ],
            [f"{simulated}: speedup", remote["speedup"]],
            [
                f"{simulated}: TTFT generate-then-train / pipelined (s)",
                f"{remote['sequential_ttft_s']} / {remote['pipelined_ttft_s']}",
            ],
            [
                f"{simulated}: generation alone / training alone (s)",
                f"{remote['generation_only_s']} / {remote['training_only_s']}",
            ],
            [f"{simulated}: pipelined / max(generation, training)", remote["pipelined_over_ideal"]],
        ]
        remote_note = (
            'The "simulated remote generator" rows ran no generator model: `generator.engine=openai` against '
            "`ChatStub`, a chat server on loopback that answers each sentence's request with the pairs the "
            f"{figures['engine']} run above recorded for it, after a fixed sleep that uses no CPU here (a stand-in "
            "for a generator on other hardware). They measure how training overlaps generation, not a real "
            "remote server.\n\n"
        )
    update_benchmarks_section(
        "pipeline",
        f"## Pipeline: training while generating (`benchmarks/bench_pipeline.py`)\n\n{figures['device']}; engine "
        f"{figures['engine']}; {figures['settings']}.\n\n{markdown_table(['measure', 'value'], rows)}\n\n"
        f"{remote_note}What limits these figures on this machine, and what the bulk figures mean for a bulk job: "
        "[training.md](training.md#what-the-pipelined-time-can-be-and-what-this-machine-shows).\n\n"
        "![TTFT vs document length](results/pipeline_ttft.png)\n",
    )
    print(f"wrote {RESULTS_DIR / 'pipeline.json'}")


if __name__ == "__main__":
    main()
