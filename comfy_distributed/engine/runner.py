"""Carries out a scheduler's actions for any kind of job: run units on workers, feed back what happened.

One :class:`Runner` serves every kind of job (a Collector's units, a prompt forwarded whole in queue
mode, and whatever comes next): it sends a unit's prompt to a worker, follows it to the end within
the worker timeout, has the job's :class:`~.jobs.JobKind` fetch what the unit brought back, and tells the
job's scheduler (:mod:`.scheduler`, the one owner of where each unit stands) that the unit finished
or failed; the scheduler decides what runs next and whether a failed unit is re-run. A kind says
only what differs: what a unit sends with its prompt, how its results are fetched, and what the
job does with the scheduler's other actions (run units on the master, say).

Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Generic, TypeVar

from .. import events
from ..cluster.core import Cluster
from ..cluster.preflight import with_media
from ..cluster.previews import PreviewSource
from ..config import WorkerConfig
from ..errors import WorkerError, WorkerFramesLost
from ..worker_client import Channel, WorkerClient
from ..worker_client.image_frames import offers_frames
from .jobs import UnitJob, UnitRun
from ..cluster.transport import UnitTransport
from .scheduler import Action, Dispatch, Event, MasterRan, Skip, UnitDone, UnitFailed, UnitState

log = logging.getLogger("comfy_distributed")

J = TypeVar("J", bound=UnitJob)


class Runner(Generic[J]):
    """Runs the units of jobs, each by its own kind (``job.kind``; see the module doc); one per job owner, all
    on one cluster: its sessions, previews, counters and loaded models are the cluster's."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.unreleased: dict[int, J] = {}
        """Jobs opened whose websockets are not closed yet (leak checks read it)."""

    def open(self, job: J) -> None:
        """Bind ``job`` to the running loop (before its first unit runs)."""
        job.loop = asyncio.get_running_loop()
        self.unreleased[id(job)] = job

    def client(self, job: J, worker: WorkerConfig) -> UnitTransport:
        """How a unit of ``job`` reaches ``worker`` (:mod:`.transport`): the direct client on the cluster's kept
        session, or for a slot of the shared pool the pool's transport (:meth:`..cluster.core.Cluster.client`)."""
        return self.cluster.client(worker, job.settings, job.job_id)

    def begin(self, job: J) -> None:
        """Start the job's scheduler and carry out its first actions."""
        job.begun = True
        self.carry_out(job, job.scheduler.start())

    def handle(self, job: J, event: Event) -> None:
        """Feed ``event`` to the job's scheduler and carry out what it answers."""
        if not job.begun or job.cancelled:
            return
        actions = job.scheduler.handle(event)
        if not isinstance(event, MasterRan):  # a measurement: it changes no unit, so there is nothing to report
            self.carry_out(job, actions)

    def carry_out(self, job: J, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(job, job.units[action.position], job.workers[action.worker], action.attempt)
            else:
                if isinstance(action, Skip):
                    self._skip(job, action)
                job.kind.carry_out(job, action)
        job.kind.changed(job, True)
        if job.scheduler.settled():
            self.settle(job)

    def settle(self, job: J) -> None:
        """No unit runs or waits any more (or the job ended early): wake the waiting node, free connections."""
        if job.kind.counts_its_end and not job.settled.is_set():
            states = [job.state_of(p) for p in job.units]
            self.cluster.metrics.job_ended(job.kind.name, "cancelled" if job.cancelled else
                                   "master" if UnitState.GIVEN_UP in states else "done")
        job.settled.set()
        job.kind.settled(job)
        if job.loop is not None and not job.released:
            job.released = True
            job.loop.create_task(self._release(job))

    def cancel_soon(self, job: J) -> None:
        """The one way to cancel a job, from any thread: it is cancelled at once (nothing more is dispatched or
        taken from it), and :meth:`cancel` stops its units on the server loop."""
        job.cancelled = True
        if job.loop is not None and not job.loop.is_closed():
            job.loop.call_soon_threadsafe(self.cancel, job)

    def cancel(self, job: J) -> None:
        """Stop every unit of ``job`` (server loop); each one removes and interrupts its prompt on its worker."""
        job.cancelled = True
        for unit in job.units.values():
            if unit.task is not None and not unit.task.done():
                unit.task.cancel()
        self.settle(job)

    def _skip(self, job: J, action: Skip) -> None:
        unit, worker = job.units[action.position], job.workers[action.worker]
        self.tell_failure(job, unit, worker, "offline", "offline at dispatch; its images are left out "
                          f"(skip_offline_workers): {action.reason}", rerun=False)

    def _dispatch(self, job: J, unit: UnitRun, worker: WorkerConfig, attempt: int) -> None:
        unit.token, unit.progress = secrets.token_urlsafe(24), 0.0
        unit.task = asyncio.get_running_loop().create_task(self._run_unit(job, unit, worker, attempt),
                                                           name=f"multigpu-{job.job_id}-unit-{unit.position}")

    async def _run_unit(self, job: J, unit: UnitRun, worker: WorkerConfig, attempt: int) -> None:
        began = time.monotonic()
        try:
            images = await self._run_on(job, unit, worker, attempt)
        except asyncio.CancelledError:
            if job.state_of(unit.position) == UnitState.DONE:
                return  # the worker posted its results itself (job_complete)
            raise
        except WorkerError as exc:
            if isinstance(exc, WorkerFramesLost) and str(worker.id) not in self.cluster.files_only:
                self.cluster.files_only.add(str(worker.id))
                log.warning("Multi-GPU: worker %s: its units' images come as files from now on (%s)",
                            worker.display_name, exc.message)
            self._unit_failed(job, unit, worker, attempt, exc.reason, exc.message)
            return
        except Exception as exc:  # a bug of ours must not take the master down
            log.exception("Multi-GPU: unexpected error while running unit %s on %s", unit.position, worker.display_name)
            self._unit_failed(job, unit, worker, attempt, "internal_error", f"internal error: {exc!r}")
            return
        if job.scheduler.is_current(unit.position, attempt):
            unit.images, unit.progress = images, 1.0
            took = time.monotonic() - began
            job.kind.unit_done(job, unit, worker, took)
            self.cluster.metrics.unit_done(str(worker.id), took, job.kind.unit_images(job, unit))
            self.handle(job, UnitDone(unit.position, str(worker.id), attempt, took))

    async def _run_on(self, job: J, unit: UnitRun, worker: WorkerConfig, attempt: int) -> dict[str, Any]:
        """The unit's prompt run on ``worker`` (its websocket shared with the job's other units there); its
        preview frames go to the UI while it runs, and the thumbnail goes when it ends there, however it ends."""
        deadline = time.monotonic() + job.settings.worker_timeout

        def on_progress(value: float, maximum: float) -> None:
            unit.progress = max(0.0, min(1.0, value / maximum)) if maximum else 0.0
            job.kind.changed(job, False)

        # the job id the UI knows (None for a forwarded prompt), as a failure names it
        source = PreviewSource(job.kind.failure_job_id(job), unit.position, worker.id, worker.display_name)
        client = self.client(job, worker)
        if job.kind.image_frames and isinstance(client, WorkerClient):
            client.frames_offered = str(worker.id) not in self.cluster.files_only \
                and offers_frames(self.cluster.object_info.peek(worker))
        try:
            prompt = with_media(await job.kind.unit_prompt(job, unit, client), job.media_names.get(str(worker.id), {}))
            self.cluster.models.ran(str(worker.id), prompt)  # it loads the prompt's checkpoint now (its preflight passed)
            result = await client.run_prompt(prompt, deadline, job.kind.extra_data(job, unit, worker),
                                             on_progress=on_progress, wanted=job.kind.wanted(job, unit),
                                             channel=job.channels.setdefault(str(worker.id), Channel()),
                                             previews=self.cluster.previews.sink(source),
                                             unit=(unit.position, attempt))
            return await job.kind.fetch(job, unit, client, result, deadline)
        finally:
            self.cluster.previews.end(source)

    def _unit_failed(self, job: J, unit: UnitRun, worker: WorkerConfig, attempt: int, reason: str,
                     message: str) -> None:
        if not job.scheduler.is_current(unit.position, attempt) or job.cancelled:
            return
        actions = job.scheduler.handle(UnitFailed(unit.position, str(worker.id), attempt, reason, message))
        rerun = job.kind.master_runs_given_up or job.scheduler.will_rerun(actions, unit.position)
        self.tell_failure(job, unit, worker, reason, message, rerun=rerun)
        if self.cluster.health is not None:
            self.cluster.health.poke()
        self.carry_out(job, actions)

    def tell_failure(self, job: J, unit: UnitRun | None, worker: WorkerConfig, reason: str, message: str,
                     rerun: bool) -> None:
        """Log and send ``multigpu.worker_failed``: which worker, why, and what becomes of its unit."""
        if rerun and unit is not None:
            self.cluster.metrics.rerun(reason)
        then = "its unit is re-run elsewhere" if rerun else "no retry left for its unit"
        if reason == "offline":
            then = "its unit runs elsewhere" if rerun else "its unit is left out"
        log.warning("Multi-GPU: job %s: worker %s (id %s)%s: %s; %s", job.job_id, worker.display_name, worker.id,
                    f" failed unit {unit.position}" if unit else "", message, then)
        self.cluster.notify(*events.worker_failed(worker.id, worker.display_name, reason, message, rerun,
                                          job.kind.failure_job_id(job), unit.position if unit else None))

    async def _release(self, job: J) -> None:
        """Close the job's websockets once its unit tasks ended (cancelled ones clean up on their workers
        first); closed even when this is cancelled (the loop shuts down), and never held up by a worker.
        The HTTP sessions stay: they are the workers', kept for the next job."""
        tasks = [u.task for u in job.units.values() if u.task is not None]
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            channels, job.channels = list(job.channels.values()), {}
            for channel in channels:
                await channel.close()
            await self.cluster.job_ended(job.job_id)
            job.closed = True
            self.unreleased.pop(id(job), None)
