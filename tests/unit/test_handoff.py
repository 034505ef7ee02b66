"""The hand-off of the master's units from the loop to the Collector on the execution thread: nothing given is
ever left out, whatever the order in which the two threads meet."""

from __future__ import annotations

import json

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.config import ConfigStore, Settings
from comfy_distributed.engine.handoff import MasterHandoff
from comfy_distributed.engine.jobs import Job, UnitRun
from comfy_distributed.engine.scheduler import JobScheduler, Unit


class RacingHandoff(MasterHandoff):
    """Its first take answers as the loop had given nothing yet, then the loop gives unit 5 and the job settles
    (the order the two threads met in when a benchmark lost an image)."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job, self.raced = job, False

    def take(self, have: set[int], may_ask: bool) -> tuple[list[int], bool]:
        answer = super().take(have, may_ask)
        if not self.raced:
            self.raced = True
            self.give((5,))  # on the loop: the scheduler's last RunOnMaster, then the job settles
            self.job.settled.set()
        return answer


def test_a_unit_given_as_the_job_settles_is_still_run_on_the_master(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": []}))
    orchestrator = Orchestrator(Cluster(ConfigStore(path)))
    job = Job(job_id="j", kind=orchestrator.units_kind, collectors=["3"], units={5: UnitRun(5, 5, {})}, workers={},
              settings=Settings(), scheduler=JobScheduler([Unit(5, 5)], []))
    job.master = RacingHandoff(job)
    orchestrator.keep(job)
    step = orchestrator.master_step("j", "3", set(), lambda: False)
    assert isinstance(step, list) and [unit.position for unit in step] == [5]
    assert job.master.raced
