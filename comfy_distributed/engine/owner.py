"""What every owner of jobs of a kind has, written once: the Collector's orchestrator and queue mode's balancer.

An owner keeps its jobs by id under one lock (the server loop and ComfyUI's execution thread both read them),
starts them on the loop with one :class:`~.runner.Runner` on the master's one cluster, forgets them when the
master refuses their prompt or every output claimed them, runs its background tasks until it closes, and makes a
worker ready for a job: its preflight against the prompt, then the master's input files uploaded there. On the
execution thread, the node that waits for a job (a Collector, a forwarded prompt's stand-in) checks the same two
things while it waits: the user's Cancel and the job's deadline (:meth:`JobOwner.still_waiting`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Collection, Coroutine, Generic, TypeVar

from ..cluster.core import Cluster
from ..cluster.preflight import MediaFile, find_media, lacks_of
from ..errors import JobError, WorkerError
from ..graph.workflow import Prompt
from .jobs import UnitJob
from .runner import Runner
from .scheduler import Event
from ..cluster.transport import UnitTransport

log = logging.getLogger("comfy_distributed")

J = TypeVar("J", bound=UnitJob)


class JobOwner(Generic[J]):
    """Jobs of one kind by id, their runner, and what starting, waiting for and ending one takes (see the module
    doc). A subclass says what its kind adds: how a job is begun once started (:meth:`launch`)."""

    def __init__(self, cluster: Cluster, input_dir: Callable[[], Path | None] = lambda: None) -> None:
        self.cluster = cluster
        """Everything the master's job owners share (config, health, node classes, speeds, sessions, previews)."""
        self.input_dir = input_dir
        """The master's input folder, whose files a worker receives when a prompt loads them."""
        self.runner: Runner[J] = Runner(cluster)
        self._lock = threading.Lock()
        self._jobs: dict[str, J] = {}
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        """Stop its background tasks (the master shuts down; the cluster closes the connections)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` in the background on the running loop until it ends or the owner closes (RuntimeError
        outside a running loop, ``work`` closed unrun)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            work.close()
            raise
        task = loop.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- jobs by id (any thread) ------------------------------------------------------------

    def keep(self, job: J) -> None:
        with self._lock:
            self._jobs[job.job_id] = job

    def job(self, job_id: str) -> J | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job: J) -> None:
        with self._lock:
            self._jobs.pop(job.job_id, None)

    def discard(self, job: J) -> None:
        """The master refused the prompt: forget the job before any worker is asked."""
        self.forget(job)
        job.settled.set()

    def claim(self, job: J, output: str, outputs: Collection[str]) -> bool:
        """``output`` (a Collector, a stand-in's node) took its part of ``job``; True once every one of ``outputs``
        did, and the job is forgotten then."""
        with self._lock:
            job.claimed.add(output)
            last = job.claimed >= set(outputs)
            if last:
                self._jobs.pop(job.job_id, None)
        return last

    # --- the server loop ----------------------------------------------------------------------

    def start(self, job: J, prompt_id: str | None = None) -> None:
        """The master accepted the job's prompt (as ``prompt_id``): begin the job; on the loop that serves ComfyUI."""
        job.prompt_id = prompt_id
        if job.settled.is_set() or job.loop is not None:
            return  # ended before it began (a job that could not be planned), or started already
        self.runner.open(job)
        self.cluster.metrics.job_started(job.kind.name)
        self.launch(job)

    def launch(self, job: J) -> None:
        """Carry out the job's first actions (a kind that prepares its workers first does that before)."""
        self.runner.begin(job)

    def _handle(self, job: J, event: Event) -> None:
        self.runner.handle(job, event)

    async def found_media(self, prompt: Prompt) -> list[MediaFile]:
        """The master's input files ``prompt`` loads (none outside ComfyUI), read off the loop."""
        input_dir = self.input_dir()
        return await asyncio.to_thread(find_media, prompt, input_dir) if input_dir is not None else []

    async def ready_worker(self, job: J, client: UnitTransport, prompt: Prompt, media: list[MediaFile]) -> list[str]:
        """What ``client``'s worker lacks to run ``prompt`` (its preflight); when nothing, ``media`` is uploaded
        there (each content once) and the names it got are kept for the job's prompts. A WorkerError when the
        worker cannot be asked or the upload fails (its message says which)."""
        synced = {m.value for m in media} | job.kind.synced(job)
        lacks = await lacks_of(self.cluster.object_info, client.worker, client.object_info, prompt, synced)
        if lacks:
            return lacks
        try:
            job.media_names[str(client.worker.id)] = await self.cluster.uploads.sync(
                media, lambda m: client.upload_input(m.path, m.name, m.subfolder))
        except WorkerError as exc:
            exc.message = f"the input files could not be uploaded: {exc.message}"
            raise
        return []

    # --- ComfyUI's execution thread -----------------------------------------------------------

    def cancel(self, job: J) -> None:
        """Stop every unit of ``job`` (any thread; :meth:`~.runner.Runner.cancel_soon`)."""
        self.runner.cancel_soon(job)

    def still_waiting(self, job: J, interrupted: Callable[[], bool], bound: float, who: str) -> None:
        """Checked by a node waiting for ``job``: a Cancel on the master cancels the job at once, and so does its
        deadline ``bound`` (every unit run has its own: this only guards against a bug); both raise for ``who``."""
        if interrupted():
            self.cancel(job)
            self.forget(job)
            raise JobError(f"{who}: interrupted while waiting for the workers")
        if time.monotonic() > bound:
            self.cancel(job)
            self.forget(job)
            raise JobError(f"{who}: the workers did not settle in time")
