"""Distributed job lifecycle on the master: prepare -> dispatch -> follow -> fetch -> hand over.

``prepare`` runs inside ComfyUI's prompt hook (on the server's event loop, before the
prompt is validated); ``start`` runs once the master accepted the prompt; the Collector
node, on ComfyUI's execution thread, blocks in ``collect`` until every worker share has
ended. Each share is bounded by the worker timeout, so nothing waits forever, and the
server's event loop is never blocked by a Collector.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from .config import ConfigStore, GpuConfig, WorkerConfig
from .errors import (
    ConfigError,
    DistributedError,
    JobError,
    ResultRejected,
    UnknownJob,
    WorkerError,
    WorkerProtocolError,
    WorkflowError,
)
from .workflow import Prompt, build_worker_prompt, distributed_collectors, mark_master_prompt, validate_prompt_shape
from .worker_client import WorkerClient

log = logging.getLogger("comfy_distributed")

Notify = Callable[[str, dict[str, Any]], None]
"""Sends an event to the master's UI clients: (event name, JSON-able data)."""

COLLECT_POLL = 0.1
"""Seconds between interrupt checks while a Collector waits."""

UNCLAIMED_JOB_TTL = 3600.0
"""Seconds a finished job waits for its Collectors (the master may still be busy) before it is dropped."""

RESERVATION_TTL = 600.0
"""Seconds a job id from ``prepare_job`` stays valid for the prompt that is queued with it."""

EXTRA_DATA_KEY = "multigpu"
"""Key in a worker prompt's ``extra_data`` with what a worker running this extension needs
to post its results back (job id, worker id, the share's own token)."""


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
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    task: asyncio.Task | None = None

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
        self._reserved: dict[str, float] = {}
        self._lock = threading.Lock()

    # --- on the server's event loop -------------------------------------------------

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

    def prepare(self, prompt: Prompt, requested_job_id: Any = None) -> tuple[Prompt, Job | None]:
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
        job_id = self._take_reservation(requested_job_id) or uuid.uuid4().hex
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
                for share in job.shares:
                    share.task = asyncio.create_task(self._run_share(job, share, config, session))
                await asyncio.gather(*(share.task for share in job.shares if share.task is not None))
        finally:
            job.finished.set()
            self._report(job)

    async def _run_share(self, job: Job, share: Share, config: GpuConfig, session: aiohttp.ClientSession) -> None:
        share.state = "running"
        client = WorkerClient(share.worker, config.settings, session)
        extra_data = {EXTRA_DATA_KEY: {"job_id": job.job_id, "worker_id": share.worker.id, "share_token": share.token}}
        try:
            result = await client.run_prompt(share.prompt, job.deadline, extra_data)
            for collector in job.collectors:
                files = result.images(collector)
                if not files:
                    raise WorkerProtocolError(share.name, f"returned no images for Multi-GPU Collector {collector}")
                remaining = max(job.deadline - time.monotonic(), 0.001)
                share.images[collector] = [await client.view(file, timeout=remaining) for file in files]
            share.state = "done"
        except asyncio.CancelledError:
            if share.state == "done":
                return  # the worker posted its results itself (job_complete): nothing left to pull
            self._fail(job, share, "cancelled", "the job was cancelled")
            raise
        except WorkerError as exc:
            self._fail(job, share, exc.reason, exc.message)
        except Exception as exc:  # a bug of ours must not take the master down
            log.exception("Multi-GPU: unexpected error while running worker %s", share.name)
            self._fail(job, share, "internal_error", f"internal error: {exc!r}")

    def accept_results(self, job_id: str, worker_id: Any, token: str, outputs: dict[str, list[bytes]]) -> None:
        """Results a worker posted itself; they complete its share like pulled results.

        Only the worker the share was sent to knows its token, so nobody else can put
        images into a job; a share that already ended takes nothing more.
        """
        job = self.job(job_id)
        if job is None or job.error:
            raise UnknownJob(f"no job {job_id} is waiting for results")
        share = next((s for s in job.shares if str(s.worker.id) == str(worker_id)), None)
        if share is None or not hmac.compare_digest(share.token.encode(), str(token).encode()):
            raise ResultRejected("worker_id and share_token do not match a share of this job", status=403)
        if share.state in ("done", "failed"):
            raise ResultRejected(f"the share of worker {share.worker.id} has already ended ({share.state})",
                                 status=409)
        if set(outputs) != set(job.collectors):
            raise ResultRejected(f"outputs must have exactly the Collectors {job.collectors}, got {sorted(outputs)}")
        if any(not images for images in outputs.values()):
            raise ResultRejected("every Collector needs at least one image")
        share.images = {collector: list(images) for collector, images in outputs.items()}
        share.state = "done"
        if share.task is not None and not share.task.done():
            share.task.cancel()

    def jobs_summary(self) -> list[dict[str, Any]]:
        """Running and waiting jobs, for the status endpoint."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [
            {
                "job_id": job.job_id,
                "finished": job.finished.is_set(),
                "error": job.error,
                "shares": [
                    {"worker_id": s.worker.id, "worker": s.name, "state": s.state, "reason": s.reason,
                     "message": s.error}
                    for s in job.shares
                ],
            }
            for job in jobs
        ]

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
            for job_id in [j for j, expires in self._reserved.items() if expires < now]:
                del self._reserved[job_id]
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
