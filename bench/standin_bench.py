"""The orchestrator in this process, timed against stand-in workers in another (``bench.pool``).

The master's side is simulated the way ComfyUI runs it: a thread sleeps the master's own unit
(its prompt running the nodes above the Collector), then blocks in ``Orchestrator.collect`` as
the Collector does, sleeping the units the master is given. A job is timed from planning to the
Collector's result; its CPU time is this process's (the master's) and the pool's, apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.config import ConfigStore, Settings, WorkerConfig
from comfy_distributed.engine.jobs import Job, UnitRun
from comfy_distributed.collector.codecs import decode_batch
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.worker_client import ComfyClient, OutputFile, WorkerClient

from .workload import COLLECTOR, SEED_STEP, TOO_FAST, Workload, config, plain_workflow, workflow, write_config

SETTINGS = Settings.model_validate({"worker_timeout": 120})


class BenchError(RuntimeError):
    """A job did not give what the workload asks for: its time would mean nothing."""


@dataclass(slots=True)
class JobRun:
    wall: float
    mode: str
    worker_units: int
    decode: float = 0.0
    """Seconds the master spent decoding worker PNGs (part of ``wall``)."""
    cpu: float = 0.0
    """CPU seconds of this process (the master) for the job, its clean-up included."""
    pool_cpu: float = 0.0
    """CPU seconds of the stand-in workers' process for the job."""
    loop_cpu: float = 0.0
    """CPU seconds of this process's event loop thread alone (where the master talks to its workers; the rest of
    ``cpu`` is the Collector's thread and the worker threads that decode the files)."""


@dataclass(slots=True)
class Views:
    """Bytes and seconds of every ``GET /view`` the orchestrator made (result transfer only)."""

    sizes: list[int]
    seconds: list[float]


@contextlib.contextmanager
def timed_views() -> Iterator[Views]:
    """Time ``WorkerClient.view`` where the orchestrator calls it; the measured code is unchanged."""
    record = Views([], [])
    original = WorkerClient.view

    async def view(self: ComfyClient, output: OutputFile, timeout: float | None = None,
                   limit: int | None = None) -> bytes:
        started = time.perf_counter()
        data = await original(self, output, timeout=timeout, limit=limit)
        record.seconds.append(time.perf_counter() - started)
        record.sizes.append(len(data))
        return data

    WorkerClient.view = view  # type: ignore[method-assign]
    try:
        yield record
    finally:
        WorkerClient.view = original  # type: ignore[method-assign]


def master_side(orchestrator: Orchestrator, job: Job, workload: Workload, mode: str,
                decode: bool) -> tuple[int, float]:
    """What the master's execution thread does; returns the images it holds and seconds spent decoding."""
    speed = workload.speeds[0]
    time.sleep(workload.delay(mode) / speed)
    made = workload.unit_images(mode)

    def run_unit(unit: UnitRun) -> None:
        nonlocal made
        images = unit.batch or workload.images
        made += images
        time.sleep(images * workload.work_per_image / speed)

    result = orchestrator.collect(job.job_id, COLLECTOR, lambda: False, run_unit)
    if result.failures:
        raise BenchError(f"units left out: {[u.error for u in result.failures]}")
    started = time.perf_counter()
    for _, blobs in result.images:
        made += len(decode_batch(blobs)) if decode else len(blobs)
    return made, time.perf_counter() - started if decode else 0.0


class Bench:
    """Orchestrators (one per scenario and mode) on this event loop, against the pool's stand-ins."""

    def __init__(self, base_dir: Path, pool_cpu: Callable[[], float] = lambda: float("nan")) -> None:
        self.base_dir = base_dir
        self.pool_cpu = pool_cpu
        self.seeds = itertools.count(random.randrange(1, 1 << 40) * SEED_STEP, SEED_STEP)
        self.scenarios = itertools.count()

    def orchestrator(self, ports: list[int], mode: str, workload: Workload) -> Orchestrator:
        path = self.base_dir / f"scenario-{next(self.scenarios)}" / "gpu_config.json"
        return Orchestrator(Cluster(ConfigStore(write_config(path, config(ports, mode, workload)))))

    async def job(self, orchestrator: Orchestrator, workload: Workload, mode: str, decode: bool = False) -> JobRun:
        """One job from planning to the Collector's result; a fresh seed so nothing is cached."""
        cpu_started, pool_started, loop_started = time.process_time(), self.pool_cpu(), time.thread_time()
        started = time.perf_counter()
        _, job = orchestrator.prepare(workflow(next(self.seeds), workload, mode))
        if job is None or job.error:
            raise BenchError(f"no distributed job: {job.error if job else 'no enabled worker'}")
        orchestrator.start(job)
        made, decoding = await asyncio.to_thread(master_side, orchestrator, job, workload, mode, decode)
        wall = time.perf_counter() - started
        await released(job)
        if made != workload.total_images:
            raise BenchError(f"{made} images, expected {workload.total_images}")
        if wall < TOO_FAST * workload.policy_makespan(mode):
            raise BenchError(f"{wall:.3f} s is less than the work itself: some was skipped (cached?)")
        return JobRun(wall, str(getattr(job, "mode", "static")), len(job.units), decoding,
                      time.process_time() - cpu_started, self.pool_cpu() - pool_started,
                      time.thread_time() - loop_started)

    async def alone(self, port: int, workload: Workload) -> float:
        """Seconds one stand-in takes for a static unit asked directly, without the orchestrator."""
        prompt = plain_workflow(next(self.seeds), workload, workload.delay("static"), "PreviewImage")
        async with WorkerClient(WorkerConfig.model_validate({"id": "alone", "port": port}), SETTINGS) as client:
            started = time.perf_counter()
            result = await client.run_prompt(prompt, time.monotonic() + 120)
            for output in result.images("4"):
                await client.view(output)
            return time.perf_counter() - started

    async def jobs(self, ports: list[int], mode: str, workload: Workload, repeats: int,
                   decode: bool = False) -> list[JobRun]:
        """``repeats`` jobs after one warm-up job with no work (first connections, first node calls).

        The garbage of earlier scenarios is collected first: a full collection of this process's
        heap (torch included) pauses the event loop for about 0.1 s, which would land in a random job.
        """
        orchestrator = self.orchestrator(ports, mode, workload)
        try:
            await self.job(orchestrator, workload.without_work(), mode, decode)
            gc.collect()
            return [await self.job(orchestrator, workload, mode, decode) for _ in range(repeats)]
        finally:
            await orchestrator.close()
            await orchestrator.cluster.close()


async def released(job: Job, timeout: float = 10.0) -> None:
    """Wait until the job closed its websockets (so the next job starts from the same state; the workers'
    HTTP sessions stay open between jobs, as on a running master)."""
    deadline = time.monotonic() + timeout
    while not job.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


def mode_in_effect(runs: list[JobRun], mode: str, workload: Workload) -> str | None:
    """Why the runs do not measure ``mode`` (None: they do)."""
    ran = {run.mode for run in runs}
    units = {run.worker_units for run in runs}
    if ran != {mode}:
        return f"the setting was accepted but the job ran as {sorted(ran)}"
    if units != {workload.worker_units(mode)}:
        return f"{sorted(units)} worker units, expected {workload.worker_units(mode)}"
    return None
