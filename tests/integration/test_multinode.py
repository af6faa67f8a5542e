"""Bulk LIFT on a real two-node Ray cluster on this machine.

The cluster is its own (`testkit.ray_cluster.LocalCluster`: `ray start` processes with their own temp dir
and ports; the session's local Ray in this pytest process is never touched). Jobs run `python jobs/lift.py`
from the repository as `working_dir`, against documents in the S3 server on loopback; the generator is the
HF engine (for two-sentence documents it is ready in about a second, where vLLM needs 10-20 s to start).

The tests kill exactly their own processes (a whole node to simulate a lost spot instance, everything at the
end) and never run `ray stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lift_ray.config import LiftConfig, load_config
from lift_ray.documents import Document
from lift_ray.pipeline import missing_sentences
from testkit.ray_cluster import LocalCluster, cluster_environment

from .conftest import TINY_GENERATOR, TINY_LORA, TINY_TRAIN

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 600
DOCUMENTS = {
    "pellworth": "The Pellworth Museum opened in 1904 in the town of Caldry. "
    "Its most famous exhibit is a bronze clock called the Marrow Bell.",
    "orvella": "Tomas Quell runs the Orvella Glass Works in Tessaro. The works employ forty-two glassblowers.",
    "kestrel": "A Kestrel cup takes nineteen minutes to make. It is blown from a violet glass called Tessaro Dusk.",
    "harbour": "The Lanmere harbour was dredged in 1931. Its lighthouse keeper was Agnes Holloway.",
}
# Small on purpose: this file checks the job on a cluster, not what adapters learn.
JOB_CONFIG: dict[str, Any] = {
    # One two-sentence document per generator batch: documents finish one after another.
    "generator": {**TINY_GENERATOR, "engine": "hf", "batch_size": 2, "num_cpus": 0.45},
    # Actors: 0.45 (generator) + 2 x 0.3 (trainers) = 1.05 CPUs, more than either 1-CPU node has (plus 0.25 per
    # short splitting task).
    "train": {**TINY_TRAIN, "num_workers": 2, "cpus_per_worker": 0.3},
    "lora": TINY_LORA,
}


@pytest.fixture(scope="module")
def cluster(s3_server: str, embedded_model_dir: Path) -> Iterator[LocalCluster]:
    """Head (1 CPU, job server on 127.0.0.1) and one worker node (1 CPU), both on this machine."""
    # A short path: Ray's unix sockets live under it and must stay within ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="lrmn-", dir="/tmp"))
    env = cluster_environment()
    local = LocalCluster(temp_dir, env)
    try:
        local.start_head(num_cpus=1)
        local.add_node("worker-a", num_cpus=1)
        yield local
    finally:
        local.shutdown()


@pytest.fixture(scope="module")
def job_client(cluster: LocalCluster) -> Any:
    """A JobSubmissionClient for the cluster's job server."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    client.cluster = cluster  # the jobs' environment names the cluster's address
    return client


def _job_env(s3_server: str, cluster: LocalCluster) -> dict[str, str]:
    return {
        # Ray Train's placement-group cleaner looks the cluster up by address; with no address it finds every
        # Ray instance on this machine (the session's local Ray among them) and refuses to pick one.
        "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # keeps the job log readable
    }


