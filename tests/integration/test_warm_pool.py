"""Warm LIFT workers on the session's Ray: a killed worker is replaced and its batch LIFTed again, and an idle
worker gives its CPUs back; the next document still LIFTs (on a new worker)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lift_ray.online.warm import WarmPool
from testkit.chat_stub import ChatStub, serving

from ..unit.test_warm_lifter import BRIDGE, MILL, PAIR, lift_config

pytestmark = pytest.mark.integration

IDLE_S = 3.0


def test_a_killed_warm_worker_is_replaced_and_an_idle_one_gives_its_cpus_back(ray_cluster, tiny_model_dir, tmp_path):
    import ray

    stub = ChatStub(delay_s=1.0, reply=json.dumps({"qa_list": [PAIR]}))
    with serving() as start:
        base = lift_config(tiny_model_dir, start(stub), tmp_path / "store")
        # Fractional CPUs: the session's Serve app holds some of the 2.
        config = base.model_copy(
            update={
                "generator": base.generator.model_copy(update={"num_cpus": 0.4}),
                "train": base.train.model_copy(update={"cpus_per_worker": 0.4}),
            }
        )
        pool = WarmPool(config, idle_s=IDLE_S, check_every_s=0.5)
        try:
            free_before = ray.available_resources().get("CPU", 0.0)

            def kill_while_generating() -> None:
                while not stub.bodies:  # the worker is asking the generator: mid-document
                    time.sleep(0.1)
                ray.kill(pool.actor)

            killer = threading.Thread(target=kill_while_generating, daemon=True)
            killer.start()
            [bridge] = pool.lift([BRIDGE], config)
            killer.join(timeout=5)
            assert bridge.status == "published", bridge
            assert pool.workers_started == 2 and pool.workers_replaced == 1
            assert len(stub.bodies) >= 3  # 2 sentences, on the new worker too

            deadline = time.monotonic() + 60
            while pool.actor is not None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert pool.actor is None and pool.workers_released == 1
            deadline = time.monotonic() + 30
            while ray.available_resources().get("CPU", 0.0) < free_before - 1e-6 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert ray.available_resources().get("CPU", 0.0) >= free_before - 1e-6

            [mill] = pool.lift([MILL], config)
            assert mill.status == "published" and pool.workers_started == 3, mill
        finally:
            pool.close()


def test_a_bulk_run_with_the_warm_pipeline_lifts_on_one_warm_worker(ray_cluster, tiny_model_dir, tmp_path):
    import ray

    from lift_ray.pipeline import lift_documents

    stub = ChatStub(reply=json.dumps({"qa_list": [PAIR]}))
    with serving() as start:
        base = lift_config(tiny_model_dir, start(stub), tmp_path / "store")
        train = base.train.model_copy(update={"pipeline": "warm", "cpus_per_worker": 0.4})
        config = base.model_copy(
            update={"train": train, "generator": base.generator.model_copy(update={"num_cpus": 0.4})}
        )
        free_before = ray.available_resources().get("CPU", 0.0)
        bridge, mill = lift_documents([BRIDGE, MILL], config)
    assert bridge.status == mill.status == "published", (bridge, mill)
    assert bridge.timings["model_load_s"] == mill.timings["model_load_s"] == 0.0
    assert config.adapter_hash() == base.adapter_hash()  # how documents are LIFTed is not what they learn
    deadline = time.monotonic() + 30  # the run's worker is released at its end
    while ray.available_resources().get("CPU", 0.0) < free_before - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0.0) >= free_before - 1e-6
