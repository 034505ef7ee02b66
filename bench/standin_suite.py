"""The orchestrator in this process against stand-in workers in another: small enough for CI.

Workers are ``tests.standin.StandinComfy`` servers in a child process (``bench.pool``), on
loopback; a slower GPU is a stand-in whose ``execution_delay_scale`` is 3 (speed 1/3). The
master's side is simulated as ComfyUI runs it (``bench.standin_bench``). What this suite alone
can measure: many workers (64) and the master's own CPU time, apart from the workers'.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .figures import Figure, Target, median, seconds_list, table
from .pool import StandinPool
from .standin_bench import Bench, JobRun, mode_in_effect, timed_views
from .workload import MIXED, SLOW_SCALE, Workload, available_modes

SUITE = "standin"
SCALE_WORKERS = 64
MB = 1e6


@dataclass(slots=True, frozen=True)
class Params:
    repeats: int
    equal_work: float
    """Seconds per image; 2 images per participant, so a static unit is 2 x this."""
    mixed_work: float
    overhead_jobs: int
    scale_work: float


FULL = Params(repeats=3, equal_work=1.0, mixed_work=MIXED.work_per_image, overhead_jobs=20, scale_work=2.0)
QUICK = Params(repeats=1, equal_work=0.1, mixed_work=0.05, overhead_jobs=5, scale_work=0.25)


def not_in_effect(name: str, mode: str, runs: list[JobRun], workload: Workload, unit: str) -> Figure | None:
    """A figure without a value when the runs did not measure ``mode`` (None: they did)."""
    why = mode_in_effect(runs, mode, workload)
    return Figure(SUITE, name, mode, (), unit, detail=why) if why else None


async def efficiency(bench: Bench, ports: list[int], params: Params, modes: list[str]) -> list[Figure]:
    """3 equal participants (master + 2 workers), 2 tiny images each; ideal = one participant's work."""
    workload = Workload((1.0, 1.0, 1.0), images=2, work_per_image=params.equal_work)
    alone = await bench.alone(ports[0], workload)
    figures = []
    for mode in modes:
        runs = await bench.jobs(ports[:2], mode, workload, params.repeats)
        figures.append(not_in_effect("efficiency, 3 equal", mode, runs, workload, "ratio") or Figure(
            SUITE, "efficiency, 3 equal", mode, tuple(workload.ideal / r.wall for r in runs), "ratio",
            Target(0.95), f"ideal {workload.ideal:.2f} s / measured {seconds_list(r.wall for r in runs)}; units "
            f"of {workload.delay(mode):.2f} s; a {workload.delay('static'):.2f} s unit on a stand-in alone: "
            f"{alone:.3f} s"))
    return figures


async def mixed(bench: Bench, ports: list[int], params: Params, modes: list[str]) -> list[Figure]:
    """Speeds 1 : 1 : 1/3 (master, worker, slow worker); measured / the best whole-unit assignment."""
    workload = replace(MIXED, work_per_image=params.mixed_work)
    best, fluid = workload.best_whole_units(), workload.ideal
    figures = []
    for mode in modes:
        runs = await bench.jobs(ports, mode, workload, params.repeats)
        target = Target(1.05, worst=1.2) if mode == "dynamic" else None
        figures.append(not_in_effect("mixed speeds 1:1:1/3", mode, runs, workload, "ratio") or Figure(
            SUITE, "mixed speeds 1:1:1/3", mode, tuple(r.wall / best for r in runs), "ratio", target,
            lower_is_better=True,
            detail=f"measured {seconds_list(r.wall for r in runs)} / best whole-unit assignment {best:.2f} s; "
                   f"against the fluid ideal {fluid:.2f} s: {' '.join(f'{r.wall / fluid:.3f}' for r in runs)}; "
                   f"this mode's own plan with zero overhead gives {workload.policy_makespan(mode) / best:.3f}; "
                   f"{workload.total_images} images of {workload.work_per_image:.2f} s"))
    return figures


async def overhead(bench: Bench, ports: list[int], params: Params) -> list[Figure]:
    """Zero work, tiny images (32x24, 1 per participant): the job's wall time is all overhead."""
    workload = Workload((1.0, 1.0, 1.0), images=1, work_per_image=0.0)
    runs = await bench.jobs(ports[:2], "static", workload, params.overhead_jobs)
    return [Figure(SUITE, "overhead per job, zero work", "static", tuple(r.wall * 1000 for r in runs), "ms",
                   Target(50), lower_is_better=True, detail="master + 2 workers")]