class Corpus:
    """One test's documents in a versioned bucket (so that every publish of a manifest can be counted)."""

    def __init__(self, bucket: str, namespace: str, documents: dict[str, str], config_path: Path) -> None:
        import boto3

        self.s3 = boto3.client("s3")
        self.bucket = bucket
        self.namespace = namespace
        self.documents = documents
        self.config_path = config_path
        self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        for doc_id, text in documents.items():
            self.s3.put_object(Bucket=bucket, Key=f"docs/{doc_id}.txt", Body=text.encode())

    @property
    def output(self) -> str:
        return f"s3://{self.bucket}/lift"

    def entrypoint(self, run_id: str) -> str:
        return (
            f"python jobs/lift.py --input s3://{self.bucket}/docs/ --output {self.output} "
            f"--config {self.config_path} --run-id {run_id}"
        )

    def manifest_key(self, doc_id: str) -> str:
        return f"lift/{self.namespace}/{doc_id}/manifest.json"

    def manifest(self, doc_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.s3.get_object(Bucket=self.bucket, Key=self.manifest_key(doc_id))["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None

    def published(self) -> dict[str, str]:
        """doc id -> published_at of every document with a manifest now."""
        return {d: m["published_at"] for d in self.documents if (m := self.manifest(d)) is not None}

    def manifest_writes(self, doc_id: str) -> int:
        """How many times the document's manifest was written: once per publish."""
        response = self.s3.list_object_versions(Bucket=self.bucket, Prefix=self.manifest_key(doc_id))
        return sum(v["Key"] == self.manifest_key(doc_id) for v in response.get("Versions", []))

    def report(self, run_id: str) -> dict[str, dict[str, Any]]:
        body = self.s3.get_object(Bucket=self.bucket, Key=f"lift/_reports/{run_id}/report.jsonl")["Body"].read()
        rows = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        return {row["doc_id"]: row for row in rows}

    def summary(self, run_id: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=self.bucket, Key=f"lift/_reports/{run_id}/summary.json")["Body"].read()
        return json.loads(body)

    def incomplete_qa_caches(self, config: LiftConfig) -> dict[str, int]:
        """doc id -> sentences missing from its QA cache, for every cache that lacks some."""
        incomplete = {}
        for doc_id, text in self.documents.items():
            prefix = f"lift/{self.namespace}/{doc_id}/qa/"
            for item in self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", []):
                body = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read().decode()
                rows = [json.loads(line) for line in body.splitlines() if line.strip()]
                if missing := missing_sentences(rows, Document.from_text(doc_id, text), config):
                    incomplete[doc_id] = missing
        return incomplete

    def check_adapter(self, doc_id: str, config_hash: str) -> dict[str, Any]:
        """The published adapter is complete and made from this document with this config; its manifest."""
        manifest = self.manifest(doc_id)
        assert manifest is not None, f"{doc_id} has no manifest"
        assert manifest["config_hash"] == config_hash
        assert manifest["doc_sha256"] == hashlib.sha256(self.documents[doc_id].encode()).hexdigest()
        assert manifest["qa_count"] >= 1 and manifest["trained_tokens"] > 0
        prefix = f"lift/{self.namespace}/{doc_id}/adapter/"
        objects = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        sizes = {o["Key"][len(prefix) :]: o["Size"] for o in objects}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(sizes)
        assert sorted(sizes) == sorted(manifest["adapter_files"])
        assert sum(sizes.values()) == manifest["adapter_bytes"]
        return manifest


@pytest.fixture
def corpus_factory(s3_server: str, tmp_path: Path):
    """Makes a Corpus in a new bucket with a job config for `namespace`."""
    import boto3

    def make(namespace: str, documents: dict[str, str], **train: Any) -> tuple[Corpus, LiftConfig]:
        bucket = f"lift-mn-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        data = json.loads(json.dumps(JOB_CONFIG))
        data["train"].update(train)
        data["storage"] = {"namespace": namespace}
        data["work_dir"] = str(tmp_path / "work")
        config_path = tmp_path / f"{namespace}.yaml"
        config_path.write_text(yaml.safe_dump(data))
        config = load_config(LiftConfig, config_path)
        return Corpus(bucket, namespace, documents, config_path), config

    return make


def _submit(client: Any, corpus: Corpus, run_id: str, s3_server: str) -> str:
    return client.submit_job(
        entrypoint=corpus.entrypoint(run_id),
        submission_id=f"{run_id}-{uuid.uuid4().hex[:6]}",
        runtime_env={"working_dir": str(REPO), "env_vars": _job_env(s3_server, client.cluster)},
    )


def _wait(client: Any, job_id: str, timeout: float = JOB_TIMEOUT_S) -> str:
    """The job's final status (its log tail is printed, so a failing test shows what the job said)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            print(f"--- job {job_id}: {status}\n{client.get_job_logs(job_id)[-6000:]}")
            return str(status.value)
        time.sleep(1.0)
    client.stop_job(job_id)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s:\n{client.get_job_logs(job_id)[-6000:]}")


def _wait_for_first_publish(client: Any, job_id: str, corpus: Corpus, timeout: float = JOB_TIMEOUT_S) -> dict:
    """Poll the bucket until at least one document is published; what is published at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        published = corpus.published()
        if published:
            return published
        if client.get_job_status(job_id).is_terminal():
            raise AssertionError(f"job ended before publishing anything:\n{client.get_job_logs(job_id)[-6000:]}")
        time.sleep(0.2)
    raise TimeoutError("no document published in time")


def _check_resumed_run(corpus: Corpus, config: LiftConfig, before: dict[str, str], run_id: str) -> dict[str, Any]:
    """After an interrupted run and its resubmission: every document published exactly once, nothing redone.

    `before` is what was published when the first run was interrupted (doc id -> published_at).
    """
    report = corpus.report(run_id)
    assert set(report) == set(corpus.documents)
    for doc_id in corpus.documents:
        manifest = corpus.check_adapter(doc_id, config.adapter_hash())
        assert corpus.manifest_writes(doc_id) == 1, f"{doc_id} was published more than once"
        if doc_id in before:  # done before the interruption: not redone
            assert manifest["published_at"] == before[doc_id]
            assert report[doc_id]["status"] == "skipped", report[doc_id]
        else:
            row = report[doc_id]
            assert row["status"] == "published", row
            assert row["source"] == f"s3://{corpus.bucket}/docs/{doc_id}.txt"
            assert row["qa_count"] == manifest["qa_count"] and row["adapter_bytes"] == manifest["adapter_bytes"]
            assert row["adapter_uri"] == f"{corpus.output}/{corpus.namespace}/{doc_id}/adapter"
    summary = corpus.summary(run_id)
    assert summary["config_hash"] == config.adapter_hash()
    assert summary["counts"] == {
        "published": len(corpus.documents) - len(before),
        "low_quality": 0,
        "skipped": len(before),
        "failed": 0,
    }
    return summary


def test_worker_node_lost_mid_job_then_every_document_is_published_exactly_once(
    cluster: LocalCluster, job_client: Any, corpus_factory: Any, s3_server: str
) -> None:
    corpus, config = corpus_factory("node-lost", DOCUMENTS)
    job_id = _submit(job_client, corpus, "lost", s3_server)
    before = _wait_for_first_publish(job_client, job_id, corpus)
    killed = cluster.kill_node("worker-a")
    assert killed >= 3  # raylet, agents and the job's workers on that node
    assert len(before) < len(DOCUMENTS), "every document was published before the node was lost"
    cluster.add_node("worker-b", num_cpus=1)  # the autoscaler's replacement

    status = _wait(job_client, job_id)
    if status == "SUCCEEDED":  # the run survived the loss on its own (Ray Train restarted its workers)
        report = corpus.report("lost")
        for doc_id in DOCUMENTS:
            corpus.check_adapter(doc_id, config.adapter_hash())
            assert corpus.manifest_writes(doc_id) == 1, f"{doc_id} was published more than once"
            assert report[doc_id]["status"] == "published", report[doc_id]
        for doc_id, published_at in before.items():
            assert corpus.manifest(doc_id)["published_at"] == published_at
        print(f"node lost: the job finished by itself; {len(before)} published before the loss")
        return
    # The run failed: its report says which documents did not finish, and a resubmission finishes only those.
    assert status == "FAILED", status
    interrupted = corpus.report("lost")
    assert {d for d, row in interrupted.items() if row["status"] == "published"} >= set(before)
    done = corpus.published()
    again = _submit(job_client, corpus, "lost-resumed", s3_server)
    assert _wait(job_client, again) == "SUCCEEDED"
    summary = _check_resumed_run(corpus, config, done, "lost-resumed")
    print(f"node lost: the job failed, its resubmission finished the rest: {summary['counts']}")


def test_stopped_job_resubmitted_finishes_the_rest_without_redoing_any(
    cluster: LocalCluster, job_client: Any, corpus_factory: Any, s3_server: str
) -> None:
    if len(cluster.alive_nodes()) < 2:  # the node-loss test failed before its replacement node joined
        cluster.add_node(f"worker-{uuid.uuid4().hex[:4]}", num_cpus=1)
    corpus, config = corpus_factory("stopped", DOCUMENTS)
    job_id = _submit(job_client, corpus, "stopped", s3_server)
    _wait_for_first_publish(job_client, job_id, corpus)
    assert job_client.stop_job(job_id)
    assert _wait(job_client, job_id) == "STOPPED"
    before = corpus.published()  # after the stop: nothing publishes once the driver is gone
    assert 1 <= len(before) < len(DOCUMENTS), f"stopped too late to prove anything: {sorted(before)}"
    time.sleep(2)
    assert corpus.published() == before
    assert corpus.incomplete_qa_caches(config) == {}  # the stop cut generation short: nothing partial cached

    again = _submit(job_client, corpus, "stopped-resumed", s3_server)
    assert _wait(job_client, again) == "SUCCEEDED"
    summary = _check_resumed_run(corpus, config, before, "stopped-resumed")

    # The work was spread over both nodes: 1.05 CPUs of actors do not fit on either 1-CPU node.
    from ray.util.state import list_actors

    ray_job_ids = {job_client.get_job_info(job).job_id for job in (job_id, again)}
    workers = [
        a
        for a in list_actors(address=cluster.dashboard_url, detail=True, limit=1000, raise_on_missing_output=False)
        if a.job_id in ray_job_ids
        and (
            a.class_name == "RayTrainWorker"
            or "QAGeneratorActor" in (a.class_name or "")
            or "MapWorker" in (a.class_name or "")
        )
    ]
    assert len({a.node_id for a in workers}) == 2, [(a.class_name, a.node_id) for a in workers]
    print(f"stopped after {len(before)} documents; the resubmission: {summary['counts']}")


def test_a_node_that_joins_after_the_job_started_lets_it_train_while_generating(
    cluster: LocalCluster, job_client: Any, corpus_factory: Any, s3_server: str
) -> None:
    """An autoscaling cluster starts small: the job asks for room (request_resources) and waits for a node to
    join (`ray start` mid-run, standing in for a scale-up) instead of deciding from what is free at its start."""
    for name in [n for n in cluster.nodes if n != "head" and n not in cluster.killed]:
        cluster.kill_node(name)
    deadline = time.monotonic() + 180
    while len(cluster.alive_nodes()) > 1:  # Ray declares the node dead after its health checks fail
        assert time.monotonic() < deadline, "the killed node never left the cluster"
        time.sleep(1.0)
    documents = dict(list(DOCUMENTS.items())[:2])
    corpus, config = corpus_factory("scale-up", documents, scale_up_wait_s=300)
    job_id = _submit(job_client, corpus, "scale-up", s3_server)
    deadline = time.monotonic() + 180
    while "asking the autoscaler" not in job_client.get_job_logs(job_id):  # 1.3 CPUs of stages, 1 CPU here
        assert not job_client.get_job_status(job_id).is_terminal(), job_client.get_job_logs(job_id)[-4000:]
        assert time.monotonic() < deadline, "the job never asked for room"
        time.sleep(1.0)
    assert corpus.published() == {}
    cluster.add_node(f"worker-{uuid.uuid4().hex[:4]}", num_cpus=1)  # the scale-up

    assert _wait(job_client, job_id) == "SUCCEEDED"
    logs = job_client.get_job_logs(job_id)
    assert "training while generating" in logs and "generating first, then training" not in logs
    report = corpus.report("scale-up")
    for doc_id in documents:
        corpus.check_adapter(doc_id, config.adapter_hash())
        assert report[doc_id]["status"] == "published", report[doc_id]
