"""The orchestrator in this process against stand-in workers in another: small enough for CI.

The master's side is simulated the way ComfyUI runs it: a thread sleeps the master's own
unit (its prompt running the nodes above the Collector), then blocks in
``Orchestrator.collect`` as the Collector does, sleeping the units the master is given.
Workers are ``tests.standin.StandinComfy`` servers in a child process (``bench.pool``), on
loopback; a slower GPU is a stand-in whose ``execution_delay_scale`` is 3 (speed 1/3).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import itertools
import pstats
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from comfy_distributed.config import ConfigStore, Settings, WorkerConfig
from comfy_distributed.media_codecs import decode_batch
from comfy_distributed.jobs import Job, UnitRun
from comfy_distributed.orchestrator import Orchestrator
from comfy_distributed.worker_client import WorkerClient

from .figures import Figure, Target, median, spread, table
from .pool import StandinPool
from .workload import (
    COLLECTOR, SEED_STEP, TOO_FAST, Workload, available_modes,
    config, plain_workflow, workflow, write_config,
)

SUITE = "standin"
SLOW_SCALE = 3.0
SCALE_WORKERS = 32
MB = 1e6
SETTINGS = Settings.model_validate({"worker_timeout": 120})


class BenchError(RuntimeError):
    """A job did not give what the workload asks for: its time would mean nothing."""


@dataclass(slots=True, frozen=True)
class Params:
    repeats: int
    equal_work: float
    """Seconds per image; 2 images per participant, so a static unit is 2 x this."""
    hetero_images: int
    hetero_work: float
    hetero_repeats: int
    overhead_jobs: int
    transfer_repeats: int
    scale_work: float
    scale_repeats: int


FULL = Params(repeats=3, equal_work=1.0, hetero_images=8, hetero_work=0.25, hetero_repeats=2,
              overhead_jobs=30, transfer_repeats=3, scale_work=2.0, scale_repeats=3)
QUICK = Params(repeats=1, equal_work=0.1, hetero_images=4, hetero_work=0.05, hetero_repeats=1,
               overhead_jobs=5, transfer_repeats=1, scale_work=0.25, scale_repeats=1)


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

    async def view(self: WorkerClient, output, timeout: float | None = None) -> bytes:
        started = time.perf_counter()
        data = await original(self, output, timeout=timeout)
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
        return Orchestrator(ConfigStore(write_config(path, config(ports, mode, workload))))

    async def job(self, orchestrator: Orchestrator, workload: Workload, mode: str, decode: bool = False) -> JobRun:
        """One job from planning to the Collector's result; a fresh seed so nothing is cached."""
        cpu_started, pool_started = time.process_time(), self.pool_cpu()
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
                      time.process_time() - cpu_started, self.pool_cpu() - pool_started)

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
        await self.job(orchestrator, Workload(workload.speeds, workload.images, 0.0, workload.unit_size,
                                              workload.width, workload.height), mode, decode)
        gc.collect()
        return [await self.job(orchestrator, workload, mode, decode) for _ in range(repeats)]


async def released(job: Job, timeout: float = 10.0) -> None:
    """Wait until the job closed its connections (so the next job starts from the same state)."""
    deadline = time.monotonic() + timeout
    while getattr(job, "session", None) is not None and time.monotonic() < deadline:
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


async def efficiency(bench: Bench, ports: list[int], params: Params, modes: list[str]) -> list[Figure]:
    """3 equal participants (master + 2 workers), 2 images each; ideal = one participant's work."""
    workload = Workload((1.0, 1.0, 1.0), images=2, work_per_image=params.equal_work)
    alone = await bench.alone(ports[0], workload)
    figures = []
    for mode in modes:
        runs = await bench.jobs(ports[:2], mode, workload, params.repeats)
        if why := mode_in_effect(runs, mode, workload):
            figures.append(Figure(SUITE, "efficiency, 3 equal", mode, float("nan"), "ratio", detail=why))
            continue
        wall = median(r.wall for r in runs)
        figures.append(Figure(
            SUITE, "efficiency, 3 equal", mode, workload.ideal / wall, "ratio", Target(">=", 0.95),
            f"ideal {workload.ideal:.2f} s / measured {wall:.3f} s (median of {len(runs)}: "
            f"{spread(r.wall for r in runs)}); units of {workload.delay(mode):.2f} s; "
            f"a {workload.delay('static'):.2f} s unit on a stand-in alone: {alone:.3f} s"))
    return figures


