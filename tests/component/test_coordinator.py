"""A coordinator-only master over stand-in workers: the workers make every unit, unit 0 (the master's seed and
place) included, in the usual order; the master steps in only when no worker is left."""

from __future__ import annotations

import asyncio

import pytest

from comfy_distributed.events import NOTICE
from comfy_distributed.graph.workflow import JOB_INPUT
from tests.component.cluster import assert_unit_images, by_position, workflow


def coordinator_workflow(mode: str = "static") -> dict:
    prompt = workflow(seed=42, batch=2)
    prompt["3"]["inputs"].update({"master_role": "coordinator only", "scheduling": mode})
    return prompt


async def collect(cluster, job, ran: list[int]):
    """The Collector's loop, recording the units the master was given."""
    return await asyncio.to_thread(cluster.orchestrator.collect, job.job_id, "3", lambda: False,
                                   lambda unit: ran.append(unit.position))


@pytest.mark.parametrize("mode", ["static", "weighted", "dynamic"])
async def test_the_workers_make_every_unit_in_the_usual_order(tmp_path, standin_cluster, mode):
    cluster = await standin_cluster(workers=2, scheduling_mode=mode, unit_size=2)
    marked, job = cluster.orchestrator.prepare(coordinator_workflow(mode))
    assert job is not None and marked["3"]["inputs"][JOB_INPUT] == job.job_id
    assert "images" not in marked["3"]["inputs"]  # ComfyUI neither checks nor runs what only feeds the Collector
    assert sorted(job.units) == [0, 1, 2]  # unit 0 is a worker unit too
    cluster.orchestrator.start(job)
    ran: list[int] = []
    result = await collect(cluster, job, ran)
    assert ran == [] and result.master_units == [] and result.failures == []
    assert sorted(by_position(result)) == [0, 1, 2]
    for position in (0, 1, 2):
        assert_unit_images(result, position, 42 + position)  # the seed of a run where the master takes part
    assert sum(len(w.received) for w in cluster.workers) == 3
    assert not [d for e, d in cluster.events if e == NOTICE and "coordinator" in d["message"]]


async def test_with_no_worker_left_the_master_runs_the_units_and_says_so(tmp_path, standin_cluster):
    cluster = await standin_cluster(workers=2)
    for worker in cluster.workers:
        worker.fail_routes = {"/prompt": 500}
    job = cluster.start(coordinator_workflow())
    ran: list[int] = []
    result = await collect(cluster, job, ran)
    assert sorted(ran) == [0, 1, 2] and sorted(u.position for u in result.master_units) == [0, 1, 2]
    notices = [d["message"] for e, d in cluster.events if e == NOTICE]
    assert any("no worker is left" in message and "coordinator only" in message for message in notices)
