"""The orchestrator against stand-in ComfyUI workers (real aiohttp servers on port 0)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_distributed.cluster import core
from comfy_distributed.config import ConfigStore
from comfy_distributed.errors import JobError
from comfy_distributed.cluster.health import HealthMonitor
from comfy_distributed.engine.jobs import CollectorResult
from comfy_distributed.collector.orchestrator import Orchestrator
from tests.component.cluster import Cluster, assert_unit_images, by_position, expected_pixels, pixels, workflow
from tests.waiting import closed_port, free_port, until
from tests.standin import StandinComfy


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
async def two_workers(standin_cluster):
    """Two stand-in workers; at teardown the test fails if it leaked a task, a session or a socket."""
    return tuple((await standin_cluster(workers=2)).workers)


async def test_workers_run_plain_copies_with_offset_seeds_in_order(tmp_path, two_workers):
    w1, w2 = two_workers
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow(seed=42))
    assert result.failures == [] and result.master_units == []
    assert [unit.name for unit, _ in result.images] == ["GPU 1", "GPU 2"]
    for (unit, blobs), seed in zip(result.images, (43, 44)):
        assert [pixels(b).tolist() for b in blobs] == [p.tolist() for p in expected_pixels(seed, 2)]
        decoded = (unit.decoded["3"].numpy() * 255).round().astype(np.uint8)  # decoded as they arrived
        assert [d.tolist() for d in decoded] == [p.tolist() for p in expected_pixels(seed, 2)]
    for worker, seed in ((w1, 43), (w2, 44)):
        (body,) = worker.received
        prompt = body["prompt"]
        assert body["client_id"]
        assert {n["class_type"] for n in prompt.values()} == {"DistributedTestImage", "PreviewImage"}
        assert prompt["1"]["inputs"]["seed"] == seed


FAULTS = {
    "refused": lambda w2, port: None,
    "http_500": lambda w2, port: setattr(w2, "fail_routes", {"/prompt": 500}),
    "execution_error": lambda w2, port: setattr(w2, "execution_error", "CUDA out of memory (simulated)"),
    "frozen": lambda w2, port: setattr(w2, "gate", asyncio.Event()),
    "slow_view": lambda w2, port: setattr(w2, "view_delay", 30.0),
}
REASONS = {"refused": ("unreachable", "cannot connect"), "http_500": ("protocol_error", "HTTP 500"),
           "execution_error": ("execution_error", "CUDA out of memory (simulated)"),
           "frozen": ("timeout", "worker timeout"), "slow_view": ("timeout", "in time")}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_failed_unit_is_rerun_on_another_worker_with_the_same_seed(tmp_path, two_workers, fault):
    """The master is still busy with its own batch, so worker 1 takes worker 2's unit when free."""
    w1, w2 = two_workers
    FAULTS[fault](w2, w2.port)
    ports = [w1.port, closed_port() if fault == "refused" else w2.port]
    cluster = Cluster(tmp_path, ports, worker_timeout=2, connect_timeout=1)
    job = cluster.start(workflow(seed=42))
    await until(lambda: job.settled.is_set())
    result = await cluster.collect(job)
    assert result.master_units == [] and result.failures == []
    assert by_position(result)[2][0] == "GPU 1"
    assert_unit_images(result, 1, 43)
    assert_unit_images(result, 2, 44)  # worker 2's seed, run by worker 1
    assert [b["prompt"]["1"]["inputs"]["seed"] for b in w1.received] == [43, 44]
    reason, words = REASONS[fault]
    (event,) = [d for e, d in cluster.events if e == "multigpu.worker_failed"]
    assert event["reason"] == reason and event["worker"] == "GPU 2" and event["rerun"] is True
    assert words in event["message"]
    if fault == "frozen":
        await until(lambda: w2.interrupt_calls)  # the timed-out prompt is stopped on its worker
    if w2.gate is not None:
        w2.gate.set()


