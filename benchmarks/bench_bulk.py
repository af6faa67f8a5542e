"""Bulk LIFT at scale through the real job path: what orchestration costs per document, in time and memory.

    .venv/bin/python -m benchmarks.bench_bulk [--sizes 100,1000] [--large] [--no-interrupt] [--label after]
                                              [--config lift.yaml] [--set key=value ...] [--no-docs]

For each size N: N one-sentence documents in a bucket of the S3 server on loopback (`testkit.local_s3`), one
`ray job submit` (`JobSubmissionClient`) of `jobs/lift.py` to a local Ray cluster of its own (`ray start --head`
with its own ports and temp dir: `testkit.ray_cluster.LocalCluster`), output to the same bucket. The base model
is a tiny random-weight Llama built from a config (2 layers, 64 wide, SmolLM2's tokenizer; nothing downloaded)
and the generator is `generator.engine=openai` against `ChatStub` (`testkit.chat_stub`), which answers every
prompt at once with one valid pair: "ChatStub generator, tiny random model" in every row. So what is measured
is the orchestration: reading, planning, the feed, Ray Train's per-document loop and publishing.

Measured per size: wall time (submit → job SUCCEEDED), documents per hour, per-document overhead (wall over
documents minus each document's optimizer-step time, from the job's report), the peak resident memory of the
job's driver process and of the `RowFeed` actor (`VmHWM` from /proc, `testkit.bench.ProcessMemorySampler`),
time to the first adapter (submit → the earliest manifest's `published_at`), reading and planning time.

Then, at the largest size (unless `--no-interrupt`): a fresh namespace in a versioned bucket, the job stopped
(`stop_job`) once half the documents are published, the same run submitted again; `redone` counts documents
published before the stop that the resubmission trained again, `duplicated` documents whose manifest was
written more than once (object versions).

Sizes above 1,000 need `--large` (10,000 one-sentence documents take hours on 2 cores). `--label` names the
entry in docs/results/bulk.json (`before`/`after` a change: both are kept); the table in docs/benchmarks.md
shows every label. Writes docs/results/bulk.json, docs/results/bulk.png and the `bulk` section.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from lift_ray.config import PLAIN_QA_TRAINING, LiftConfig, load_config
from lift_ray.results import REPO_ROOT
from testkit.bench import (
    RESULTS_DIR,
    ProcessMemorySampler,
    add_config_arguments,
    device_description,
    make_document,
    markdown_table,
    update_benchmarks_section,
    write_results,
)
from testkit.chat_stub import ChatStub, serving
from testkit.local_s3 import AWS_VARIABLES_TO_CLEAR, s3_environment, start_s3_server
from testkit.ray_cluster import NODE_MARKER, LocalCluster, cluster_environment
from testkit.tiny_model import write_tiny_llama

log = logging.getLogger("bench_bulk")

SETUP = "ChatStub generator, tiny random model"
LARGE = 1000  # sizes above this need --large
JOB_TIMEOUT_S = 4 * 3600
# The job's LiftConfig before --config/--set: one pair per sentence, one epoch of a rank-4 adapter, no quality
# gate; the generator and the trainers side by side on a 2-CPU node (0.25 + 2 x 0.4 + 0.25 for the split).
BULK_DEFAULTS = [
    *PLAIN_QA_TRAINING,  # plain pairs, as recorded: the orchestration is measured, not the recipe
    "generator.engine=openai",
    "generator.openai.model=chat-stub",
    "generator.openai.max_concurrency=16",
    "generator.qa_per_sentence=1",
    "generator.max_new_tokens=64",
    "generator.max_retries=0",
    "generator.require_grounded=false",
    'generator.answer_aware="off"',
    "generator.verify_answers=false",
    "generator.batch_size=16",
    "generator.num_cpus=0.25",
    "train.epochs=1",
    "train.batch_size=2",
    "train.max_seq_len=128",
    "train.holdout_share=0",
    "train.num_workers=2",
    "train.cpus_per_worker=0.4",
    "train.threads_per_worker=1",
    "lora.rank=4",
    "lora.alpha=8",
]


def stub_reply(prompt: str) -> str:
    """One valid pair about the prompt's last sentence (its first words as the answer)."""
    sentence = prompt.split("Last sentence:\n", 1)[-1].split("\n\nWrite ", 1)[0].strip()
    answer = " ".join(sentence.split()[:6]) or "nothing"
    return json.dumps({"qa_list": [{"question": "What does the last sentence say first?", "answer": answer}]})


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer, 64-wide Llama with random weights (seed 0) and SmolLM2's tokenizer, saved as a model folder."""
    from lift_ray.config import DEFAULT_CACHE_DIR
    from lift_ray.models import ensure_embedded_model

    return write_tiny_llama(folder, ensure_embedded_model(DEFAULT_CACHE_DIR))


