"""Warm LIFT workers: the generator engine and the trainer's base model stay loaded between documents.

`WarmLifter` is the plain class (no Ray): it loads both once, then LIFTs each batch of documents in this
process in the pipeline's own steps (plan, then per document generate → train → publish → report), so a
document pays neither an engine start-up nor a Ray Train worker group's start-up and shut-down. It runs one stage at a
time on one rank: data-parallel training across workers stays with the bulk path (`lift_documents`).

`WarmPool` keeps one `WarmLifter` as a Ray actor for a driver (the endpoint's online LIFT, or any script):
it starts the actor on demand, hands it documents one batch at a time, replaces it when it dies (the batch
is retried on the new one, `retries` times), and kills it after `idle_s` without work, so that its CPUs and
GPUs go back to the cluster; the next batch starts a new one. A bulk run uses one with `train.pipeline=warm`
(`lift_on_warm_worker`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import Document, sentence_rows
from lift_ray.pipeline import generate_first, lift_documents, log_outcome, plan_lift, report_trained, training_jobs
from lift_ray.progress import ProgressWriter
from lift_ray.report import DocumentReport
from lift_ray.storage import Store

log = logging.getLogger(__name__)


def same_lift(a: LiftConfig, b: LiftConfig) -> bool:
    """Whether `a` and `b` are the same LIFT apart from where they publish: same adapters, and the same generator
    engine and resources, since a warm worker keeps the engine it loaded."""
    return a.model_copy(update={"storage": b.storage}) == b


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op thread count set to `threads` inside the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class WarmLifter:
    """A generator engine and a trainer's base model loaded once; `lift` LIFTs documents with them, in process."""

    def __init__(self, config: LiftConfig) -> None:
        import torch

        from lift_ray.models import resolve_base_model
        from lift_ray.synth.generator import QAGeneratorActor
        from lift_ray.train.loop import AdapterTrainer

        started = time.perf_counter()
        self.config = config
        self.generator = QAGeneratorActor(config)
        # One stage at a time here: training may use the threads the generator was given.
        self.train_threads = max(config.train.threads_per_worker, torch.get_num_threads())
        device = "cuda" if config.train.use_gpu and torch.cuda.is_available() else "cpu"
        model_dir = resolve_base_model(config.model.base_model, Path(config.model.cache_dir))
        with torch_threads(self.train_threads):
            self.trainer = AdapterTrainer(model_dir, config, device=device)
        self.load_s = time.perf_counter() - started
        self.documents_lifted = 0
        log.info("warm LIFT worker ready in %.1f s", self.load_s)

    def ready(self) -> float:
        """Seconds its models took to load (a call that returns once they are)."""
        return self.load_s

    def generate_qa(
        self, documents: list[Document], config: LiftConfig, progress: ProgressWriter | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """QA rows of each document, generated here in batches of `generator.batch_size` sentences."""
        by_document: dict[str, list[dict[str, Any]]] = {}
        size = config.generator.batch_size
        for document in documents:
            sentences = sentence_rows(document, config.sentences.context_chars, config.sentences.max_sentence_chars)
            rows: list[dict[str, Any]] = []
            for start in range(0, len(sentences), size):
                batch = self.generator.rows(sentences[start : start + size])
                rows += batch
                if progress is not None:
                    progress.rows(batch)
            by_document[document.doc_id] = rows
        return by_document

    def lift(self, documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
        """LIFT `documents` with `config` (which must make the same adapters as this worker's, `same_lift`)."""
        if not same_lift(self.config, config):
            raise ValueError("this warm worker was loaded for another LIFT config (model, generator or training)")
        from lift_ray.train.trainer import StorePublisher

        accepted_at = time.time()
        store = Store.from_uri(config.storage.root)
        plan = plan_lift(documents, config, store)
        publisher = StorePublisher(config)
        for document in plan.to_train:  # one at a time, so the batch's first adapter does not wait for the rest
            step = replace(plan, to_train=[document], to_generate=[d for d in plan.to_generate if d is document])
            if step.to_generate:
                generate_first(step, config, store, generate=self.generate_qa)  # fills plan's rows and reports
            for job in training_jobs(step, config):
                started = time.time()
                with torch_threads(self.train_threads):
                    result = self.trainer.train_document(
                        job, None, publisher.rows, publisher.adapter, publisher.draft, publisher.epoch
                    )
                result.load_s = 0.0  # loaded before the document came
                result.recorded_at = time.time()  # published (or failed) now: nothing to hand over
                report = report_trained(plan.reports[job.doc_id], result, started, None, accepted_at)
                plan.reports[job.doc_id] = report
                log_outcome(report)
                self.documents_lifted += 1
        return [plan.reports[document.doc_id] for document in documents]


def warm_actor_options(config: LiftConfig) -> dict[str, Any]:
    """Ray options of a warm worker: room for the larger of its two stages (they take turns), the generator's
    runtime env (vLLM's CPU variables, its thread count)."""
    from lift_ray.engines import engine_runtime_env

    generator, train = config.generator, config.train
    return {
        "num_cpus": max(generator.num_cpus, train.cpus_per_worker),
        "num_gpus": max(generator.num_gpus, 1.0 if train.use_gpu else 0.0),
        "runtime_env": engine_runtime_env(generator),
        "max_restarts": 0,  # the pool replaces a dead worker and retries its batch
    }


class WarmPool:
    """One warm LIFT worker on the cluster for this driver: started on demand, replaced when it dies, released
    after `idle_s` without work (0: kept until `close`)."""

    def __init__(self, config: LiftConfig, idle_s: float, retries: int = 1, check_every_s: float = 1.0) -> None:
        self.config, self.idle_s, self.retries = config, idle_s, retries
        self.lock = threading.Lock()  # one batch at a time, and no release while one runs
        self.actor: Any = None
        self.last_used = time.monotonic()
        self.workers_started = 0
        self.workers_replaced = 0
        self.workers_released = 0
        self._closed = threading.Event()
        self._releaser = threading.Thread(target=self._release_when_idle, args=(check_every_s,), daemon=True)
        self._releaser.start()

    def start(self) -> None:
        """Start the worker now (it loads its models in the background), unless one is running."""
        with self.lock:
            self._worker()

    def _worker(self) -> Any:
        import ray

        if self.actor is None:
            self.actor = ray.remote(WarmLifter).options(**warm_actor_options(self.config)).remote(self.config)
            self.workers_started += 1
            log.info("warm LIFT worker %d starting", self.workers_started)
        return self.actor

    def lift(self, documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
        """LIFT a batch on the warm worker (a fresh one if it died meanwhile, then the batch again); a config that
        makes other adapters than the pool's runs the bulk path (`lift_documents`) instead."""
        import ray

        if not same_lift(self.config, config):
            log.warning("this batch's LIFT config is not the warm worker's: LIFTing it with lift_documents")
            return lift_documents(documents, config)
        with self.lock:
            try:
                attempt = 0
                while True:
                    try:
                        return ray.get(self._worker().lift.remote(documents, config))
                    except ray.exceptions.RayActorError as exc:
                        self.actor = None
                        if attempt == self.retries:
                            raise
                        attempt += 1
                        self.workers_replaced += 1
                        log.warning(
                            "the warm LIFT worker died (%s); LIFTing %s again on a new one",
                            type(exc).__name__,
                            ", ".join(d.doc_id for d in documents),
                        )
            finally:
                self.last_used = time.monotonic()

    def release_if_idle(self) -> bool:
        """Kill the worker if it has had no work for `idle_s` (its resources go back to the cluster)."""
        import ray

        if not self.lock.acquire(blocking=False):
            return False  # a batch is running
        try:
            if self.actor is None or not self.idle_s or time.monotonic() - self.last_used < self.idle_s:
                return False
            ray.kill(self.actor)
            self.actor = None
            self.workers_released += 1
            log.info("warm LIFT worker released after %.0f s idle", self.idle_s)
            return True
        finally:
            self.lock.release()

    def _release_when_idle(self, check_every_s: float) -> None:
        while not self._closed.wait(check_every_s):
            try:
                self.release_if_idle()
            except Exception:  # a failed kill is retried at the next check
                log.warning("releasing the idle warm LIFT worker failed", exc_info=True)

    def close(self) -> None:
        """Stop releasing and kill the worker."""
        import ray

        self._closed.set()
        with self.lock:
            if self.actor is not None:
                ray.kill(self.actor)
                self.actor = None


def lift_on_warm_worker(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
    """A bulk run with `train.pipeline=warm`: one warm worker for this run's documents, released at the end."""
    pool = WarmPool(config, idle_s=0)
    try:
        return pool.lift(documents, config)
    finally:
        pool.close()