async def transfer(bench: Bench, ports: list[int], params: Params) -> list[Figure]:
    """One worker returns 8 images of 1024x1024 (random pixels: PNG cannot shrink them)."""
    workload = Workload((1.0, 1.0), images=8, work_per_image=0.0, width=1024, height=1024)
    with timed_views() as views:
        runs = await bench.jobs(ports[:1], "static", workload, params.repeats, decode=True)
    per_job = len(views.sizes) // (len(runs) + 1)  # the warm-up job fetched too
    moved = [sum(views.sizes[k * per_job:(k + 1) * per_job]) for k in range(1, len(runs) + 1)]
    viewing = [sum(views.seconds[k * per_job:(k + 1) * per_job]) for k in range(1, len(runs) + 1)]
    jobs = list(zip(runs, moved, viewing))
    return [
        Figure(SUITE, "transfer 8x1024x1024, GET /view only", "static",
               tuple(size / view / MB for _, size, view in jobs), "MB/s", Target(100),
               f"{median(moved) / MB:.1f} MB per job in {seconds_list(viewing)}"),
        Figure(SUITE, "transfer 8x1024x1024, /view + master decode", "static",
               tuple(size / (view + run.decode) / MB for run, size, view in jobs), "MB/s", None,
               f"moving the images and turning them into tensors on the master: PNG decoding "
               f"{seconds_list(r.decode for r in runs)}"),
        Figure(SUITE, "transfer 8x1024x1024, end to end", "static",
               tuple(size / run.wall / MB for run, size, _ in jobs), "MB/s", None,
               f"jobs {seconds_list(r.wall for r in runs)}: the worker makes and PNG-encodes (a single ComfyUI "
               f"saves its images too), /view, the master decodes"),
    ]


async def scale(bench: Bench, ports: list[int], params: Params, modes: list[str]) -> list[Figure]:
    """64 workers, each with its own unit, plus the master: efficiency and the master's CPU per worker unit."""
    workload = Workload((1.0,) * (SCALE_WORKERS + 1), images=1, work_per_image=params.scale_work)
    name = f"{SCALE_WORKERS} workers"
    figures = []
    for mode in modes:
        runs = await bench.jobs(ports[:SCALE_WORKERS], mode, workload, params.repeats)
        if missing := not_in_effect(f"{name}, efficiency", mode, runs, workload, "ratio"):
            figures.append(missing)
            continue
        figures += [
            Figure(SUITE, f"{name}, efficiency", mode, tuple(workload.ideal / r.wall for r in runs), "ratio",
                   Target(0.9), f"ideal {workload.ideal:.2f} s / measured {seconds_list(r.wall for r in runs)}"),
            Figure(SUITE, f"{name}, master CPU per unit", mode,
                   tuple(r.cpu * 1000 / SCALE_WORKERS for r in runs), "ms", Target(1.0), lower_is_better=True,
                   detail=f"process_time of the master process per job / {SCALE_WORKERS} worker units: "
                          f"{' '.join(f'{r.cpu * 1000:.0f}' for r in runs)} ms per job; the stand-ins' process "
                          f"used {' '.join(f'{r.pool_cpu * 1000:.0f}' for r in runs)} ms"),
        ]
    return figures


NOTES = [
    "Workers are tests/standin stand-ins in one child process on loopback; the master is this "
    "package's Orchestrator in the benchmark process, its own units slept on the Collector's thread. "
    "A job is timed from planning to the Collector's result; the master saves nothing here (real suite: it does).",
    "Efficiency = ideal makespan / measured, per run; ideal = total work / total speed (tiny images).",
    "Mixed speeds: the slow stand-in has execution_delay_scale 3; ratio = measured / the best assignment of "
    "whole units with zero overhead (lower is better); whole images cannot reach the fluid ideal (total work / "
    "total speed), which the detail gives too, with the makespan of the mode's own plan with zero overhead.",
    "Each unit is its own prompt: weighted and dynamic units have unit_size images and a delay of "
    "unit_size x work per image, so every mode does the same total work. Each scenario starts with one "
    "warm-up job with no work, then a garbage collection; only the jobs after it are measured.",
    "A stand-in sleeps a delay in 10 asyncio steps, each a little late under load, and writes a PNG: "
    "'a 2.00 s unit on a stand-in alone' (asked directly, without the orchestrator) bounds the efficiency "
    "a stand-in allows.",
    f"{SCALE_WORKERS} workers: master CPU per unit = CPU time (time.process_time) of the benchmark process, "
    f"which holds only the master, per job / {SCALE_WORKERS} worker units; the stand-ins run in another process.",
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
    figures = await scale(bench, ports, params, modes)
    figures += await mixed(bench, [ports[0], slow], params, modes)
    figures += await efficiency(bench, ports, params, modes)
    figures += await overhead(bench, ports, params)
    figures += await transfer(bench, ports, params)
    return figures


def run(quick: bool = False) -> tuple[list[Figure], list[str]]:
    """Every stand-in benchmark; returns the figures and notes for RESULTS.md."""
    with tempfile.TemporaryDirectory(prefix="bench-standin-") as tmp:
        with StandinPool([1.0] * SCALE_WORKERS + [SLOW_SCALE], Path(tmp) / "pool") as pool:
            figures = asyncio.run(run_async(Path(tmp), quick, pool))
    return figures, [f"scheduling modes found: {', '.join(available_modes())}", *NOTES]


def profile_scale(quick: bool = True, top: int = 20) -> str:
    """cProfile of the master's event loop (where the orchestrator works) during the 64-worker benchmark.

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