async def test_unit_goes_to_the_master_when_no_worker_is_free(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.gate = asyncio.Event()  # worker 1 stays busy
    w2.execution_error = "boom"
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    job = cluster.start(workflow())
    await until(lambda: job.state_of(2) == "pending")
    collecting = asyncio.ensure_future(cluster.collect(job))  # the master reaches its Collector
    await until(lambda: job.state_of(2) == "master")
    w1.gate.set()
    result = await collecting
    assert [u.position for u in result.master_units] == [2]
    assert [u.seed_offset for u in result.master_units] == [2]
    assert sorted(by_position(result)) == [1]
    assert len(w1.received) == 1


async def test_retries_are_bounded_and_the_error_names_the_unit(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.execution_error = "bad node on worker 1"
    w2.execution_error = "bad node on worker 2"
    cluster = Cluster(tmp_path, [w1.port, w2.port], max_retries=0)
    with pytest.raises(JobError) as caught:
        await cluster.run(workflow())
    message = str(caught.value)
    assert "unit 1" in message and "unit 2" in message
    assert "bad node on worker 1" in message and "bad node on worker 2" in message


async def test_offline_worker_at_dispatch_has_its_unit_run_elsewhere(tmp_path, two_workers):
    w1, _ = two_workers
    cluster = Cluster(tmp_path, [w1.port, closed_port()], connect_timeout=1)
    health = HealthMonitor(cluster.store)
    try:
        await health.beat()
        assert health.status(2) == "offline" and health.status(1) == "idle"
        cluster.orchestrator.cluster.health = health
        job = cluster.start(workflow(seed=42))
        await until(lambda: job.settled.is_set())
        result = await cluster.collect(job)
    finally:
        await health.close()
    assert sorted(by_position(result)) == [1, 2]
    assert_unit_images(result, 2, 44)
    assert len(w1.received) == 2  # worker 2 was never tried


async def test_offline_worker_is_skipped_when_the_setting_says_so(tmp_path, two_workers):
    w1, _ = two_workers
    cluster = Cluster(tmp_path, [w1.port, closed_port()], connect_timeout=1, skip_offline_workers=True)
    health = HealthMonitor(cluster.store)
    try:
        await health.beat()
        cluster.orchestrator.cluster.health = health
        result = await cluster.run(workflow())
    finally:
        await health.close()
    assert sorted(by_position(result)) == [1]
    assert [u.position for u in result.failures] == [2]
    (message,) = cluster.failure_messages()
    assert "GPU 2" in message and "skip_offline_workers" in message


async def test_websocket_drop_falls_back_to_history(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.drop_ws_after_start = True
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow(delay=0.3))
    assert result.failures == [] and result.master_units == []
    assert [len(blobs) for _, blobs in result.images] == [2, 2]
    assert cluster.failure_messages() == []


async def test_progress_is_aggregated_per_job(tmp_path, two_workers):
    w1, w2 = two_workers
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    job = cluster.start(workflow(delay=0.5))
    await until(lambda: job.settled.is_set())
    await cluster.collect(job)
    progress = [d for e, d in cluster.events if e == "multigpu.job_progress"]
    values = [d["progress"] for d in progress]
    assert any(0 < v < 1 for v in values), values  # intermediate progress from the workers' events
    assert values[-1] == 1.0 and values == sorted(values)
    assert {d["job_id"] for d in progress} == {job.job_id}


async def test_interrupt_on_master_cancels_workers(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.gate = asyncio.Event()
    w2.gate = asyncio.Event()
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    cancel = asyncio.Event()
    job = cluster.start(workflow())
    await until(lambda: w1.received and w2.received)
    collecting = asyncio.ensure_future(cluster.collect(job, interrupted=cancel.is_set))
    cancel.set()
    with pytest.raises(JobError, match="interrupted"):
        await collecting
    await until(lambda: w1.interrupt_calls and w2.interrupt_calls)
    w1.gate.set()
    w2.gate.set()


async def test_deleting_the_master_prompt_cancels_its_job(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.gate = asyncio.Event()
    w2.gate = asyncio.Event()
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    marked, job = cluster.orchestrator.prepare(workflow())
    cluster.orchestrator.start(job, prompt_id="master-prompt-1")
    await until(lambda: w1.received and w2.received)
    assert cluster.orchestrator.cancel_prompts({"master-prompt-1"}, "deleted from the master's queue") == 1
    await until(lambda: w1.interrupt_calls and w2.interrupt_calls)
    assert cluster.orchestrator.job(job.job_id) is None
    w1.gate.set()
    w2.gate.set()


async def test_no_enabled_workers_leaves_the_prompt_alone(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [{"id": 1, "port": 8189, "enabled": False}]}))
    orchestrator = Orchestrator(core.Cluster(ConfigStore(path)))
    prompt = workflow()
    marked, job = orchestrator.prepare(prompt)
    assert job is None and marked is prompt


async def test_bad_config_fails_the_collector_with_the_reason(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text('{"workers": [{"id": 1, "port": "eighty"}]}')
    orchestrator = Orchestrator(core.Cluster(ConfigStore(path)))
    marked, job = orchestrator.prepare(workflow())
    assert job is not None
    with pytest.raises(JobError, match=r"gpu_config.json: workers\[0\].port"):
        orchestrator.collect(job.job_id, "3", lambda: False)
    assert path.read_text() == '{"workers": [{"id": 1, "port": "eighty"}]}'


def master_unit_pixels(unit) -> list[np.ndarray]:
    """What the master computes for a unit it runs itself (the test node's images, 8-bit)."""
    seed = 42 + unit.seed_offset
    return expected_pixels(seed, unit.batch)


async def run_dynamic(tmp_path: Path, w1, w2, mode: str, **settings) -> tuple[list, CollectorResult]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(tmp_path, [w1.port, w2.port], scheduling_mode=mode, unit_size=1, **settings)
    prompt = workflow(seed=42, batch=2, delay=0.1)
    marked, job = cluster.orchestrator.prepare(prompt)
    assert marked["1"]["inputs"]["batch_size"] == 1  # the master's own unit is resized too
    cluster.orchestrator.start(job)
    ran_on_master: dict[int, list[np.ndarray]] = {}
    result = await asyncio.to_thread(
        cluster.orchestrator.collect, job.job_id, "3", lambda: False,
        lambda unit: ran_on_master.__setitem__(unit.position, master_unit_pixels(unit)))
    images = {0: expected_pixels(42, 1)}  # the master's unit 0: seed + 0, one image
    images.update(ran_on_master)
    for unit, blobs in result.images:
        images[unit.position] = [pixels(b) for b in blobs]
    return [image for position in sorted(images) for image in images[position]], result


@pytest.mark.parametrize("mode", ["dynamic", "weighted"])
async def test_unit_plans_give_the_same_images_whatever_the_speeds_and_failures(tmp_path, two_workers, mode):
    w1, w2 = two_workers
    reference, result = await run_dynamic(tmp_path / "equal", w1, w2, mode)
    assert len(reference) == 6  # batch 2 x 3 participants, in units of 1
    expected = [p for offset in range(6) for p in expected_pixels(42 + offset, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(reference, expected))

    w2.execution_delay_scale = 8.0  # worker 2 is now 8 times slower
    slow, result = await run_dynamic(tmp_path / "slow", w1, w2, mode)
    assert all(np.array_equal(a, b) for a, b in zip(slow, reference))

    w2.execution_delay_scale = 1.0
    w2.execution_error = "boom"  # worker 2 fails every unit it gets
    failing, result = await run_dynamic(tmp_path / "failing", w1, w2, mode)
    assert len(failing) == 6
    assert all(np.array_equal(a, b) for a, b in zip(failing, reference))


async def test_dynamic_mode_gives_more_units_to_the_faster_worker(tmp_path, two_workers):
    w1, w2 = two_workers
    w2.execution_delay_scale = 6.0
    cluster = Cluster(tmp_path, [w1.port, w2.port], scheduling_mode="dynamic", unit_size=1)
    prompt = workflow(seed=1, batch=4, delay=0.2)  # 12 images: unit 0 on the master, 11 shared
    marked, job = cluster.orchestrator.prepare(prompt)
    cluster.orchestrator.start(job)
    result = await asyncio.to_thread(cluster.orchestrator.collect, job.job_id, "3", lambda: False,
                                     lambda unit: time.sleep(0.2))
    ran = {}
    for unit, _ in result.images:
        ran[unit.name] = ran.get(unit.name, 0) + 1
    assert ran.get("GPU 1", 0) > ran.get("GPU 2", 0)
    assert sum(ran.values()) + len(result.master_units) == 11
    assert cluster.orchestrator.cluster.speeds["1"] > cluster.orchestrator.cluster.speeds["2"]  # learned, kept for the next job


async def test_a_unit_completes_when_its_files_are_reported_not_when_the_prompt_ends(tmp_path, two_workers):
    """A worker whose prompt ends late (ComfyUI's garbage collection after a prompt) does not hold up its unit:
    the files are fetched once the output node's ``executed`` event names them."""
    w1, w2 = two_workers
    w2.finish_delay = 5.0  # history entry and final event come 5 s after the images are written
    cluster = Cluster(tmp_path, [w1.port, w2.port], worker_timeout=30)
    job = cluster.start(workflow(seed=42))
    await until(lambda: job.settled.is_set())
    assert w2.received and not w2.finished_prompts(), "the unit completed before the worker's final event"
    result = await cluster.collect(job)
    assert_unit_images(result, 2, 44)
    await until(lambda: w2.finished_prompts(), timeout=10)  # let the stand-in finish before teardown


async def test_without_a_websocket_the_history_still_delivers_a_late_ending_prompt(tmp_path, two_workers):
    w1, w2 = two_workers
    w2.finish_delay = 0.5
    w2.drop_ws_after_start = True
    cluster = Cluster(tmp_path, [w1.port, w2.port], worker_timeout=30)
    result = await cluster.run(workflow(seed=42))
    assert_unit_images(result, 2, 44)
    assert w2.finished_prompts()


async def _late_worker_cluster(tmp_path, w1, port):
    """Worker 2 does not listen yet when the health monitor last asked: it is offline at dispatch."""
    cluster = Cluster(tmp_path, [w1.port, port], connect_timeout=1)
    health = HealthMonitor(cluster.store)
    await health.beat()
    assert health.status(2) == "offline"
    cluster.orchestrator.cluster.health = health
    return cluster, health


async def test_a_worker_that_starts_before_dispatch_is_asked_again_and_gets_its_unit(tmp_path, two_workers):
    """The start-up race: the last beat predates the worker's start; the job asks it afresh instead of
    leaving it out (no further beat runs here)."""
    w1, _ = two_workers
    w1.gate = asyncio.Event()  # worker 1 stays busy, so only worker 2 can take unit 2 before the master
    port = free_port()
    cluster, health = await _late_worker_cluster(tmp_path, w1, port)
    try:
        async with StandinComfy(tmp_path / "late", name="late", port=port) as late:
            job = cluster.start(workflow(seed=42))
            await until(lambda: late.received)
            w1.gate.set()
            result = await cluster.collect(job)
            assert by_position(result)[2][0] == "GPU 2" and result.master_units == []
            assert_unit_images(result, 2, 44)
            assert cluster.failure_messages() == []  # it was starting, not failing: no alarm for the UI
    finally:
        await health.close()


async def test_a_worker_that_comes_online_during_a_job_takes_its_pending_unit(tmp_path, two_workers):
    w1, _ = two_workers
    w1.gate = asyncio.Event()
    port = free_port()
    cluster, health = await _late_worker_cluster(tmp_path, w1, port)
    try:
        job = cluster.start(workflow(seed=42))
        await until(lambda: w1.received)  # dispatched without worker 2
        await until(lambda: not health._checks)  # the job's own check found nobody listening
        assert job.state_of(2) == "pending"
        async with StandinComfy(tmp_path / "late", name="late", port=port) as late:
            await health.beat()  # the next heartbeat sees it online
            await until(lambda: late.received)
            w1.gate.set()
            result = await cluster.collect(job)
            assert by_position(result)[2][0] == "GPU 2"
            assert_unit_images(result, 2, 44)
    finally:
        await health.close()


async def test_a_job_follows_all_its_units_on_a_worker_over_one_websocket(tmp_path, two_workers):
    """Each worker runs several units of a dynamic job; it is asked for one websocket per job, not one per unit."""
    w1, w2 = two_workers
    cluster = Cluster(tmp_path, [w1.port, w2.port], scheduling_mode="dynamic", unit_size=1)
    marked, job = cluster.orchestrator.prepare(workflow(seed=42, batch=4, delay=0.1))  # 12 units, 11 shared
    cluster.orchestrator.start(job)
    result = await asyncio.to_thread(cluster.orchestrator.collect, job.job_id, "3", lambda: False,
                                     lambda unit: time.sleep(0.5))  # a slow master leaves most to the workers
    assert len(result.images) + len(result.master_units) == 11
    assert len(w1.received) + len(w2.received) == len(result.images) > 2
    assert w1.request_counts["/ws"] == 1 and w2.request_counts["/ws"] == 1
    await until(lambda: job.closed)  # and it closes them when the job has settled


async def test_the_next_job_reuses_the_connections_of_the_last(tmp_path, two_workers):
    """A worker's HTTP session is kept across jobs. The job's websocket takes one kept connection (an
    upgraded connection leaves the pool), so the next job opens one connection, where a session of its
    own opened two (its websocket's and its requests')."""
    w1, w2 = two_workers
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    await cluster.run(workflow(seed=1))
    first = {w.name: set(w.http_client_ports) for w in (w1, w2)}
    assert all(first.values())
    result = await cluster.run(workflow(seed=2))
    assert result.failures == [] and len(result.images) == 2
    for worker in (w1, w2):
        assert len(worker.http_client_ports - first[worker.name]) <= 1, worker.name


async def test_a_worker_coming_online_is_asked_for_its_nodes_before_the_first_job(tmp_path, two_workers):
    """The first job after start-up finds each worker's /object_info cached and its connection open."""
    w1, w2 = two_workers
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    health = HealthMonitor(cluster.store)
    cluster.orchestrator.cluster.health = health
    try:
        await health.beat()  # both come online: each is asked at once, with no job running
        await until(lambda: w1.request_counts["/object_info"] == 1 and w2.request_counts["/object_info"] == 1)
        await until(lambda: not cluster.orchestrator._tasks)
        ports = {w.name: set(w.http_client_ports) for w in (w1, w2)}
        result = await cluster.run(workflow(seed=42))
        assert result.failures == [] and result.master_units == [] and len(result.images) == 2
        assert w1.request_counts["/object_info"] == 1 and w2.request_counts["/object_info"] == 1
        for worker in (w1, w2):  # the warm connection served the job: only one more (see the test above)
            assert len(worker.http_client_ports - ports[worker.name]) <= 1, worker.name
    finally:
        await health.close()
