"""Distributed job lifecycle on the master: prepare -> dispatch -> follow -> fetch -> hand over.

``prepare`` runs inside ComfyUI's prompt hook (on the server's event loop, before the
prompt is validated); ``start`` runs once the master accepted the prompt; the Collector
node, on ComfyUI's execution thread, blocks in ``collect`` until every worker share has
ended. Each share is bounded by the worker timeout, so nothing waits forever, and the
server's event loop is never blocked by a Collector.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from .config import ConfigStore, GpuConfig, WorkerConfig
from .errors import ConfigError, DistributedError, JobError, WorkerError, WorkerProtocolError, WorkflowError
from .workflow import Prompt, build_worker_prompt, distributed_collectors, mark_master_prompt, validate_prompt_shape
from .worker_client import WorkerClient

log = logging.getLogger("comfy_distributed")

Notify = Callable[[str, dict[str, Any]], None]
"""Sends an event to the master's UI clients: (event name, JSON-able data)."""

COLLECT_POLL = 0.1
"""Seconds between interrupt checks while a Collector waits."""

UNCLAIMED_JOB_TTL = 3600.0
"""Seconds a finished job waits for its Collectors (the master may still be busy) before it is dropped."""


@dataclass(slots=True)
class Share:
    """What one worker does for a job: its copy of the prompt, then its images or its error."""

    worker: WorkerConfig
    index: int
    prompt: Prompt
    state: str = "pending"  # pending -> running -> done | failed
    reason: str | None = None
    error: str | None = None
    images: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.worker.display_name


@dataclass(slots=True)
class Job:
    job_id: str
    collectors: list[str]
    shares: list[Share]
    created: float
    deadline: float
    error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    claimed: set[str] = field(default_factory=set)
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task | None = None

    def failures(self) -> list[Share]:
        return [share for share in self.shares if share.state == "failed"]


@dataclass(slots=True)
class CollectorResult:
    """Images of the workers for one Collector, in worker order, and who failed."""

    images: list[tuple[Share, list[bytes]]]
    failures: list[Share]


def _log_notify(event: str, data: dict[str, Any]) -> None:
    log.debug("event %s %s", event, data)