async def heterogeneous(bench: Bench, ports: list[int], params: Params, modes: list[str]) -> list[Figure]:
    """Speeds 1 : 1 : 1/3 (master, worker, slow worker); makespan / ideal, lower is better."""
    workload = Workload((1.0, 1.0, 1.0 / SLOW_SCALE), images=params.hetero_images,
                        work_per_image=params.hetero_work)
    figures = []
    for mode in modes:
        runs = await bench.jobs(ports, mode, workload, params.hetero_repeats)
        if why := mode_in_effect(runs, mode, workload):
            figures.append(Figure(SUITE, "heterogeneous 1:1:1/3", mode, float("nan"), "ratio", detail=why))
            continue
        wall = median(r.wall for r in runs)
        bound = workload.policy_makespan(mode) / workload.ideal
        target = Target("<=", 1.15) if mode == "dynamic" else None
        aware = workload.earliest_finish_makespan() / workload.ideal
        speed_aware = f"; units placed by earliest finish: {aware:.3f}" if mode != "static" else ""
        figures.append(Figure(
            SUITE, "heterogeneous 1:1:1/3", mode, wall / workload.ideal, "ratio", target,
            f"measured {wall:.3f} s ({spread(r.wall for r in runs)}) / ideal {workload.ideal:.3f} s; with zero "
            f"overhead this mode's plan gives {bound:.3f}{speed_aware}; {workload.total_images} images of "
            f"{workload.work_per_image:.2f} s"))
    return figures


async def overhead(bench: Bench, ports: list[int], params: Params) -> list[Figure]:
    """Zero work, tiny images (32x24, 1 per participant): the job's wall time is all overhead."""
    workload = Workload((1.0, 1.0, 1.0), images=1, work_per_image=0.0)
    runs = await bench.jobs(ports[:2], "static", workload, params.overhead_jobs)
    walls = sorted(r.wall * 1000 for r in runs)
    p90 = walls[min(len(walls) - 1, int(0.9 * len(walls)))]
    return [Figure(SUITE, "overhead per job, zero work", "static", median(walls), "ms", Target("<=", 50),
                   f"master + 2 workers; median of {len(walls)} jobs, p90 {p90:.1f} ms")]


async def transfer(bench: Bench, ports: list[int], params: Params) -> list[Figure]:
    """One worker returns 8 images of 1024x1024 (random pixels: PNG cannot shrink them)."""
    workload = Workload((1.0, 1.0), images=8, work_per_image=0.0, width=1024, height=1024)
    with timed_views() as views:
        runs = await bench.jobs(ports[:1], "static", workload, params.transfer_repeats, decode=True)
    per_job = len(views.sizes) // (len(runs) + 1)  # the warm-up job fetched too
    sizes, seconds = views.sizes[per_job:], views.seconds[per_job:]
    moved = sum(sizes) / len(runs)
    wall = median(r.wall for r in runs)
    decode = median(r.decode for r in runs)
    return [
        Figure(SUITE, "transfer 8x1024x1024, GET /view only", "static", sum(sizes) / sum(seconds) / MB, "MB/s",
               Target(">=", 100), f"{moved / MB:.1f} MB per job in {sum(seconds) / len(runs):.3f} s"),
        Figure(SUITE, "transfer 8x1024x1024, /view + master decode", "static",
               moved / (sum(seconds) / len(runs) + decode) / MB, "MB/s", None,
               f"moving the images and turning them into tensors on the master: /view "
               f"{sum(seconds) / len(runs):.3f} s + PNG decoding {decode:.3f} s"),
        Figure(SUITE, "transfer 8x1024x1024, end to end", "static", moved / wall / MB, "MB/s", None,
               f"job {wall:.3f} s: worker makes and PNG-encodes {wall - decode - sum(seconds) / len(runs):.3f} s "
               f"(its own work: a single ComfyUI saves its images too), /view {sum(seconds) / len(runs):.3f} s, "
               f"master decodes {decode:.3f} s"),
    ]


