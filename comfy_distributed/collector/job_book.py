"""The master's book of Collector jobs: reservations, the Collectors' stash, results posted by workers, cancelling.

A part of :class:`~.orchestrator.Orchestrator` on the owner's base (:class:`~..engine.owner.JobOwner`: jobs by id
under one lock). Its lock guards everything here, because both the server loop and ComfyUI's execution thread
call these methods.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

from ..cluster.view import UnitView, time_left
from ..errors import JobError, ResultRejected, UnknownJob
from ..engine.jobs import RESERVATION_TTL, UNCLAIMED_JOB_TTL, UNKNOWN_BATCH_IMAGES, Job, ShareLimits, UnitRun, UnitState
from ..engine.owner import JobOwner
from ..engine.scheduler import UnitDone

log = logging.getLogger("comfy_distributed")


class JobBook(JobOwner[Job]):
    """Job ids reserved by ``prepare_job``, and what the Collectors keep between steps (any thread)."""

    _reserved: dict[str, float]
    _stash: dict[tuple[str, str], Any]

    def reserve(self) -> str:
        """A job id for ``prepare_job``; a prompt queued with it in ``extra_data`` uses it."""
        job_id = uuid.uuid4().hex
        with self._lock:
            self._reserved[job_id] = time.monotonic() + RESERVATION_TTL
        return job_id

    def _take_reservation(self, job_id: Any) -> str | None:
        with self._lock:
            expires = self._reserved.pop(job_id, None) if isinstance(job_id, str) else None
        return job_id if expires is not None and expires > time.monotonic() else None

    def _share(self, job_id: str, worker_id: Any, token: str) -> tuple[Job, UnitRun]:
        """The running unit this (job, worker, share token) names; refused otherwise.

        Only the worker the unit was sent to knows its token, so nobody else can put images
        into a job; a unit that already ended takes nothing more, so a token read later from
        the worker's history is worth nothing.
        """
        job = self.job(job_id)
        if job is None or job.error:
            raise UnknownJob(f"no job {str(job_id)[:64]} is waiting for results")
        unit = next((u for u in job.units.values() if job.record(u.position).worker == str(worker_id)
                     and u.token and hmac.compare_digest(u.token.encode(), str(token).encode())), None)
        if unit is None:
            raise ResultRejected("worker_id and share_token do not match a unit of this job", status=403)
        state = job.state_of(unit.position)
        if state != UnitState.RUNNING:
            raise ResultRejected(f"unit {unit.position} of worker {worker_id} has already ended ({state})",
                                 status=409)
        if any(kinds != ["images"] for kinds in job.kinds.values()):
            raise ResultRejected("this job collects latents or audio: job_complete carries images only")
        return job, unit

    def check_share(self, job_id: str, worker_id: Any, token: str) -> ShareLimits:
        """What the named share may carry, checked before its body is read (see ``accept_results``)."""
        job, unit = self._share(job_id, worker_id, token)
        return ShareLimits(collectors=len(job.collectors), images=unit.batch or job.batch or UNKNOWN_BATCH_IMAGES)

    def accept_results(self, job_id: str, worker_id: Any, token: str, outputs: dict[str, list[bytes]]) -> None:
        """Results a worker posted itself; they complete its unit like pulled results."""
        job, unit = self._share(job_id, worker_id, token)
        limits = self.check_share(job_id, worker_id, token)
        if any(len(images) > limits.images for images in outputs.values()):
            raise ResultRejected(f"a Collector got more than the {limits.images} image(s) of unit {unit.position}")
        if set(outputs) != set(job.collectors):
            raise ResultRejected(f"outputs must have exactly the Collectors {job.collectors}, got {sorted(outputs)}")
        if any(not images for images in outputs.values()):
            raise ResultRejected("every Collector needs at least one image")
        unit.images = {collector: list(images) for collector, images in outputs.items()}
        unit.progress = 1.0
        self._handle(job, UnitDone(unit.position, str(worker_id), job.record(unit.position).attempt))
        if unit.task is not None and not unit.task.done():
            unit.task.cancel()  # the pulling task sees the unit done and stops quietly

    def stash(self, job_id: str, collector_id: str, parts: Any) -> None:
        """Keep a Collector's partial output until its re-run units, run on the master, join it."""
        with self._lock:
            self._stash[(job_id, collector_id)] = parts

    def take_stash(self, job_id: str, collector_id: str) -> Any:
        with self._lock:
            parts = self._stash.pop((job_id, collector_id), None)
        if parts is None:
            raise JobError(f"Multi-GPU job {job_id}: nothing to assemble for Collector {collector_id}")
        return parts

    def _drop_stash(self, job_id: str) -> None:
        """A job that ends (a re-run on the master failed, or was interrupted) frees the tensors it kept."""
        with self._lock:
            for key in [key for key in self._stash if key[0] == job_id]:
                del self._stash[key]

    def stashed(self) -> int:
        """How many Collector outputs are kept for re-runs (tests, leak checks)."""
        with self._lock:
            return len(self._stash)

    def cancel(self, job: Job) -> None:
        """Stop every unit of ``job`` (any thread): its waiting Collector wakes at once, its kept outputs are
        dropped, and the runner stops its units (:meth:`~..engine.runner.Runner.cancel_soon`)."""
        self.runner.cancel_soon(job)  # cancelled first: a Collector woken next must see it
        job.settled.set()
        job.master.wake()
        self._drop_stash(job.job_id)

    def cancel_prompts(self, prompt_ids: set[str], reason: str) -> int:
        """Cancel the jobs of these master prompts (deleted from the queue, interrupted, ended)."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.prompt_id in prompt_ids and not j.cancelled]
            for job in jobs:
                self._jobs.pop(job.job_id, None)
        for job in jobs:
            log.info("Multi-GPU: job %s cancelled: %s", job.job_id, reason)
            self.cancel(job)
        return len(jobs)

    def prompt_ids(self) -> set[str]:
        with self._lock:
            return {j.prompt_id for j in self._jobs.values() if j.prompt_id}

    def _sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in [j for j, expires in self._reserved.items() if expires < now]:
                del self._reserved[job_id]
            stale = [j for j in self._jobs.values()
                     if now > j.deadline() + UNCLAIMED_JOB_TTL]
            for job in stale:
                self._jobs.pop(job.job_id, None)
        for job in stale:
            self.cancel(job)

    def jobs_summary(self) -> list[dict[str, Any]]:
        """Jobs that are running or waiting for their Collectors, for the status endpoint."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [self._summary(job) for job in jobs]

    @staticmethod
    def _summary(job: Job) -> dict[str, Any]:
        """One job as ``GET /multigpu/status`` lists it (``schemas_out.JobSummary``): the panel shows it as it is."""
        overall, each = job.progress()
        shown = {u.position: job.shown_worker(u.position) for u in job.unit_list()}
        return {
            "job_id": job.job_id, "prompt_id": job.prompt_id, "settled": job.settled.is_set(), "error": job.error,
            "eta_seconds": job_time_left(job), "progress": overall,
            "units": [{"position": u.position, "seed_offset": u.seed_offset, "state": job.state_of(u.position).value,
                       "worker_id": shown[u.position][0], "worker": shown[u.position][1],
                       "progress": round(each[u.position], 4), "errors": list(job.record(u.position).causes)}
                      for u in job.unit_list()],
        }


def job_time_left(job: Job) -> float | None:
    """The job's time left, estimated from its own units (``cluster_view.time_left``)."""
    now = time.monotonic()
    views = []
    for unit in job.unit_list():
        record = job.record(unit.position)
        elapsed = now - record.started if record.state == UnitState.RUNNING and record.started else None
        views.append(UnitView(record.state.value, unit.progress, elapsed, record.seconds))
    return time_left(views)