class Orchestrator:
    """Owns the distributed jobs of one master."""

    def __init__(self, store: ConfigStore, notify: Notify = _log_notify) -> None:
        self.store = store
        self.notify = notify
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # --- on the server's event loop -------------------------------------------------

    def prepare(self, prompt: Prompt) -> tuple[Prompt, Job | None]:
        """Plan a job for ``prompt`` if it has Collectors and there are enabled workers.

        Returns the prompt the master should run (Collectors marked with the job id) and
        the job, not yet started. A job that cannot be planned carries its error, which the
        Collector raises when it runs, so the user sees why instead of a silent single run.
        """
        self._sweep()
        try:
            collectors = distributed_collectors(validate_prompt_shape(prompt))
        except WorkflowError:
            return prompt, None  # not ours to judge: ComfyUI rejects a malformed prompt itself
        if not collectors:
            return prompt, None
        now = time.monotonic()
        job_id = uuid.uuid4().hex
        try:
            config = self.store.get()
        except ConfigError as exc:
            return self._failed_job(prompt, collectors, job_id, f"Multi-GPU: {exc}")
        workers = config.enabled_workers()
        if not workers:
            return prompt, None  # exactly as without our nodes
        try:
            shares = [
                Share(worker, index, build_worker_prompt(prompt, collectors, index))
                for index, worker in enumerate(workers)
            ]
        except WorkflowError as exc:
            return self._failed_job(prompt, collectors, job_id, f"Multi-GPU: {exc}")
        job = Job(job_id, collectors, shares, now, now + config.settings.worker_timeout)
        with self._lock:
            self._jobs[job_id] = job
        return mark_master_prompt(prompt, collectors, job_id), job

    def _failed_job(self, prompt: Prompt, collectors: list[str], job_id: str, error: str) -> tuple[Prompt, Job]:
        log.error("%s", error)
        now = time.monotonic()
        job = Job(job_id, collectors, [], now, now, error=error)
        job.finished.set()
        with self._lock:
            self._jobs[job_id] = job
        return mark_master_prompt(prompt, collectors, job_id), job

    def start(self, job: Job) -> None:
        """Dispatch every share now; must be called on the event loop that serves ComfyUI."""
        if job.finished.is_set() or job.task is not None:
            return
        job.loop = asyncio.get_running_loop()
        config = self.store.get()
        job.task = job.loop.create_task(self._run(job, config), name=f"multigpu-job-{job.job_id}")

    def discard(self, job: Job) -> None:
        """The master refused the prompt: forget the job before any worker is asked."""
        with self._lock:
            self._jobs.pop(job.job_id, None)
        job.finished.set()

    async def _run(self, job: Job, config: GpuConfig) -> None:
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(*(self._run_share(job, share, config, session) for share in job.shares))
        finally:
            job.finished.set()
            self._report(job)

    async def _run_share(self, job: Job, share: Share, config: GpuConfig, session: aiohttp.ClientSession) -> None:
        share.state = "running"
        client = WorkerClient(share.worker, config.settings, session)
        try:
            result = await client.run_prompt(share.prompt, job.deadline)
            for collector in job.collectors:
                files = result.images(collector)
                if not files:
                    raise WorkerProtocolError(share.name, f"returned no images for Multi-GPU Collector {collector}")
                remaining = max(job.deadline - time.monotonic(), 0.001)
                share.images[collector] = [await client.view(file, timeout=remaining) for file in files]
            share.state = "done"
        except asyncio.CancelledError:
            self._fail(job, share, "cancelled", "the job was cancelled")
            raise
        except WorkerError as exc:
            self._fail(job, share, exc.reason, exc.message)
        except Exception as exc:  # a bug of ours must not take the master down
            log.exception("Multi-GPU: unexpected error while running worker %s", share.name)
            self._fail(job, share, "internal_error", f"internal error: {exc!r}")

    def _fail(self, job: Job, share: Share, reason: str, message: str) -> None:
        share.state, share.reason, share.error = "failed", reason, message
        share.images.clear()
        log.warning("Multi-GPU: worker %s (id %s) left out of job %s: %s", share.name, share.worker.id,
                    job.job_id, message)
        self.notify("multigpu.worker_failed", {
            "job_id": job.job_id, "worker_id": share.worker.id, "worker": share.name,
            "reason": reason, "message": f"Worker {share.name}: {message}",
        })

    def _report(self, job: Job) -> None:
        done = [share.name for share in job.shares if share.state == "done"]
        failed = [{"worker_id": s.worker.id, "worker": s.name, "reason": s.reason, "message": s.error}
                  for s in job.failures()]
        self.notify("multigpu.job_done", {"job_id": job.job_id, "workers_done": done, "workers_failed": failed})

    def _sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in [j for j, job in self._jobs.items() if now > job.deadline + UNCLAIMED_JOB_TTL]:
                job = self._jobs.pop(job_id)
                if job.task is not None and job.loop is not None and not job.task.done():
                    job.loop.call_soon_threadsafe(job.task.cancel)

    # --- on ComfyUI's execution thread ------------------------------------------------

    def collect(self, job_id: str, collector_id: str, interrupted: Callable[[], bool]) -> CollectorResult:
        """Block until the job's workers are done; return their images for ``collector_id``.

        ``interrupted`` is polled so that a user's Cancel on the master cancels the
        workers' shares at once instead of waiting for them.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"Multi-GPU job {job_id} is unknown: it expired or the master restarted; queue it again")
        if job.error:
            raise JobError(job.error)
        hard_deadline = job.deadline + 30.0  # shares end at job.deadline; this only guards against a bug
        while not job.finished.wait(COLLECT_POLL):
            if interrupted():
                self.cancel(job)
                raise JobError("Multi-GPU: interrupted while waiting for the workers")
            if time.monotonic() > hard_deadline:
                self.cancel(job)
                job.finished.wait(5.0)
                break
        with self._lock:
            job.claimed.add(collector_id)
            if job.claimed >= set(job.collectors):
                self._jobs.pop(job_id, None)
        images = [(share, share.images[collector_id]) for share in job.shares
                  if share.state == "done" and collector_id in share.images]
        failures = [share for share in job.shares if share.state != "done"]
        return CollectorResult(images, failures)

    def cancel(self, job: Job) -> None:
        """Cancel a running job from any thread; each share cleans up on its worker."""
        if job.task is not None and job.loop is not None and not job.task.done():
            job.loop.call_soon_threadsafe(job.task.cancel)

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)


__all__ = ["Orchestrator", "Job", "Share", "CollectorResult", "DistributedError"]
