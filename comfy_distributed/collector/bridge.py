"""The Collector's side of a job, on ComfyUI's execution thread: wait, run units on the master, collect.

A part of :class:`~.orchestrator.Orchestrator` on the owner's base (:class:`~..engine.owner.JobOwner`). Nothing
here runs on the server loop: the loop is reached only through ``job.loop.call_soon_threadsafe``, the units the
master runs through the job's :class:`~..engine.handoff.MasterHandoff`, and shared state only under the lock.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from ..errors import JobError
from ..engine.jobs import COLLECT_POLL, CollectorResult, Job, UnitRun, UnitState
from ..engine.scheduler import MASTER, MasterFree, MasterRan
from ..engine.owner import JobOwner
from .reports import report_outcome
from ..graph.workflow import output_key


FINISH_WAIT = 5.0
"""Seconds the last Collector waits for its job's outcome to be sent (the loop is never that busy)."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class CollectorBridge(JobOwner[Job]):
    """What a Collector asks of its job while the master's prompt runs."""

    def master_step(self, job_id: str, collector_id: str, have: set[int],
                    interrupted: Callable[[], bool]) -> "list[UnitRun] | CollectorResult":
        """What the master does next for this Collector: run units (a list), or finish (the result).

        ``have`` are the positions this Collector already holds. While units wait for a
        participant, the master offers itself and takes one unit at a time. ``interrupted``
        is polled so that a Cancel on the master cancels the workers at once.
        """
        job = self.job(job_id)
        if job is None:
            raise JobError(f"Multi-GPU job {job_id} is unknown: it expired or the master restarted; queue it again")
        if job.error:
            raise JobError(job.error)
        bound = job.deadline()
        self._measure_master(job, have)
        while True:
            # settled is read BEFORE the hand-off: the loop gives the master its last units before the job settles,
            # so once settled is seen, a take sees every unit given; read after, a unit given between the take and
            # the read would be left out of the Collector's output (an image lost)
            settled = job.settled.is_set()
            positions, ask = job.master.take(have, not settled and job.loop is not None)
            if ask:
                assert job.loop is not None
                job.loop.call_soon_threadsafe(self._handle, job, MasterFree())
            if positions:
                return [job.units[p] for p in positions]
            if settled:
                break
            job.master.wait(COLLECT_POLL)
            self.still_waiting(job, interrupted, bound, "Multi-GPU")
        return self._settled_result(job, collector_id)

    def _settled_result(self, job: Job, collector_id: str) -> CollectorResult:
        """What the Collector gets once no unit waits any more; the job's error or lost units raise."""
        if job.error:
            self._claim(job, collector_id)
            raise JobError(job.error)
        if job.cancelled:
            raise JobError(f"Multi-GPU job {job.job_id} was cancelled")
        units = job.unit_list()
        states = {u.position: job.state_of(u.position) for u in units}
        given_up = [u for u in units if states[u.position] == UnitState.GIVEN_UP]
        self._claim(job, collector_id)
        if given_up:
            raise JobError("Multi-GPU: " + "; ".join(f"unit {u.position} (seed offset {u.seed_offset}) could not be "
                                                     f"run: {job.record(u.position).error}" for u in given_up))
        kinds = job.kinds.get(collector_id, ["images"])
        return CollectorResult(
            outputs=[(job.collected(u.position), {kind: u.images[output_key(collector_id, kind)] for kind in kinds})
                     for u in units if states[u.position] == UnitState.DONE
                     and all(output_key(collector_id, kind) in u.images for kind in kinds)],
            master_units=[u for u in units if states[u.position] == UnitState.MASTER],
            failures=[job.collected(u.position) for u in units if states[u.position] == UnitState.SKIPPED],
        )

    def _measure_master(self, job: Job, have: set[int]) -> None:
        """The master's last units ran (the Collector is back): their time feeds its speed and the scheduler."""
        ran = job.master.ran()
        if ran is None:
            return
        took, positions = ran
        units = [job.units[p] for p in positions if p in have and p in job.units]
        if not units:
            return
        if job.kind.learns_speeds:  # a tile's time says nothing of the master's time per image
            self.cluster.speeds.learn(MASTER, float(units[-1].batch or 0), took)
        if job.loop is not None:
            job.loop.call_soon_threadsafe(self._handle, job, MasterRan(took))

    def collect(self, job_id: str, collector_id: str, interrupted: Callable[[], bool],
                run_on_master: Callable[[UnitRun], None] = lambda unit: None) -> CollectorResult:
        """The whole Collector loop, with ``run_on_master`` doing the master's units (tests, benchmarks)."""
        have: set[int] = set()
        while True:
            step = self.master_step(job_id, collector_id, have, interrupted)
            if isinstance(step, CollectorResult):
                return step
            for unit in step:
                run_on_master(unit)
                have.add(unit.position)

    def _claim(self, job: Job, collector_id: str) -> None:
        if self.claim(job, collector_id, job.collectors) and job.loop is not None and not job.loop.is_closed():
            self._finish_before_returning(job)

    def _finish(self, job: Job) -> None:
        """Report the job's outcome once (server loop)."""
        report_outcome(self.cluster, job)

    def _finish_before_returning(self, job: Job) -> None:
        """Report the job's outcome on the loop, and wait (briefly) until it is sent: ``multigpu.job_done``
        then reaches the UI before ComfyUI says the prompt ended (its messages keep the order they were sent in)."""
        assert job.loop is not None
        if _running_loop() is job.loop:  # already on the loop (a test calling in): report now
            self._finish(job)
            return
        sent = threading.Event()

        def finish() -> None:
            try:
                self._finish(job)
            finally:
                sent.set()

        job.loop.call_soon_threadsafe(finish)
        sent.wait(FINISH_WAIT)
