"""Distributed job lifecycle on the master: plan -> dispatch -> follow -> fetch -> hand over.

``prepare`` runs inside ComfyUI's prompt hook (on the server's event loop, before the prompt
is validated); ``start`` runs once the master accepted the prompt; the Collector node, on
ComfyUI's execution thread, blocks in ``collect`` until no unit waits for a worker any more.
A job is planned as units by :func:`..engine.plan.plan_job`; the job's scheduler owns where each unit
stands, and the :class:`~..engine.runner.Runner` (shared with queue mode's forwards) carries out its
actions: when a worker fails, its unit is re-run on another worker or on the master with the
same seed and position. Every unit run is bounded by the worker timeout, so nothing waits
forever, and the server's event loop is never blocked by a Collector. :class:`CollectorUnits`
is what a Collector job adds to the runner.

Where each part runs, in one place: this module (planning in the prompt hook, starting,
preflight) and :mod:`..engine.runner` (carrying out the scheduler's actions, running units) run on
the server loop; :mod:`.bridge` (``master_step``, ``collect``) on ComfyUI's execution
thread, reaching the loop only through ``call_soon_threadsafe``; :mod:`.job_book` (lookups,
reservations, the stash, workers' posted results, cancelling) on either, under the
orchestrator's lock. The same holds for :mod:`..queue_mode.balancer`: ``route`` and ``start`` on the
loop, ``wait`` (its stand-in nodes) on the execution thread.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..cluster.transport import UnitTransport
from .. import events
from ..graph import media
from ..config import GpuConfig, Settings, WorkerConfig
from ..errors import ConfigError, WorkerError, WorkerProtocolError, WorkflowError
from ..engine.plan import JobPlan, PlannedJob, plan_job, plan_prompt
from ..cluster.core import Cluster
from ..engine.scheduler import (
    MASTER,
    Action,
    JobScheduler,
    MasterFree,
    RunOnMaster,
    Unit,
    WorkerJoined,
)
from ..graph.workflow import (
    output_key,
    Prompt,
    distributed_collectors,
    mark_master_prompt,
    validate_prompt_shape,
)
from .bridge import CollectorBridge
from .job_book import JobBook
from .reports import report_progress
from ..engine.jobs import EXTRA_DATA_KEY, Job, JobKind, UnitRun
from ..graph.values import Describe, no_description
from ..worker_client import PromptResult
from ..cluster.preflight import MediaFile, check_media_paths

log = logging.getLogger("comfy_distributed")

CJ = TypeVar("CJ", bound=Job)
"""A Collector job, or one of its kind (a tile job)."""

INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 256 * 256
"""A unit's files up to both sizes are decoded on the server loop as they arrive (well under a millisecond); larger
ones on a worker thread, since handing them over costs more than decoding small ones."""


def decoded_inline(blobs: list[bytes]) -> bool:
    """Whether a unit's files are small enough to decode on the loop: few bytes and, by their PNG headers, few
    pixels (a tiny file may hold a huge image of one colour)."""
    from .codecs import frame_size

    if sum(map(len, blobs)) > INLINE_DECODE_BYTES:
        return False
    pixels = 0
    for blob in blobs:
        size = frame_size(blob)
        if size is None:
            return False
        pixels += size[0] * size[1]
    return pixels <= INLINE_DECODE_PIXELS

class Orchestrator(JobBook, CollectorBridge):
    """Owns the distributed jobs of one master, on its cluster (shared with the queue mode); the owner of jobs of
    the Collector's and the tiles' kinds (:class:`~..engine.owner.JobOwner`)."""

    def __init__(self, cluster: Cluster, input_dir: Callable[[], Path | None] = lambda: None,
                 loop: asyncio.AbstractEventLoop | None = None, describe: Describe = no_description) -> None:
        super().__init__(cluster, input_dir)
        self.loop = loop
        """The server loop: where a job begun on the execution thread (a tile job) is started."""
        self.describe = describe
        """Node class type -> its INPUT_TYPES(), to type Multi-GPU Values (the host's: ComfyUI's classes)."""
        self._reserved: dict[str, float] = {}
        self._stash: dict[tuple[str, str], Any] = {}
        self.units_kind: CollectorUnits[Job] = CollectorUnits(self)
        """What a Collector job adds to the runner (a tile job has its own kind)."""
        cluster.on_online(self._worker_online)

    # --- planning (server loop, inside the prompt hook) ----------------------------------

    def plan(self, prompt: Prompt, config: GpuConfig) -> JobPlan:
        """The plan a job for ``prompt`` runs with now (the weights learnt so far); WorkflowError if none."""
        return plan_job(prompt, config, self.cluster.speeds.weights(config))

    def prepare(self, prompt: Prompt, requested_job_id: Any = None) -> tuple[Prompt, Job | None]:
        """Plan a job for ``prompt`` if it has Collectors and there are enabled workers.

        Returns the prompt the master should run (Collectors marked with the job id) and the
        job, not yet started. A job that cannot be planned carries its error, which the
        Collector raises when it runs, so the user sees why instead of a silent single run.
        """
        self._sweep()
        try:
            collectors = distributed_collectors(validate_prompt_shape(prompt))
        except WorkflowError:
            return prompt, None  # not ours to judge: ComfyUI rejects a malformed prompt itself
        if not collectors:
            return prompt, None
        job_id = self._take_reservation(requested_job_id) or uuid.uuid4().hex
        try:
            config = self.cluster.config()
        except ConfigError as exc:
            return self._failed_job(prompt, collectors, job_id, f"Multi-GPU: {exc}")
        if not config.enabled_workers():
            return prompt, None  # exactly as without our nodes
        try:
            planned = plan_prompt(prompt, config, self.cluster.speeds.weights(config), self.describe, job_id)
            if planned.plan.why_static:
                log.warning("Multi-GPU: %s", planned.plan.why_static)
                self.cluster.notify(*events.notice(f"Multi-GPU: {planned.plan.why_static}", job_id))
            input_dir = self.input_dir()
            if input_dir is not None and planned.units:
                check_media_paths(planned.units[0].prompt, input_dir)
        except WorkflowError as exc:
            return self._failed_job(prompt, collectors, job_id, f"Multi-GPU: {exc}")
        job = self._job(planned, config, job_id)
        self.keep(job)
        if planned.plan.master_participates:
            self.cluster.models.ran(MASTER, prompt)
        return planned.marked, job

    def _job(self, planned: PlannedJob, config: GpuConfig, job_id: str) -> Job:
        """The job ``planned`` describes, with its scheduler: a unit per position past the master's."""
        plan = planned.plan
        units = {u.position: UnitRun(u.position, u.position, u.prompt, batch=u.batch, values=u.values)
                 for u in planned.units}
        first_runs = plan.first_runs()
        workers = {str(w.id): w for w in config.enabled_workers()}
        scheduler = JobScheduler(
            units=[Unit(p, u.seed_offset) for p, u in sorted(units.items())], workers=list(workers),
            first_runs=first_runs, max_retries=config.settings.max_retries,
            skip_unavailable=config.settings.skip_offline_workers, learns_unit_times=plan.mode == "dynamic",
            master_participates=plan.master_participates,
            names={key: w.display_name for key, w in workers.items()})
        return Job(job_id=job_id, kind=self.units_kind, collectors=plan.collectors, units=units, workers=workers,
                   settings=config.settings, scheduler=scheduler, mode=plan.mode,
                   kinds=planned.kinds, batch=plan.batch)

    def begin_soon(self, job: Job) -> None:
        """Keep ``job`` and start it on the server loop (from the execution thread: a tile job, as its Merge runs)."""
        assert self.loop is not None
        self.keep(job)
        self.loop.call_soon_threadsafe(self.start, job)

    def _failed_job(self, prompt: Prompt, collectors: list[str], job_id: str, error: str) -> tuple[Prompt, Job]:
        log.error("%s", error)
        job = Job(job_id=job_id, kind=self.units_kind, collectors=collectors, units={}, workers={}, settings=Settings(),
                  scheduler=JobScheduler([], []), error=error)
        job.settled.set()
        self.keep(job)
        return mark_master_prompt(prompt, collectors, job_id), job

    def launch(self, job: Job) -> None:
        """Prepare the workers, then dispatch the units (on the event loop that serves ComfyUI)."""
        assert job.loop is not None
        job.loop.create_task(self._begin(job), name=f"multigpu-job-{job.job_id}")

    async def _begin(self, job: Job) -> None:
        """Preflight and media sync on every worker that looks alive, then the scheduler's first actions."""
        unavailable = self.cluster.health.unavailable() if self.cluster.health is not None else {}
        unavailable = {w: why for w, why in unavailable.items() if w in job.workers}
        ready = [w for key, w in job.workers.items() if key not in unavailable]
        try:
            job.media = await self.found_media(job.units[min(job.units)].prompt)
            problems = await asyncio.gather(*(self._prepare_worker(job, worker, job.media) for worker in ready))
        except (WorkflowError, OSError) as exc:
            self._abort(job, f"Multi-GPU: {exc}")
            return
        except Exception as exc:  # a bug of ours: the job ends saying so, and its Collector does not wait for it
            log.exception("Multi-GPU: job %s could not begin", job.job_id)
            self._abort(job, f"Multi-GPU: internal error while the job began: {exc!r}")
            return
        if job.cancelled:  # cancelled during preflight: dispatch nothing
            return
        lacking = {str(w.id): problem for w, problem in zip(ready, problems) if problem}
        for worker_id, (reason, message) in lacking.items():
            self.runner.tell_failure(job, self._own_unit(job, worker_id), job.workers[worker_id], reason, message,
                                     rerun=not job.settings.skip_offline_workers or reason == "preflight")
        job.scheduler.unavailable = {**unavailable, **{w: message for w, (_, message) in lacking.items()}}
        self.runner.begin(job)
        if job.master.asked:  # the Collector got there first
            self.runner.handle(job, MasterFree())
        if unavailable:
            await self._recheck_absent(job, unavailable)

    # --- workers that come online during a job (server loop) -------------------------------

    async def _recheck_absent(self, job: Job, why: dict[str, str]) -> None:
        """Workers the health monitor saw offline may have started since its last answer: each is asked now
        and joins if it answers (one seen online during the preflight joins at once). Only those still
        absent then are reported as offline, so a worker that was merely starting raises no alarm."""
        if self.cluster.health is not None:
            for worker_id in why:
                if self.cluster.health.status(worker_id) in ("idle", "busy"):
                    self._worker_online(worker_id)
            await asyncio.gather(*self.cluster.health.check(set(why)), return_exceptions=True)
        if job.settings.skip_offline_workers or job.cancelled:
            return  # its units were skipped, and said so, when the job began
        for worker_id, reason in why.items():
            if worker_id in job.scheduler.absent and worker_id not in job.joining:
                self.runner.tell_failure(job, self._own_unit(job, worker_id), job.workers[worker_id], "offline",
                                         f"offline at dispatch ({reason})", rerun=True)

    def _worker_online(self, worker_id: str) -> None:
        """A worker came (back) online: every running job that started without it may now use it."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.begun and not j.settled.is_set() and not j.cancelled
                    and worker_id in j.scheduler.absent and worker_id not in j.joining]
        for job in jobs:
            job.joining.add(worker_id)
            asyncio.get_running_loop().create_task(self._join(job, job.workers[worker_id]),
                                                   name=f"multigpu-join-{job.job_id}-{worker_id}")
        if not jobs:
            self._warm(worker_id)

    def _warm(self, worker_id: str) -> None:
        """Ask a worker that came online for its node classes now, so that the next job's preflight finds
        them cached and its connection open (a first job after start-up otherwise waits for both)."""
        try:
            config = self.cluster.store.get()
        except ConfigError:
            return
        worker = next((w for w in config.workers if str(w.id) == worker_id and w.enabled), None)
        if worker is None:
            return
        client = self.cluster.client(worker, config.settings)

        async def warm() -> None:
            try:
                await self.cluster.object_info.get(worker, client.object_info)
            except (WorkerError, RuntimeError) as exc:  # the next job asks again and reports it
                log.debug("Multi-GPU: worker %s: early GET /object_info failed: %s", worker.display_name, exc)

        self.spawn(warm(), name=f"multigpu-warm-{worker_id}")

    async def _join(self, job: Job, worker: WorkerConfig) -> None:
        """Preflight ``worker`` for ``job``, then let the scheduler give it pending and re-run units."""
        try:
            if job.released:
                return  # the job settled meanwhile: nothing left to join
            problem = await self._prepare_worker(job, worker, job.media)
        except RuntimeError:  # the master shut down while the preflight ran (its sessions closed)
            return
        finally:
            job.joining.discard(str(worker.id))
        if problem is None and not job.settled.is_set():
            log.info("Multi-GPU: job %s: worker %s answers now and joins", job.job_id, worker.display_name)
            self.runner.handle(job, WorkerJoined(str(worker.id)))
        elif problem is not None:
            log.info("Multi-GPU: job %s: worker %s answers but cannot join: %s", job.job_id, worker.display_name,
                     problem[1])

    async def _prepare_worker(self, job: Job, worker: WorkerConfig,
                              media: list[MediaFile]) -> tuple[str, str] | None:
        """(reason, message) when ``worker`` cannot take part, else None; syncs the job's input files to it."""
        client = self.runner.client(job, worker)
        own = self._own_unit(job, str(worker.id)) or job.units[min(job.units)]  # its own Multi-GPU Values
        try:
            lacks = await self.ready_worker(job, client, own.prompt, media)
        except WorkerError as exc:
            return exc.reason, exc.message
        if lacks:
            said = "; ".join(lacks)
            given = [f"Multi-GPU Value {node_id} gives this worker {value!r}" for node_id, value in own.values.items()
                     if isinstance(value, str) and repr(value) in said]
            return "preflight", "lacks " + said + (f" ({'; '.join(given)})" if given else "")
        return None

    @staticmethod
    def _own_unit(job: Job, worker_id: str) -> UnitRun | None:
        if job.scheduler.first_runs is None:
            return None
        positions = [p for p in job.scheduler.first_runs.get(worker_id, []) if p in job.units]
        return job.units[positions[0]] if positions else None

    def _abort(self, job: Job, error: str) -> None:
        log.error("%s", error)
        job.error = error
        self.runner.settle(job)

    # --- what the runner and the job book ask of a Collector job (server loop) -------------

    def _progress(self, job: Job, force: bool = False) -> None:
        report_progress(self.cluster.notify, job, force)

    def give_master(self, job: Job, positions: tuple[int, ...]) -> None:
        """Hand units to the Collector waiting on the execution thread."""
        if not job.scheduler.master_participates:
            message = (f"Multi-GPU: no worker is left to run unit(s) {', '.join(map(str, positions))}: the master "
                       "(coordinator only) runs them itself")
            log.warning("%s", message)
            self.cluster.notify(*events.notice(message, job.job_id))
        job.master.give(positions)
        log.debug("Multi-GPU: job %s: the master runs unit(s) %s", job.job_id, list(positions))