class Bucket:
    """One size's documents and outputs in a bucket of the S3 server on loopback."""

    def __init__(self, documents: int, versioned: bool = False) -> None:
        import boto3

        self.s3 = boto3.client("s3")
        self.name = f"bulk-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=self.name)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=self.name, VersioningConfiguration={"Status": "Enabled"})
        self.doc_ids = [f"doc{i:05d}" for i in range(documents)]

        def put(index: int) -> None:
            text = make_document(self.doc_ids[index], 1, first=index).text
            self.s3.put_object(Bucket=self.name, Key=f"docs/{self.doc_ids[index]}.txt", Body=text.encode())

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(put, range(documents)))

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (paginated listing)."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def manifest_keys(self, namespace: str) -> list[str]:
        """Keys of the namespace's published manifests."""
        return [k for k in self.keys(f"lift/{namespace}/") if k.endswith("/manifest.json") and k.count("/") == 3]

    def published(self, namespace: str) -> dict[str, str]:
        """doc id -> published_at of every published document."""

        def read(key: str) -> tuple[str, str]:
            body = json.loads(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())
            return key.split("/")[2], body["published_at"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            return dict(pool.map(read, self.manifest_keys(namespace)))

    def manifest_writes(self, namespace: str) -> dict[str, int]:
        """doc id -> how many times its manifest was written (object versions; the bucket must be versioned)."""
        pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.name, Prefix=f"lift/{namespace}/")
        writes: dict[str, int] = {}
        for page in pages:
            for version in page.get("Versions", []):
                parts = version["Key"].split("/")
                if len(parts) == 4 and parts[3] == "manifest.json":
                    writes[parts[2]] = writes.get(parts[2], 0) + 1
        return writes

    def read_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def report(self, run_id: str) -> list[dict[str, Any]]:
        body = self.s3.get_object(Bucket=self.name, Key=f"lift/_reports/{run_id}/report.jsonl")["Body"].read()
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


