"""Tier 3: worker health, recovery with nothing lost, cancellation and progress, with kill -9.

A master with this extension and two plain workers; the master's heartbeat runs every
0.5 s with a 3 s TTL. Each job: 3 participants x batch 2 with 2 s of simulated work.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from comfy_distributed.api.handlers import TOKEN_ENV
from tests.real.cluster import Cluster, decoded, image_workflow, queue_empty, worker_failures
from tests.real.harness import http_json, output_images, requires_comfyui
from tests.waiting import poll

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

TTL = 3.0
WORK = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = Cluster(tmp_path_factory.mktemp("recovery"), master_env={TOKEN_ENV: ""})
    try:
        made.use_workers(made.w1, made.w2, heartbeat_interval=0.5, health_ttl=TTL)
        yield made
    finally:
        made.stop()


def worker_status(cluster: Cluster, worker_id: int) -> str:
    return next(w["status"] for w in cluster.status()["workers"] if w["id"] == worker_id)


def running_prompt(instance) -> bool:
    return bool(http_json("GET", f"{instance.url}/queue", timeout=5)["queue_running"])


def images_of(cluster: Cluster, entry: dict) -> list[np.ndarray]:
    return decoded(output_images(cluster.master.url, entry))


def test_killed_worker_loses_no_image(cluster):
    poll(lambda: worker_status(cluster, 2) == "idle", 30, "worker 2 idle at the start", interval=0.05)
    _, _, fault_free_time = cluster.run(image_workflow(seed=100, delay=WORK))  # the reference time

    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(cluster.run, image_workflow(seed=200, delay=WORK))
        poll(lambda: running_prompt(cluster.w2), 20, "worker 2 running its unit", interval=0.05)
        time.sleep(1.0)  # the scenario: killed 1 s into its work
        cluster.w2.kill()
        offline_after = poll(lambda: worker_status(cluster, 2) == "offline", TTL + 2, "worker 2 offline", interval=0.05)
        entry, events, elapsed = job.result()
    assert offline_after <= TTL + 1, f"status showed offline only after {offline_after:.1f}s"
    faulty = images_of(cluster, entry)
    assert len(faulty) == 6
    assert elapsed <= 2 * fault_free_time + 5, (elapsed, fault_free_time)
    (message,) = worker_failures(events)
    assert "GPU 2 (w2)" in message

    cluster.w2.restart()
    poll(lambda: worker_status(cluster, 2) == "idle", TTL + 5, "worker 2 idle again after its restart", interval=0.05)
    entry, events, _ = cluster.run(image_workflow(seed=200, delay=WORK))  # the same job, fault-free
    assert worker_failures(events) == []
    reference = images_of(cluster, entry)
    assert len(reference) == 6
    for index, (got, want) in enumerate(zip(faulty, reference)):
        assert np.array_equal(got, want), f"image {index} differs from the fault-free run"


def test_worker_down_before_dispatch(cluster):
    cluster.w2.kill()
    poll(lambda: worker_status(cluster, 2) == "offline", TTL + 2, "worker 2 offline", interval=0.05)
    entry, events, _ = cluster.run(image_workflow(seed=300, delay=0.5))
    assert len(images_of(cluster, entry)) == 6
    (message,) = worker_failures(events)
    assert "GPU 2 (w2)" in message and "offline" in message

    status = http_json("POST", f"{cluster.master.url}/multigpu/config/update_setting",
                       {"key": "skip_offline_workers", "value": True})
    assert status["settings"]["skip_offline_workers"] is True
    try:
        entry, events, _ = cluster.run(image_workflow(seed=301, delay=0.5))
        assert len(images_of(cluster, entry)) == 4
        (message,) = worker_failures(events)
        assert "GPU 2 (w2)" in message and "left out" in message
    finally:
        http_json("POST", f"{cluster.master.url}/multigpu/config/update_setting",
                  {"key": "skip_offline_workers", "value": False})
        cluster.w2.restart()
        poll(lambda: worker_status(cluster, 2) == "idle", TTL + 5, "worker 2 idle again", interval=0.05)


def test_interrupt_on_the_master_stops_every_instance(cluster):
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(cluster.run, image_workflow(seed=400, delay=8.0))
        poll(lambda: all(running_prompt(i) for i in (cluster.master, cluster.w1, cluster.w2)), 20,
             "all three instances running", interval=0.05)
        http_json("POST", f"{cluster.master.url}/interrupt", {})
        took = poll(lambda: all(queue_empty(i) for i in (cluster.master, cluster.w1, cluster.w2)), 2.0,
                    "every instance idle after the interrupt", interval=0.05)
        entry, events, _ = job.result()
    assert entry["status"]["status_str"] == "error"  # interrupted, as ComfyUI reports it
    assert took <= 2.0


def test_progress_is_aggregated_on_the_master(cluster):
    entry, events, _ = cluster.run(image_workflow(seed=500, delay=WORK))
    progress = [e["data"]["progress"] for e in events if e["type"] == "multigpu.job_progress"]
    assert any(0 < p < 1 for p in progress), progress
    assert progress[-1] == 1.0
    assert len(images_of(cluster, entry)) == 6