class CollectorUnits(JobKind[CJ]):
    """A Collector job's units: each brings back its Collectors' files, and the master can run units too."""

    name = "collector"
    image_frames = True

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    def extra_data(self, job: CJ, unit: UnitRun, worker: WorkerConfig) -> dict | None:
        """What a worker running this extension needs to post its results back itself (job_complete)."""
        return {EXTRA_DATA_KEY: {"job_id": job.job_id, "worker_id": worker.id, "share_token": unit.token}}

    def wanted(self, job: CJ, unit: UnitRun) -> frozenset[str]:
        return frozenset(output_key(collector, kind) for collector, kinds in job.kinds.items() for kind in kinds)

    async def fetch(self, job: CJ, unit: UnitRun, client: UnitTransport, result: PromptResult,
                    deadline: float) -> dict[str, Any]:
        files_by_key: dict[str, Any] = {}
        for collector, kinds in job.kinds.items():
            for kind in kinds:
                key = output_key(collector, kind)
                files = result.files(key, media.BY_NAME[kind].history_key)
                if not files:
                    raise WorkerProtocolError(client.name, f"returned no {kind} for Multi-GPU Collector {collector}")
                expected = unit.batch or job.batch
                files_by_key[key] = await client.fetch_files(files, deadline, expected=expected)
                if expected and len(files) <= expected:  # more than the batch: left to the Collector's checks
                    # decoded now, on a worker thread, while other units still run: the Collector only joins
                    from .codecs import CODECS  # torch, once a unit's files are here

                    blobs = files_by_key[key]
                    early = CODECS[kind].early(blobs) if decoded_inline(blobs) else \
                        await asyncio.to_thread(CODECS[kind].early, blobs)
                    if early is not None:
                        unit.decoded[key] = early
        return files_by_key

    def unit_done(self, job: CJ, unit: UnitRun, worker: WorkerConfig, seconds: float) -> None:
        self.orchestrator.cluster.speeds.learn(str(worker.id), float(unit.batch or job.batch or 1), seconds)

    def unit_images(self, job: CJ, unit: UnitRun) -> int:
        return unit.batch or job.batch or 1

    def carry_out(self, job: CJ, action: Action) -> None:
        if isinstance(action, RunOnMaster):
            self.orchestrator.give_master(job, action.positions)

    def changed(self, job: CJ, force: bool) -> None:
        self.orchestrator._progress(job, force)

    def settled(self, job: CJ) -> None:
        """The waiting Collector wakes; a cancelled job reports its outcome now, one that settled on its own does
        when its Collectors claim it."""
        job.master.wake()
        if job.cancelled:
            self.orchestrator._finish(job)
