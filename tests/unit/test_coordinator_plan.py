"""A coordinator-only master in the plan and the scheduler: unit 0 becomes a worker unit, positions stay."""

from __future__ import annotations

import pytest

from comfy_distributed.config import GpuConfig
from comfy_distributed.engine.plan import plan_summary, plan_job
from comfy_distributed.engine.scheduler import MASTER, Dispatch, JobScheduler, MasterFree, RunOnMaster, Unit, UnitFailed
from comfy_distributed.graph.workflow import mark_master_prompt

PROMPT = {
    "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
    "2": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": 5}},
    "3": {"class_type": "MultiGPUCollector", "inputs": {"latent": ["1", 0]}},
    "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 1], "filename_prefix": "x"}},
}


def config(participates: bool = True, mode: str = "static") -> GpuConfig:
    return GpuConfig.model_validate({"master": {"participates": participates},
                                     "workers": [{"id": 1, "port": 9001}, {"id": 2, "port": 9002}],
                                     "settings": {"scheduling_mode": mode, "unit_size": 1}})


def with_role(role: str) -> dict:
    return {**PROMPT, "3": {**PROMPT["3"], "inputs": {**PROMPT["3"]["inputs"], "master_role": role}}}


def test_a_coordinator_master_gives_unit_0_to_the_workers():
    planned = plan_job(PROMPT, config(participates=False))
    assert not planned.master_participates
    assert planned.worker_units() == [(0, None), (1, None), (2, None)]
    assert planned.first_runs() == {"1": [1], "2": [2]}  # unit 0 goes to whoever is free first
    assert planned.home(0) == MASTER  # it keeps the master's seed offset and values
    assert plan_summary(PROMPT, planned)["master_participates"] is False


def test_weighted_units_are_shared_by_the_workers_alone():
    planned = plan_job(PROMPT, config(participates=False, mode="weighted"))
    assert sorted(planned.owners) == [0, 1, 2, 3, 4, 5] and MASTER not in planned.owners.values()
    assert [size for _, size in planned.worker_units()] == [1] * 6


@pytest.mark.parametrize("role, participates, expected", [
    ("coordinator only", True, False), ("participates", False, True), ("default", False, False),
    ("default", True, True),
])
def test_the_collectors_option_overrides_the_config(role, participates, expected):
    assert plan_job(with_role(role), config(participates=participates)).master_participates is expected


def test_the_masters_collector_loses_its_links_so_nothing_above_it_runs_there():
    marked = mark_master_prompt(PROMPT, ["3"], "job", coordinator=True)
    assert marked["3"]["inputs"] == {"multigpu_job_id": "job"} and PROMPT["3"]["inputs"] == {"latent": ["1", 0]}


def test_the_scheduler_gives_the_master_nothing_while_a_worker_can_run_it():
    scheduler = JobScheduler([Unit(0, 0), Unit(1, 1), Unit(2, 2)], ["1", "2"], first_runs={"1": [1], "2": [2]},
                             master_participates=False)
    assert scheduler.start() == [Dispatch(1, "1", 1), Dispatch(2, "2", 1)]
    assert scheduler.handle(MasterFree()) == []  # unit 0 waits for a worker
    assert scheduler.handle(UnitFailed(1, "1", 1, "http", "boom")) == []  # worker 1 is out; worker 2 is busy
    actions = scheduler.handle(UnitFailed(2, "2", 1, "http", "boom"))
    assert actions == [RunOnMaster((0,))]  # no worker is left: the master steps in
