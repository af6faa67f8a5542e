"""Ray Train wiring: one TorchTrainer run trains and publishes adapters for many documents.

Workers load the base model once and loop over the run's documents (`AdapterTrainer.train_document`),
so bulk LIFT pays trainer and model start-up once per run, not once per document. Documents whose QA
is still being generated arrive through a `RowFeed` actor that the driver fills from the generator's
Ray Dataset from the moment the run starts, so generation runs while the worker group starts up
(`lift_ray.train.feed` says why not `streaming_split`); each worker reads its share as it is produced,
and the loop tolerates uneven shares. Rank 0 writes each document's QA cache, publishes its adapter and
records the outcome in a small `ResultCollector` actor, which also tells a restarted worker group
(FailureConfig) which documents are done, so each document publishes once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from lift_ray.config import LiftConfig
from lift_ray.layout import (
    LISTING_MIN_DOCUMENTS,
    adapter_is_current,
    manifest_ids,
    publish_adapter,
    read_manifest,
    write_qa_cache,
)
from lift_ray.models import resolve_base_model
from lift_ray.progress import ProgressWriter
from lift_ray.storage import Store
from lift_ray.train.collector import ResultCollector
from lift_ray.train.feed import RowFeed, feed_rows, pump_rows
from lift_ray.train.loop import (
    AdapterTrainer,
    BufferedRowSource,
    DocumentJob,
    DocumentResult,
    NoRows,
    RowSource,
    TorchCollective,
)

log = logging.getLogger(__name__)


def adapter_manifest(config: LiftConfig, job: DocumentJob, result: DocumentResult) -> dict[str, Any]:
    """The manifest fields that describe how an adapter was made."""
    return {
        "base_model": config.model.base_model,
        "config_hash": config.adapter_hash(),
        "doc_sha256": job.sha256,
        "variant": config.train.variant,
        "qa_count": result.qa_count,
        "segment_count": result.segment_count,
        "final_loss": result.history.final_loss,
        "quality": result.quality or None,
        "epoch_losses": result.history.epoch_losses,
        "step_losses": result.history.step_losses,
        "trained_tokens": result.history.trained_tokens,
        "lora": config.lora.model_dump(mode="json"),
        "adapter_dtype": config.model.dtype,
        "system_prompt": config.model.system_prompt,
        "recite": config.recite_settings(),
        "created_at": datetime.now(UTC).isoformat(),
        "timings": {k: round(v, 3) for k, v in result.timings.items() if k.endswith("_s")},
    }


# Called in each Ray Train worker with its world rank; returns that worker's `AdapterTrainer.after_step` hook.
AfterStepFactory = Callable[[int], Callable[[str, int], None] | None]


class StorePublisher:
    """Rank 0's hooks: write a streamed document's QA cache, publish its adapter with the manifest last."""

    def __init__(self, config: LiftConfig) -> None:
        self.config = config
        self.store = Store.from_uri(config.storage.root)
        self.progress = ProgressWriter(self.store, config.storage.namespace) if config.storage.progress else None

    def rows(self, job: DocumentJob, rows: list[dict[str, Any]]) -> None:
        """The QA cache of a document whose rows were streamed to the workers (the driver never saw them)."""
        if job.cache_key:
            write_qa_cache(self.store, job.cache_key, rows)

    def adapter(self, job: DocumentJob, adapter_dir: Path, result: DocumentResult) -> dict[str, Any]:
        """Publish; returns the adapter's uri and size."""
        manifest = adapter_manifest(self.config, job, result)
        manifest = publish_adapter(
            self.store, self.config.storage.namespace, job.doc_id, adapter_dir, manifest, document_text=job.text or None
        )
        return {"adapter_uri": manifest["adapter_uri"], "adapter_bytes": manifest["adapter_bytes"]}

    def epoch(self, job: DocumentJob, done: int, total: int) -> None:
        """`done` of `total` epochs of the document trained (written only with `storage.progress`)."""
        if self.progress is not None:
            self.progress.epoch(job.doc_id, done, total)

    def draft(self, job: DocumentJob, adapter_dir: Path, result: DocumentResult) -> dict[str, Any]:
        """Publish the adapter after the first epochs as a draft (served until the final one replaces it)."""
        epochs_done = len(result.history.epoch_losses)
        manifest = {**adapter_manifest(self.config, job, result), "draft_after_epochs": epochs_done}
        manifest = publish_adapter(
            self.store,
            self.config.storage.namespace,
            job.doc_id,
            adapter_dir,
            manifest,
            document_text=job.text or None,
            draft=True,
        )
        return {"adapter_uri": manifest["adapter_uri"], "adapter_bytes": manifest["adapter_bytes"]}