async def scale(bench: Bench, ports: list[int], params: Params, modes: list[str]) -> list[Figure]:
    """32 workers, each with its own unit, plus the master: efficiency and the master's CPU per job."""
    workload = Workload((1.0,) * (SCALE_WORKERS + 1), images=1, work_per_image=params.scale_work)
    figures = []
    for mode in modes:
        runs = await bench.jobs(ports[:SCALE_WORKERS], mode, workload, params.scale_repeats)
        cpu, pool_cpu = median(r.cpu for r in runs), median(r.pool_cpu for r in runs)
        if why := mode_in_effect(runs, mode, workload):
            figures.append(Figure(SUITE, "32 workers", mode, float("nan"), "ratio", detail=why))
            continue
        wall = median(r.wall for r in runs)
        figures += [
            Figure(SUITE, "32 workers, efficiency", mode, workload.ideal / wall, "ratio", Target(">=", 0.9),
                   f"ideal {workload.ideal:.2f} s / measured {wall:.3f} s (median of {len(runs)}: "
                   f"{spread(r.wall for r in runs)}), {(wall - workload.ideal) * 1000:.0f} ms over the work"),
            Figure(SUITE, "32 workers, master CPU per job", mode, cpu * 1000, "ms", None,
                   f"process_time of the master process, median per job ({SCALE_WORKERS + 1} units, "
                   f"{cpu * 1000 / SCALE_WORKERS:.1f} ms per worker unit); the 32 stand-ins used "
                   f"{pool_cpu * 1000:.0f} ms"),
        ]
    return figures


NOTES = [
    "Workers are tests/standin stand-ins in one child process on loopback; the master is this "
    "package's Orchestrator in the benchmark process, its own units slept on the Collector's thread.",
    "Efficiency = ideal makespan / measured; ideal = total work / total speed. Heterogeneous = "
    "measured / ideal (lower is better). 'With zero overhead this mode's plan gives' is the makespan of the "
    "mode's assignment of units if dispatch, events and transfer took no time, so the rest of the gap is "
    "overhead; 'units placed by earliest finish' is the same with each unit given to whoever would finish it "
    "first (a speed-aware plan), for comparison.",
    "Each unit is its own prompt: weighted and dynamic units have unit_size images and a delay of "
    "unit_size x work per image, so every mode does the same total work. Each scenario starts with one "
    "warm-up job with no work, then a garbage collection; only the jobs after it are measured.",
    "A stand-in sleeps a delay in 10 asyncio steps, each a little late under load, and writes a PNG: "
    "'a 2.00 s unit on a stand-in alone' (asked directly, without the orchestrator) bounds the efficiency "
    "a stand-in allows.",
    "Transfer: 1 MB = 10^6 bytes; random pixels (incompressible PNG, about 3.1 MB per image). "
    "'GET /view only' is bytes / time inside WorkerClient.view; 'end to end' is bytes / job time "
    "with zero work (worker generation and PNG encoding, transfer, master decoding).",
]


async def run_async(base_dir: Path, quick: bool, pool: StandinPool) -> list[Figure]:
    params = QUICK if quick else FULL
    modes = available_modes()
    bench = Bench(base_dir, pool.cpu_seconds)
    ports = pool.ports
    slow = ports[SCALE_WORKERS]
    figures = await efficiency(bench, ports, params, modes)
    figures += await heterogeneous(bench, [ports[0], slow], params, modes)
    figures += await overhead(bench, ports, params)
    figures += await transfer(bench, ports, params)
    figures += await scale(bench, ports, params, modes)
    return figures


def run(quick: bool = False) -> tuple[list[Figure], list[str]]:
    """Every stand-in benchmark; returns the figures and notes for RESULTS.md."""
    with tempfile.TemporaryDirectory(prefix="bench-standin-") as tmp:
        with StandinPool([1.0] * SCALE_WORKERS + [SLOW_SCALE], Path(tmp) / "pool") as pool:
            figures = asyncio.run(run_async(Path(tmp), quick, pool))
    return figures, [f"scheduling modes found: {', '.join(available_modes())}", *NOTES]


def profile_scale(quick: bool = True, top: int = 20) -> str:
    """cProfile of the master's event loop (where the orchestrator works) during the 32-worker benchmark.

    Two listings: functions by own time (the event loop's idle wait in epoll included, so the
    rest is what the master spends), and this package's functions by cumulative time.
    """
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        with StandinPool([1.0] * SCALE_WORKERS, Path(tmp) / "pool") as pool:
            async def main() -> list[Figure]:
                bench = Bench(Path(tmp), pool.cpu_seconds)
                profiler.enable()
                try:
                    return await scale(bench, pool.ports, QUICK if quick else FULL, ["static"])
                finally:
                    profiler.disable()

            figures = asyncio.run(main())
    out = io.StringIO()
    out.write(table(figures) + "\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"comfy_distributed", top)
    return out.getvalue()