class Runner:
    """Submits `jobs/lift.py` runs to the cluster and watches them."""

    def __init__(self, cluster: LocalCluster, s3_endpoint: str, config: LiftConfig, work: Path) -> None:
        from ray.job_submission import JobSubmissionClient

        self.cluster, self.s3_endpoint, self.config, self.work = cluster, s3_endpoint, config, work
        self.client = JobSubmissionClient(cluster.dashboard_url)
        self._ours: dict[int, bool] = {}

    def in_cluster(self, pid: int) -> bool:
        """Whether a process belongs to this benchmark's cluster (by the node marker in its environment)."""
        if pid not in self._ours:
            import psutil

            try:
                marker = psutil.Process(pid).environ().get(NODE_MARKER, "")
            except (psutil.Error, OSError):
                marker = ""
            self._ours[pid] = marker.startswith(f"{self.cluster.cluster_id}/")
        return self._ours[pid]

    def submit(self, bucket: Bucket, namespace: str, run_id: str) -> str:
        config = self.config.model_copy(
            update={"storage": self.config.storage.model_copy(update={"namespace": namespace})}
        )
        path = self.work / f"{run_id}.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"storage": {"root"}})))
        env = {
            "RAY_ADDRESS": f"127.0.0.1:{self.cluster.gcs_port}",
            **s3_environment(self.s3_endpoint),
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        }
        return self.client.submit_job(
            entrypoint=f"python jobs/lift.py --input s3://{bucket.name}/docs/ --output s3://{bucket.name}/lift "
            f"--config {path} --run-id {run_id}",
            submission_id=f"{run_id}-{uuid.uuid4().hex[:6]}",
            runtime_env={"working_dir": str(REPO_ROOT), "env_vars": env},
        )

    def wait(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.get_job_status(job_id)
            if status.is_terminal():
                return str(status.value)
            time.sleep(1.0)
        self.client.stop_job(job_id)
        raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")

    def memory_sampler(self, run_id: str) -> ProcessMemorySampler:
        return ProcessMemorySampler(
            {
                "driver": lambda pid, command: "jobs/lift.py" in command and f"--run-id {run_id}" in command,
                "feed": lambda pid, command: command.startswith("ray::RowFeed") and self.in_cluster(pid),
            }
        )


def _log_seconds(logs: str, pattern: str) -> float | None:
    match = re.search(pattern, logs)
    return float(match.group(1)) if match else None


def _log_int(logs: str, pattern: str) -> int | None:
    match = re.search(pattern, logs)
    return int(match.group(1)) if match else None


def measure(runner: Runner, documents: int) -> dict[str, Any]:
    """One run of `documents` documents from scratch: the figures of one table row."""
    bucket = Bucket(documents)
    run_id = f"bulk{documents}"
    with runner.memory_sampler(run_id) as memory:
        submitted_at, started = time.time(), time.perf_counter()
        job_id = runner.submit(bucket, f"n{documents}", run_id)
        status = runner.wait(job_id)
        wall = time.perf_counter() - started
    logs = runner.client.get_job_logs(job_id)
    if status != "SUCCEEDED":
        raise RuntimeError(f"{run_id}: job {status}:\n{logs[-6000:]}")
    report = bucket.report(run_id)
    summary = bucket.read_json(f"lift/_reports/{run_id}/summary.json")
    published = bucket.published(f"n{documents}")
    if summary["counts"]["published"] != documents or len(published) != documents:
        raise RuntimeError(f"{run_id}: {summary['counts']}, {len(published)} manifests")
    compute = sum(row["timings"].get("compute_s", 0.0) for row in report)
    first = min(datetime.fromisoformat(at).timestamp() for at in published.values())
    figures = {
        "setup": SETUP,
        "documents": documents,
        "wall_s": round(wall, 1),
        "job_total_s": summary["total_s"],
        "documents_per_hour": round(documents / wall * 3600),
        "compute_s": round(compute, 1),
        "overhead_s_per_document": round((wall - compute) / documents, 3),
        "driver_peak_mb": memory.peak_mb("driver"),
        "feed_peak_mb": memory.peak_mb("feed"),
        "first_adapter_s": round(first - submitted_at, 1),
        "read_s": summary.get("read_s"),
        "plan_s": _log_seconds(logs, r"planned \d+ documents in ([0-9.]+) s"),
        "feed_peak_rows": _log_int(logs, r"row feed: at most (\d+) rows held"),
    }
    figures["per_doc_overhead_s"] = figures["overhead_s_per_document"]  # the name for it
    log.info("%s", figures)
    return figures


def interrupted(runner: Runner, documents: int) -> dict[str, Any]:
    """Stop a run once half its documents are published, resubmit it; what was redone and duplicated."""
    bucket = Bucket(documents, versioned=True)
    namespace = f"stop{documents}"
    job_id = runner.submit(bucket, namespace, f"stop{documents}")
    while len(bucket.manifest_keys(namespace)) < documents // 2:
        if runner.client.get_job_status(job_id).is_terminal():
            logs = runner.client.get_job_logs(job_id)[-6000:]
            raise RuntimeError(f"the job ended before half was published:\n{logs}")
        time.sleep(2.0)
    runner.client.stop_job(job_id)
    if (status := runner.wait(job_id)) != "STOPPED":
        raise RuntimeError(f"the stopped job ended {status}")
    before = bucket.published(namespace)
    started = time.perf_counter()
    again = runner.submit(bucket, namespace, f"resume{documents}")
    if (status := runner.wait(again)) != "SUCCEEDED":
        raise RuntimeError(f"the resubmission ended {status}:\n{runner.client.get_job_logs(again)[-6000:]}")
    resume_wall = time.perf_counter() - started
    report = {row["doc_id"]: row for row in bucket.report(f"resume{documents}")}
    after = bucket.published(namespace)
    writes = bucket.manifest_writes(namespace)
    redone = sum(1 for d, at in before.items() if after.get(d) != at or report[d]["status"] != "skipped")
    figures = {
        "setup": SETUP,
        "documents": documents,
        "published_at_stop": len(before),
        "resume_wall_s": round(resume_wall, 1),
        "missing": sum(1 for d in bucket.doc_ids if d not in after),
        "redone": redone,
        "duplicated": sum(1 for count in writes.values() if count > 1),
    }
    figures["resume_redone"], figures["resume_duplicated"] = figures["redone"], figures["duplicated"]
    log.info("%s", figures)
    return figures


def plot(entries: dict[str, Any], path: Path) -> None:
    """Per-document overhead and peak memory against documents, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, entry in entries.items():
        runs = sorted(entry["runs"], key=lambda run: run["documents"])
        sizes = [run["documents"] for run in runs]
        left.plot(sizes, [run["overhead_s_per_document"] for run in runs], "o-", label=label)
        right.plot(sizes, [run["driver_peak_mb"] for run in runs], "o-", label=f"{label}: driver")
        right.plot(sizes, [run["feed_peak_mb"] or 0 for run in runs], "s--", label=f"{label}: RowFeed")
    left.set(xscale="log", xlabel="documents", ylabel="s per document", title="overhead per document")
    right.set(xscale="log", xlabel="documents", ylabel="peak RSS (MiB)", title="peak memory")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"bulk LIFT through ray job submit ({SETUP})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(entries: dict[str, Any], device: str) -> None:
    """The `bulk` section of docs/benchmarks.md: one row per label and size, then the interruption checks."""
    rows = [
        [
            label,
            run["setup"],
            run["documents"],
            run["wall_s"],
            run["documents_per_hour"],
            run["compute_s"],
            run["overhead_s_per_document"],
            run["read_s"],
            run["plan_s"],
            run["driver_peak_mb"],
            run["feed_peak_mb"],
            run.get("feed_peak_rows") or "not logged",
            run["first_adapter_s"],
        ]
        for label, entry in entries.items()
        for run in entry["runs"]
    ]
    header = [
        "label",
        "setup",
        "documents",
        "wall (s)",
        "documents/hour",
        "steps (s)",
        "overhead/document (s)",
        "read (s)",
        "plan (s)",
        "driver peak (MiB)",
        "RowFeed peak (MiB)",
        "RowFeed peak rows",
        "first adapter (s)",
    ]
    checks = [
        [
            f"{label}, stopped at half",
            c["setup"],
            c["documents"],
            c["published_at_stop"],
            c["resume_wall_s"],
            c["redone"],
            c["duplicated"],
        ]
        for label, entry in entries.items()
        if (c := entry.get("interruption"))
    ]
    check_table = markdown_table(
        ["label", "setup", "documents", "published at the stop", "resubmission wall (s)", "redone", "duplicated"],
        checks,
    )
    notes = "; ".join(f"{label}: {entry['note']}" for label, entry in entries.items() if entry.get("note"))
    update_benchmarks_section(
        "bulk",
        f"## Bulk LIFT at scale (`benchmarks/bench_bulk.py`)\n\n{device}. Every row: `ray job submit` of "
        "`jobs/lift.py` on a local Ray cluster (2 CPUs), one-sentence documents read from and adapters published "
        f"to the S3 server on loopback, {SETUP} (no generator model runs: what is measured is orchestration). "
        "Overhead per document = (wall − optimizer-step time) / documents. 10,000 documents: "
        f"{'run' if any(r[2] > LARGE for r in rows) else 'not run'}.\n\n"
        f"{markdown_table(header, rows)}\n\nStopped once half was published, then submitted again:\n\n"
        f"{check_table}\n\n{('Notes: ' + notes + chr(10) + chr(10)) if notes else ''}"
        "![bulk overhead and memory](results/bulk.png)\n",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100,1000", help="documents per run, comma-separated")
    parser.add_argument("--large", action="store_true", help="allow sizes above 1,000 (10,000: hours on 2 cores)")
    parser.add_argument("--no-interrupt", action="store_true", help="skip the stop-and-resubmit check")
    parser.add_argument("--label", default="current", help="the entry's name in bulk.json (before, after, ...)")
    parser.add_argument("--note", default="", help="a sentence stored with the entry (what this code is)")
    parser.add_argument("--no-docs", action="store_true", help="print the figures, write nothing")
    add_config_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sizes = sorted(int(x) for x in args.sizes.split(",") if x.strip())
    if max(sizes) > LARGE and not args.large:
        parser.error(f"sizes above {LARGE:,} need --large")

    import os

    work = Path(tempfile.mkdtemp(prefix="bench-bulk-", dir="/tmp"))
    s3_process, endpoint = start_s3_server()
    for name in AWS_VARIABLES_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(s3_environment(endpoint))
    cluster = LocalCluster(work / "ray", cluster_environment())
    (work / "ray").mkdir()
    try:
        model = build_tiny_model(work / "tiny-llama")
        with serving() as start:
            stub = ChatStub(reply=stub_reply)
            base_url = start(stub)
            config = load_config(
                LiftConfig,
                args.config,
                [
                    *BULK_DEFAULTS,
                    f"model.base_model={model}",
                    f"generator.openai.base_url={base_url}",
                    f"work_dir={work / 'job-work'}",
                    *args.overrides,
                ],
            )
            cluster.start_head(num_cpus=2)
            runner = Runner(cluster, endpoint, config, work)
            runs = [measure(runner, size) for size in sizes]
            check = None if args.no_interrupt else interrupted(runner, sizes[-1])
    finally:
        cluster.shutdown()
        s3_process.terminate()
        s3_process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    entry = {"runs": runs, "interruption": check, "note": args.note, "device": device_description()}
    print(json.dumps(entry, indent=2))
    if args.no_docs:
        return
    path = RESULTS_DIR / "bulk.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results = {**results, "setup": SETUP, "entries": {**results.get("entries", {}), args.label: entry}}
    write_results("bulk", results)
    plot(results["entries"], RESULTS_DIR / "bulk.png")
    write_docs(results["entries"], entry["device"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
