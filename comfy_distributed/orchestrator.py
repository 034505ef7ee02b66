"""Distributed job lifecycle on the master: plan -> dispatch -> follow -> fetch -> hand over.

``prepare`` runs inside ComfyUI's prompt hook (on the server's event loop, before the prompt
is validated); ``start`` runs once the master accepted the prompt; the Collector node, on
ComfyUI's execution thread, blocks in ``collect`` until no unit waits for a worker any more.
A job is planned as units (see :mod:`scheduler`); when a worker fails, its unit is re-run
on another worker or on the master with the same seed and position. Every unit run is
bounded by the worker timeout, so nothing waits forever, and the server's event loop is
never blocked by a Collector.

Where each part runs, in one place: this module (planning in the prompt hook, starting,
carrying out the scheduler's actions, running units) runs on the server loop;
:mod:`.collector_bridge` (``master_step``, ``collect``) on ComfyUI's execution thread;
:mod:`.job_book` (lookups, reservations, the stash, workers' posted results, cancelling) on
either, under the orchestrator's lock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import aiohttp

from . import events, media
from .config import ConfigStore, GpuConfig, Settings, WorkerConfig
from .errors import ConfigError, WorkerError, WorkerProtocolError, WorkflowError
from .plan import literal_batch, scheduling_mode, unit_sizes, weighted_plan
from .speeds import Speeds
from .scheduler import (
    MASTER,
    Action,
    Dispatch,
    GiveUp,
    JobScheduler,
    Event as SchedulerEvent,
    MasterFree,
    MasterRan,
    RunOnMaster,
    Skip,
    Unit,
    UnitDone,
    UnitFailed,
)
from .workflow import (
    collector_links,
    output_key,
    Prompt,
    build_worker_prompt,
    distributed_collectors,
    mark_master_prompt,
    validate_prompt_shape,
)
from .collector_bridge import CollectorBridge
from .job_book import JobBook
from .jobs import EXTRA_DATA_KEY, PROGRESS_INTERVAL, Job, Notify, UnitRun, UnitState, FINISHED
from .worker_client import WorkerClient
from .worker_prep import (
    MediaFile,
    MediaUploads,
    ObjectInfoCache,
    check_media_paths,
    find_media,
    preflight_problems,
    with_media,
)

if TYPE_CHECKING:
    from .health import HealthMonitor

log = logging.getLogger("comfy_distributed")

def _log_notify(event: str, data: dict[str, Any]) -> None:
    log.debug("event %s %s", event, data)


class Orchestrator(JobBook, CollectorBridge):
    """Owns the distributed jobs of one master."""

    def __init__(self, store: ConfigStore, notify: Notify = _log_notify, health: "HealthMonitor | None" = None,
                 input_dir: Callable[[], Path | None] = lambda: None) -> None:
        self.store = store
        self.notify = notify
        self.health = health
        self.input_dir = input_dir
        """The master's input folder, whose files the workers receive when a prompt loads them."""
        self._object_info = ObjectInfoCache(lambda worker_id: self.health.epoch(worker_id) if self.health else 0)
        self._uploads = MediaUploads()
        self._jobs: dict[str, Job] = {}
        self._reserved: dict[str, float] = {}
        self._stash: dict[tuple[str, str], Any] = {}
        self.speeds = Speeds()
        self._lock = threading.Lock()

    # --- planning (server loop, inside the prompt hook) ----------------------------------

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
            config = self.store.get()
        except ConfigError as exc:
            return self._failed_job(prompt, collectors, job_id, f"Multi-GPU: {exc}")
        workers = config.enabled_workers()
        if not workers:
            return prompt, None  # exactly as without our nodes
        mode = self._mode(prompt, collectors, config, job_id)
        try:
            kinds = {c: list(collector_links(prompt, c)) for c in collectors}
            units, plan, master_batch = self._plan_units(prompt, collectors, config, mode)
            marked = mark_master_prompt(prompt, collectors, job_id, master_batch)
            input_dir = self.input_dir()
            if input_dir is not None:
                check_media_paths(units[min(units)].prompt, input_dir)
        except WorkflowError as exc:
            return self._failed_job(prompt, collectors, job_id, f"Multi-GPU: {exc}")
        job = Job(job_id, collectors, units, {str(w.id): w for w in workers}, config.settings, time.monotonic(),
                  mode=mode, plan=plan, kinds=kinds)
        try:
            job.batch = literal_batch(prompt, collectors)
        except WorkflowError:
            pass
        with self._lock:
            self._jobs[job_id] = job
        return marked, job

    def _plan_units(self, prompt: Prompt, collectors: list[str], config: GpuConfig,
                    mode: str) -> tuple[dict[int, UnitRun], dict[str, list[int]] | None, int | None]:
        """The worker units (position -> its run), who runs which first, and the master's own batch size."""
        workers = config.enabled_workers()
        if mode == "static":
            units = {k + 1: UnitRun(k + 1, k + 1, build_worker_prompt(prompt, collectors, k + 1))
                     for k in range(len(workers))}
            return units, {str(w.id): [k + 1] for k, w in enumerate(workers)}, None
        sizes = unit_sizes(literal_batch(prompt, collectors) * (1 + len(workers)), config.settings.unit_size)
        units = {p: UnitRun(p, p, build_worker_prompt(prompt, collectors, p, size), batch=size)
                 for p, size in enumerate(sizes) if p > 0}
        plan = None
        if mode == "weighted":  # participant k of the weighted plan -> its name (master or a worker id)
            names = [MASTER, *(str(w.id) for w in workers)]
            plan = {names[k]: [p for p in positions if p > 0]
                    for k, positions in weighted_plan(len(sizes), self.speeds.weights(config)).items()}
        return units, plan, sizes[0]

    def _mode(self, prompt: Prompt, collectors: list[str], config: GpuConfig, job_id: str) -> str:
        mode, why_not = scheduling_mode(prompt, collectors, config.settings)
        if why_not:
            log.warning("Multi-GPU: %s", why_not)
            self.notify(*events.notice(f"Multi-GPU: {why_not}", job_id))
        return mode

    def _failed_job(self, prompt: Prompt, collectors: list[str], job_id: str, error: str) -> tuple[Prompt, Job]:
        log.error("%s", error)
        job = Job(job_id, collectors, {}, {}, Settings(), time.monotonic(), error=error)
        job.settled.set()
        with self._lock:
            self._jobs[job_id] = job
        return mark_master_prompt(prompt, collectors, job_id), job

    def start(self, job: Job, prompt_id: str | None = None) -> None:
        """Prepare the workers and dispatch the units; must be called on the event loop that serves ComfyUI."""
        job.prompt_id = prompt_id
        if job.settled.is_set() or job.loop is not None:
            return
        job.loop = asyncio.get_running_loop()
        job.session = aiohttp.ClientSession()
        job.loop.create_task(self._begin(job), name=f"multigpu-job-{job.job_id}")

    async def _begin(self, job: Job) -> None:
        """Preflight and media sync on every worker that looks alive, then the scheduler's first actions."""
        unavailable = self.health.unavailable() if self.health is not None else {}
        unavailable = {w: why for w, why in unavailable.items() if w in job.workers}
        ready = [w for key, w in job.workers.items() if key not in unavailable]
        try:
            input_dir = self.input_dir()
            media = await asyncio.to_thread(find_media, job.units[min(job.units)].prompt, input_dir) \
                if input_dir is not None else []
            problems = await asyncio.gather(*(self._prepare_worker(job, worker, media) for worker in ready))
        except (WorkflowError, OSError) as exc:
            self._abort(job, f"Multi-GPU: {exc}")
            return
        if job.cancelled:  # cancelled during preflight: dispatch nothing
            return
        lacking = {str(w.id): problem for w, problem in zip(ready, problems) if problem}
        for worker_id, (reason, message) in lacking.items():
            self._tell_failure(job, self._own_unit(job, worker_id), job.workers[worker_id], reason, message,
                               rerun=not job.settings.skip_offline_workers or reason == "preflight")
        job.scheduler = JobScheduler(
            units=[Unit(p, u.seed_offset) for p, u in sorted(job.units.items())],
            workers=list(job.workers),
            plan=job.plan,
            unavailable={**unavailable, **{w: message for w, (_, message) in lacking.items()}},
            max_retries=job.settings.max_retries,
            skip_unavailable=job.settings.skip_offline_workers,
            learns_unit_times=job.mode == "dynamic",
        )
        if not job.settings.skip_offline_workers:
            for worker_id, why in unavailable.items():
                self._tell_failure(job, self._own_unit(job, worker_id), job.workers[worker_id], "offline",
                                   f"offline at dispatch ({why})", rerun=True)
        actions = job.scheduler.start()
        if job.master_asked:  # the Collector got there first
            actions += job.scheduler.handle(MasterFree())
        self._carry_out(job, actions)

    async def _prepare_worker(self, job: Job, worker: WorkerConfig,
                              media: list[MediaFile]) -> tuple[str, str] | None:
        """(reason, message) when ``worker`` cannot take part, else None; syncs the job's input files to it."""
        client = WorkerClient(worker, job.settings, job.session)
        try:
            info = await self._object_info.get(worker, client.object_info)
        except WorkerError as exc:
            return exc.reason, exc.message
        synced = {m.value for m in media}
        lacks = preflight_problems(job.units[min(job.units)].prompt, info, synced)
        if lacks:  # the cached answer may predate a model or node added since: ask once more
            try:
                info = await self._object_info.get(worker, client.object_info, fresh=True)
            except WorkerError as exc:
                return exc.reason, exc.message
            lacks = preflight_problems(job.units[min(job.units)].prompt, info, synced)
        if lacks:
            return "preflight", "lacks " + "; ".join(lacks)
        try:
            job.media_names[str(worker.id)] = await self._uploads.sync(
                media, lambda m: client.upload_input(m.path, m.name, m.subfolder))
        except WorkerError as exc:
            return exc.reason, f"the input files could not be uploaded: {exc.message}"
        return None

    @staticmethod
    def _own_unit(job: Job, worker_id: str) -> UnitRun | None:
        if job.plan is None:
            return None
        positions = [p for p in job.plan.get(worker_id, []) if p in job.units]
        return job.units[positions[0]] if positions else None

    def _abort(self, job: Job, error: str) -> None:
        log.error("%s", error)
        job.error = error
        job.settled.set()
        job.changed.set()

    def discard(self, job: Job) -> None:
        """The master refused the prompt: forget the job before any worker is asked."""
        with self._lock:
            self._jobs.pop(job.job_id, None)
        job.settled.set()

    # --- carrying out the scheduler's actions (server loop) ------------------------------

    def _handle(self, job: Job, event: SchedulerEvent) -> None:
        if job.scheduler is None or job.cancelled:
            return  # a MasterFree before the scheduler exists is replayed by _begin (master_asked)
        actions = job.scheduler.handle(event)
        if not isinstance(event, MasterRan):  # a measurement: it changes no unit, so there is nothing to report
            self._carry_out(job, actions)

    def _carry_out(self, job: Job, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                unit, worker = job.units[action.position], job.workers[action.worker]
                unit.state, unit.worker, unit.token = UnitState.RUNNING, worker, secrets.token_urlsafe(24)
                unit.progress = 0.0
                unit.started = time.monotonic()
                unit.task = asyncio.get_running_loop().create_task(self._run_unit(job, unit, worker))
            elif isinstance(action, RunOnMaster):
                for position in action.positions:
                    job.units[position].state = UnitState.MASTER
                with self._lock:
                    job.master_positions.extend(action.positions)
                    job.master_asked = False
                job.changed.set()
                log.debug("Multi-GPU: job %s: the master runs unit(s) %s", job.job_id, list(action.positions))
            elif isinstance(action, GiveUp):
                unit = job.units[action.position]
                unit.state = UnitState.GIVEN_UP
            elif isinstance(action, Skip):
                unit = job.units[action.position]
                unit.state, unit.worker = UnitState.SKIPPED, job.workers[action.worker]
                unit.causes.append(action.cause)
                self._tell_failure(job, unit, job.workers[action.worker], "offline",
                                   f"offline at dispatch; its images are left out (skip_offline_workers): "
                                   f"{action.cause.split(': ', 1)[-1]}", rerun=False)
        self._progress(job, force=True)
        if job.scheduler is not None and job.scheduler.settled():
            job.settled.set()
            job.changed.set()

    async def _run_unit(self, job: Job, unit: UnitRun, worker: WorkerConfig) -> None:
        client = WorkerClient(worker, job.settings, job.session)
        deadline = time.monotonic() + job.settings.worker_timeout
        extra_data = {EXTRA_DATA_KEY: {"job_id": job.job_id, "worker_id": worker.id, "share_token": unit.token}}

        def on_progress(value: float, maximum: float) -> None:
            unit.progress = max(0.0, min(1.0, value / maximum)) if maximum else 0.0
            self._progress(job)

        try:
            prompt = with_media(unit.prompt, job.media_names.get(str(worker.id), {}))
            result = await client.run_prompt(prompt, deadline, extra_data, on_progress=on_progress)
            images = {}
            for collector, kinds in job.kinds.items():
                for kind in kinds:
                    key = output_key(collector, kind)
                    files = result.files(key, media.BY_NAME[kind].history_key)
                    if not files:
                        raise WorkerProtocolError(worker.display_name,
                                                  f"returned no {kind} for Multi-GPU Collector {collector}")
                    images[key] = await client.fetch_files(files, deadline, expected=unit.batch or job.batch)
        except asyncio.CancelledError:
            if unit.state == UnitState.DONE:
                return  # the worker posted its results itself (job_complete)
            raise
        except WorkerError as exc:
            self._unit_failed(job, unit, worker, exc.reason, exc.message)
            return
        except Exception as exc:  # a bug of ours must not take the master down
            log.exception("Multi-GPU: unexpected error while running unit %s on %s", unit.position, worker.display_name)
            self._unit_failed(job, unit, worker, "internal_error", f"internal error: {exc!r}")
            return
        if unit.state == UnitState.RUNNING and unit.worker is worker:
            unit.images, unit.state, unit.progress = images, UnitState.DONE, 1.0
            took = time.monotonic() - unit.started
            self.speeds.learn(str(worker.id), float(unit.batch or job.batch or 1), took)
            self._handle(job, UnitDone(unit.position, str(worker.id), took))

    def _unit_failed(self, job: Job, unit: UnitRun, worker: WorkerConfig, reason: str, message: str) -> None:
        if unit.state != UnitState.RUNNING or unit.worker is not worker:
            return
        unit.causes.append(f"{worker.display_name}: {message}")
        unit.state = UnitState.PENDING
        scheduler = job.scheduler
        rerun = scheduler is not None and scheduler.attempts.get(unit.position, 0) <= scheduler.max_retries
        self._tell_failure(job, unit, worker, reason, message, rerun=rerun)
        if self.health is not None:
            self.health.poke()
        self._handle(job, UnitFailed(unit.position, str(worker.id), reason, message))

    def _tell_failure(self, job: Job, unit: UnitRun | None, worker: WorkerConfig, reason: str, message: str,
                      rerun: bool) -> None:
        then = "its unit is re-run elsewhere" if rerun else "no retry left for its unit"
        if reason == "offline":
            then = "its unit runs elsewhere" if rerun else "its unit is left out"
        log.warning("Multi-GPU: job %s: worker %s (id %s)%s: %s; %s", job.job_id, worker.display_name, worker.id,
                    f" failed unit {unit.position}" if unit else "", message, then)
        self.notify(*events.worker_failed(worker.id, worker.display_name, reason, message, rerun, job.job_id,
                                          unit.position if unit else None))

    def _progress(self, job: Job, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - job.last_progress < PROGRESS_INTERVAL:
            return
        job.last_progress = now
        units = job.unit_list()
        done = {u.position: 1.0 if u.state in FINISHED else u.progress for u in units}
        self.notify(*events.job_progress(job.job_id, round(sum(done.values()) / len(units), 4) if units else 1.0, [
            events.UnitProgress(position=u.position, state=u.state.value, worker=u.name if u.worker else None,
                                worker_id=u.worker.id if u.worker else None, progress=round(done[u.position], 4))
            for u in units]))

    def _finish(self, job: Job) -> None:
        """Report the job's outcome once, then release its connections (server loop)."""
        if job.ended:
            return
        job.ended = True
        units = job.unit_list()
        self.notify(*events.job_done(
            job.job_id, job.cancelled, sorted({u.name for u in units if u.state == UnitState.DONE}),
            [u.position for u in units if u.state == UnitState.MASTER],
            [events.MissingUnit(unit=u.position, worker=u.name, state=u.state.value, message=u.error)
             for u in units if u.state in (UnitState.GIVEN_UP, UnitState.SKIPPED)]))
        asyncio.get_running_loop().create_task(self._release(job))

    @staticmethod
    async def _release(job: Job) -> None:
        tasks = [u.task for u in job.units.values() if u.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)  # cancelled units clean up on their workers first
        if job.session is not None:
            await job.session.close()
            job.session = None

    def _cancel_tasks(self, job: Job) -> None:
        for unit in job.units.values():
            if unit.task is not None and not unit.task.done():
                unit.task.cancel()
        self._finish(job)