def published_ids(store: Store, config: LiftConfig, jobs: int) -> set[str] | None:
    """The ids of the namespace's published documents from one listing, for runs of `LISTING_MIN_DOCUMENTS`
    jobs or more (else None: each job's manifest is asked for)."""
    if jobs < LISTING_MIN_DOCUMENTS:
        return None
    return manifest_ids(store.list_keys(config.storage.namespace), config.storage.namespace)


def published_by_earlier_attempt(
    store: Store, config: LiftConfig, job: DocumentJob, listed: set[str] | None = None
) -> DocumentResult | None:
    """The result of `job` when an earlier attempt of this run already published its adapter, else None.

    The plan leaves out documents whose adapter is current, so a current manifest here was written by this
    run's worker group before it was restarted, possibly after rank 0 published but before the collector
    heard (a node lost right then). Every rank reads it before the document's first step, and rank 0
    publishes only after the last step, so all ranks decide alike. `listed`: the published ids from a listing
    made when the worker started (`published_ids`): an earlier attempt's adapters are in it, and a document
    not in it is not asked for.
    """
    if listed is not None and job.doc_id not in listed:
        return None
    manifest = read_manifest(store, config.storage.namespace, job.doc_id)
    if not adapter_is_current(manifest, job.sha256, config.adapter_hash()):
        return None
    assert manifest is not None
    return DocumentResult(
        job.doc_id,
        status="published",
        qa_count=manifest.get("qa_count") or 0,
        segment_count=manifest.get("segment_count") or 0,
        quality=manifest.get("quality") or {},
        adapter={"adapter_uri": manifest.get("adapter_uri"), "adapter_bytes": manifest.get("adapter_bytes")},
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: base model once, then one fresh adapter per document of the run."""
    import ray
    import ray.train
    import ray.train.torch

    entered_at = time.time()
    config = LiftConfig.model_validate(loop_config["config"])
    jobs: list[DocumentJob] = ray.get(loop_config["jobs"])
    collector = loop_config["collector"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if config.train.use_gpu:
        device = str(ray.train.torch.get_device())
    else:
        device = "cpu"
        torch.set_num_threads(config.train.threads_per_worker)
    collective = TorchCollective()
    model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
    trainer = AdapterTrainer(model_dir, config, collective, device)
    log.info("rank %d: model ready in %.1f s", rank, trainer.load_s)
    source: RowSource = NoRows()
    feed = loop_config["feed"]
    if feed is not None:
        source = BufferedRowSource(feed_rows(feed, rank, context.get_world_size(), config.train.poll_s))
    publisher = StorePublisher(config) if rank == 0 else None
    finished = set(ray.get(collector.finished.remote()))  # from an earlier attempt of this run
    if loop_config["after_step"] is not None:
        trainer.after_step = loop_config["after_step"](rank)
    store = Store.from_uri(config.storage.root)
    listed = published_ids(store, config, len(jobs))
    for job in jobs:
        if job.doc_id in finished:
            if job.rows is None:
                source.take(job.doc_id)  # the feed may still hold its rows (a restart came before forget): dropped
                if rank == 0:
                    feed.forget.remote(job.doc_id)
            continue
        earlier = published_by_earlier_attempt(store, config, job, listed)
        if earlier is not None:
            if job.rows is None:
                source.take(job.doc_id)
            result = earlier
        else:
            result = trainer.train_document(
                job,
                source,
                publisher.rows if publisher else None,
                publisher.adapter if publisher else None,
                publisher.draft if publisher else None,
                publisher.epoch if publisher else None,
            )
        if rank == 0:
            result.load_s = trainer.load_s
            ray.get(collector.record.remote(job.doc_id, {**result.to_dict(), "worker_entered_at": entered_at}))
            if feed is not None and job.rows is None:
                feed.forget.remote(job.doc_id)  # finished (published or failed): a restart skips it
    ray.train.report({"documents": len(jobs)})


HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextmanager
def controller_poll_interval(seconds: float) -> Iterator[None]:
    """Ray Train's controller polls its workers every `seconds` in runs started inside (unless the env var is set).

    The controller notices that the training function returned only at its next poll, and Ray's default of
    2 s costs each run about 3 s at its end (measured: 4.0 s from the workers returning to `fit()` returning,
    1.0 s at 0.1 s); `fit()` hands the variable on to the controller it starts.
    """
    if HEALTH_CHECK_ENV in os.environ:
        yield
        return
    os.environ[HEALTH_CHECK_ENV] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(HEALTH_CHECK_ENV, None)


def train_documents_on_ray(
    config: LiftConfig,
    jobs: list[DocumentJob],
    stream: Any | None = None,
    run_name: str | None = None,
    after_step: AfterStepFactory | None = None,
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """One TorchTrainer run for all `jobs`: each document's recorded result, and the run's error if it failed.

    `stream` is the Ray Dataset of sentence rows with `qa_json` for the jobs whose `rows` is None; it is
    iterated on a driver thread into a `RowFeed` while the worker group starts and trains. Documents
    without a result did not finish (the run failed after `train.max_failures` restarts).
    `after_step`, if given, is called in every worker each time it starts (restarts included) with the
    worker's world rank; what it returns (or None) becomes that worker's `AdapterTrainer.after_step`,
    called as `(doc_id, steps so far)` after each optimizer step: a way to watch training from outside, or
    for a test to inject a fault. It travels to the workers, so it must be picklable (cloudpickle: a
    closure will do).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not jobs:
        return {}, None
    if config.storage.root and "://" not in config.storage.root:  # workers run elsewhere: no relative paths
        config = config.model_copy(
            update={"storage": config.storage.model_copy(update={"root": str(Path(config.storage.root).resolve())})}
        )
    # On the driver's node: a lost worker node (a reclaimed spot instance) must not take the run's record with it.
    on_driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    collector = ray.remote(num_cpus=0)(ResultCollector).options(scheduling_strategy=on_driver_node).remote()
    feed, stop_pump, pump = None, threading.Event(), None
    if stream is not None:
        streamed = [job for job in jobs if job.rows is None]
        feed = (
            ray.remote(num_cpus=0)(RowFeed)
            .options(scheduling_strategy=on_driver_node)
            .remote(
                config.train.feed_max_rows,
                [job.doc_id for job in streamed],
                {job.doc_id: job.expected_rows for job in streamed},
            )
        )
        progress = None
        if config.storage.progress:
            expected = {job.doc_id: job.expected_rows for job in streamed}
            progress = ProgressWriter(Store.from_uri(config.storage.root), config.storage.namespace, expected)
        pump = threading.Thread(
            target=pump_rows,
            args=(stream, feed, stop_pump),
            kwargs={"on_rows": progress.rows if progress else None},
            name="lift-row-pump",
            daemon=True,
        )
        pump.start()
    run_name = run_name or f"lift-{config.adapter_hash()}-{int(time.time() * 1000)}"
    storage_path = (Path(config.work_dir) / "ray_train").resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "jobs": ray.put(jobs),
            "collector": collector,
            "feed": feed,
            "after_step": after_step,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={"CPU": config.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
        ),
    )
    error = None
    try:
        with controller_poll_interval(config.train.health_check_interval_s):
            trainer.fit()
    except Exception as exc:  # the documents that finished before it are still published
        log.exception("training run %s failed", run_name)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_pump.set()
    if pump is not None:
        pump.join()
        log.info(
            "row feed: at most %d rows held (train.feed_max_rows=%d)",
            ray.get(feed.peak.remote()),
            config.train.feed_max_rows,
        )
        ray.kill(feed)
    results = ray.get(collector.results.remote())
    for doc_id, count in ray.get(collector.publishes.remote()).items():
        results[doc_id]["publishes"] = count
    ray.kill(collector)
    return results, error
