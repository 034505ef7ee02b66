"""Real ComfyUI on loopback: a master with this extension and two workers, all ``--cpu``.

The instances start together (``bench.real_cluster``); jobs are queued and timed as a user's UI
does (``bench.real_jobs``). Work is DistributedTestImage's delay, slept, so it uses no CPU; what
costs CPU is what a user's cluster does besides the work: making, saving, moving and decoding
images, dispatch and events. So every ideal here adds what one instance must do anyway to give
the user the whole job's images with zero work (its floor), measured on the master alone.
A slower GPU is a worker started with ``DISTRIBUTED_TEST_DELAY_SCALE=3`` (tests/comfy_test_nodes).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from comfy_distributed.comfy.gc_freeze import GC_FREEZE_ENV
from tests.comfy_test_nodes import DELAY_SCALE_ENV

from . import real_queue, real_tiles
from .figures import Figure, Target, median, seconds_list
from .real_cluster import BenchCluster
from .real_jobs import BenchError, RealBench, RealRun, breakdown, fetch_files_made
from .workload import MIXED, SLOW_SCALE, Workload, available_modes

SUITE = "real"
MB = 1e6
WORKERS = ("w1", "w2")
FIRST_JOB = Workload((1.0, 1.0, 1.0), images=2, work_per_image=0.5, width=64, height=48)
"""The first job after start: 1 s of work per participant, small images (start-up, not transfer)."""
INTERACTIVE = Workload((1.0, 1.0, 1.0), images=2, work_per_image=1.0, width=512, height=512)
"""How a UI user works: 3 participants x batch 2 x 1 s per image at 512x512, static."""
PAUSE = 12.0
"""Seconds of idle before a job: longer than ComfyUI's 10 s between two garbage collections, so that every instance
collects right after its next prompt (as after any pause of a user at the UI)."""


@dataclass(slots=True, frozen=True)
class Params:
    repeats: int
    first_jobs: int
    """First jobs measured: one after the cluster's start, each other one after a restart of all instances."""
    overhead_jobs: int


FULL = Params(repeats=3, first_jobs=3, overhead_jobs=10)
QUICK = Params(repeats=1, first_jobs=1, overhead_jobs=3)


def first_job(bench: RealBench) -> RealRun:
    """The first job, queued the moment every instance answers (the config was written before they started)."""
    return bench.distributed(FIRST_JOB, "static", worker_failures_allowed=True)


def first_job_figure(runs: list[RealRun], startups: list[float]) -> Figure:
    work = FIRST_JOB.delay("static")
    failures = sorted({message[:160] for run in runs for message in run.failures})
    return Figure(
        SUITE, "first job right after start", "static", tuple(r.seconds for r in runs), "s",
        Target(work + 0.5, worst=work + 0.5), lower_is_better=True,
        detail=f"{work:.1f} s of work per participant, 64x48 images; per run, units the master took over "
               f"{[r.master_units for r in runs]} and workers' failures {[len(r.failures) for r in runs]}"
               f"{': ' + ' / '.join(failures) if failures else ''}; the instances started together and all answered "
               f"after {seconds_list(startups)}; {breakdown(runs)}")


def after_pauses(bench: RealBench, params: Params, workers_frozen: bool = True) -> list[Figure]:
    """The same job back to back and after an idle pause of :data:`PAUSE` s, alternating, on a warm cluster.

    ``workers_frozen`` False: the workers were started with :data:`GC_FREEZE_ENV` ``=0``, so they collect as a
    plain ComfyUI does (a worker without the extension)."""
    bench.use(WORKERS, "static", INTERACTIVE)
    bench.distributed(INTERACTIVE, "static")
    back, paused = [], []
    for _ in range(params.repeats):
        time.sleep(PAUSE)
        paused.append(bench.distributed(INTERACTIVE, "static"))
        back.append(bench.distributed(INTERACTIVE, "static"))
    work = INTERACTIVE.delay("static")
    workers = "" if workers_frozen else ", workers collecting as plain ComfyUI"
    collects = ("the workers' startup heaps frozen by the extension" if workers_frozen
                else f"the workers started with {GC_FREEZE_ENV}=0: a plain worker's full collection")
    return [
        Figure(SUITE, f"job after a 12 s pause, 512x512{workers}", "static", tuple(r.seconds for r in paused), "s",
               None, lower_is_better=True, detail=f"{work:.0f} s of work per participant; each after {PAUSE:.0f} s "
               f"idle (every instance collects its garbage after that prompt; {collects}); {breakdown(paused)}"),
        Figure(SUITE, f"job back to back, 512x512{workers}", "static", tuple(r.seconds for r in back), "s", None,
               lower_is_better=True, detail=f"the same job right after the paused one; {breakdown(back)}; "
               f"paused / back to back: {median(r.seconds for r in paused) / median(r.seconds for r in back):.3f}"),
    ]


def plain_workers_after_pauses(bench: RealBench, cluster: BenchCluster, params: Params) -> list[Figure]:
    """:func:`after_pauses` again, the workers restarted to collect as plain ComfyUI (at normal speed)."""
    cluster.restart(WORKERS, env={GC_FREEZE_ENV: "0", DELAY_SCALE_ENV: "1"})
    cluster.wait_online(WORKERS)
    return after_pauses(bench, params, workers_frozen=False)


@dataclass(slots=True)
class Measured:
    """Each mode's runs, and the floor measured between them."""

    floors: list[float]
    runs: dict[str, list[RealRun]]

    @property
    def floor(self) -> float:
        return median(self.floors)


def alternating(bench: RealBench, params: Params, modes: list[str], workload: Workload) -> Measured:
    """Per mode a warm-up job with no work, then ``repeats`` x (the floor on the master alone, the job).

    Floor = the master alone making and saving all the job's images with zero work. Taking it between
    the jobs, rather than before them, lets a change of load on the machine touch both alike.
    """
    bench.single(workload, workload.total_images, 0.0)
    measured = Measured([], {})
    for mode in modes:
        bench.use(WORKERS, mode, workload)
        bench.distributed(workload.without_work(), mode)
        runs = measured.runs[mode] = []
        for _ in range(params.repeats):
            measured.floors.append(bench.single(workload, workload.total_images, 0.0))
            runs.append(bench.distributed(workload, mode))
    return measured


def not_in_effect(name: str, mode: str, runs: list[RealRun], workload: Workload) -> Figure | None:
    """A figure without a value when the jobs did not run as ``mode`` plans them (None: they did)."""
    units = {r.worker_units for r in runs}
    if units == {workload.worker_units(mode)}:
        return None
    return Figure(SUITE, name, mode, (), "ratio", detail=f"{sorted(units)} worker units: the mode was not in effect")


def against_floor(bench: RealBench, params: Params, modes: list[str], workload: Workload, name: str,
                  target: Target | None) -> list[Figure]:
    """Efficiency = (work / 3 + floor) / measured, each run; with zero work it is one instance / distributed."""
    measured = alternating(bench, params, modes, workload)
    ideal = workload.ideal + measured.floor
    spread = max(measured.floors) / measured.floor
    return [not_in_effect(name, mode, runs, workload) or Figure(
        SUITE, name, mode, tuple(ideal / r.seconds for r in runs), "ratio", target,
        f"ideal {ideal:.2f} s = work / 3 {workload.ideal:.2f} s + floor {measured.floor:.2f} s (one instance "
        f"making and saving all {workload.total_images} images with zero work: {seconds_list(measured.floors)}, "
        f"its slowest {spread:.2f} x its median); "
        f"measured {seconds_list(r.seconds for r in runs)}; units of {workload.delay(mode):.1f} s; {breakdown(runs)}")
        for mode, runs in measured.runs.items()]


def guarded(name: str, measure: Callable[[], list[Figure]]) -> list[Figure]:
    """The benchmark's figures, or one without a value that says why a job failed (the others still run)."""
    try:
        return measure()
    except BenchError as exc:
        return [Figure(SUITE, name, "-", (), "ratio", detail=f"failed: {exc}")]


def sizes(bench: RealBench, params: Params, modes: list[str]) -> list[Figure]:
    """3 equal participants x batch 2 x 2 s of work per batch, at 512x512 and 1024x1024; then image-heavy."""
    figures = []
    for side, target in ((512, Target(0.97, worst=0.93)), (1024, None)):
        workload = Workload((1.0, 1.0, 1.0), images=2, work_per_image=1.0, width=side, height=side)
        name = f"efficiency {side}x{side}"
        figures += guarded(name, partial(against_floor, bench, params, modes, workload, name, target))
    heavy = Workload((1.0, 1.0, 1.0), images=4, work_per_image=0.0, width=1024, height=1024)
    name = "image-heavy 1024x1024, no work"
    return figures + guarded(name, partial(against_floor, bench, params, modes, heavy, name, Target(0.75)))


def mixed(bench: RealBench, cluster: BenchCluster, params: Params) -> list[Figure]:
    """Speeds 1 : 1 : 1/3 in dynamic mode: w2 restarted 3 x slower; measured / the best whole-unit assignment."""
    cluster.restart(("w2",), env={DELAY_SCALE_ENV: str(SLOW_SCALE)})
    bench.use(WORKERS, "dynamic", MIXED)
    cluster.wait_online(WORKERS)
    measured = alternating(bench, params, ["dynamic"], MIXED)
    runs = measured.runs["dynamic"]
    best, fluid = MIXED.best_whole_units() + measured.floor, MIXED.ideal + measured.floor
    return [not_in_effect("mixed speeds 1:1:1/3", "dynamic", runs, MIXED) or Figure(
        SUITE, "mixed speeds 1:1:1/3", "dynamic", tuple(r.seconds / best for r in runs), "ratio",
        Target(1.05, worst=1.2), lower_is_better=True,
        detail=f"measured {seconds_list(r.seconds for r in runs)} / best whole-unit assignment {best:.2f} s "
               f"({MIXED.best_whole_units():.2f} s + floor {measured.floor:.2f} s); against the fluid ideal "
               f"{fluid:.2f} s: {' '.join(f'{r.seconds / fluid:.3f}' for r in runs)}; "
               f"{MIXED.total_images} units of {MIXED.work_per_image:.1f} s; {breakdown(runs)}")]


def overhead(bench: RealBench, params: Params) -> list[Figure]:
    """Zero work, 1 image of 64x48 per instance; net = distributed - the same prompt on the master alone."""
    workload = Workload((1.0, 1.0, 1.0), images=1, work_per_image=0.0, width=64, height=48)
    bench.use(WORKERS, "static", workload)
    bench.distributed(workload, "static")
    jobs = [bench.distributed(workload, "static").seconds * 1000 for _ in range(params.overhead_jobs)]
    alone = median(bench.single(workload, 1, 0.0) * 1000 for _ in range(params.overhead_jobs))
    return [Figure(SUITE, "overhead per job, zero work", "static", tuple(job - alone for job in jobs), "ms",
                   Target(50), lower_is_better=True,
                   detail=f"master + 2 workers {median(jobs):.1f} ms (median) - the master alone {alone:.1f} ms")]


def transfer(bench: RealBench, params: Params) -> list[Figure]:
    """One worker, 8 images of 1024x1024 each side; output PreviewAny so the master encodes nothing."""
    workload = Workload((1.0, 1.0), images=8, work_per_image=0.0, width=1024, height=1024)
    bench.use(WORKERS[:1], "static", workload)
    bench.distributed(workload, "static", "PreviewAny")
    runs = [bench.distributed(workload, "static", "PreviewAny") for _ in range(params.repeats)]
    alone = median(bench.single(workload, 8, 0.0, "PreviewAny") for _ in range(params.repeats))
    moved, seconds = fetch_files_made(bench.cluster.instances["w1"].url, workload)
    return [
        Figure(SUITE, "transfer 8x1024x1024, GET /view only", "static", (moved / seconds / MB,), "MB/s", Target(100),
               f"{moved / MB:.1f} MB in {seconds:.3f} s (8 files the worker made as Preview Image, fetched as the "
               "master fetches a worker's files)"),
        Figure(SUITE, "transfer 8x1024x1024, end to end", "static",
               tuple(moved / max(r.seconds - alone, 1e-6) / MB for r in runs), "MB/s", None,
               f"jobs {seconds_list(r.seconds for r in runs)} - the master alone {alone:.3f} s (the images as "
               f"websocket frames where the worker has SaveImageWebsocket); {breakdown(runs)}"),
    ]


def comfyui_version() -> str:
    path = Path(os.environ.get("COMFYUI_PATH", "")) / "comfyui_version.py"
    try:
        return path.read_text().split("__version__ =", 1)[1].strip().strip("\"'")
    except (OSError, IndexError):
        return "unknown"


def measure(cluster: BenchCluster, params: Params, modes: list[str]) -> tuple[list[Figure], float]:
    """Every benchmark on a cluster not yet started; the first job first, the slowed worker last."""
    bench = RealBench(cluster)
    bench.use(WORKERS, "static", FIRST_JOB)
    startups = [cluster.start()]
    firsts = [first_job(bench)]
    headline = guarded("job after a pause", partial(after_pauses, bench, params))
    headline += sizes(bench, params, modes)
    others = guarded("overhead", partial(overhead, bench, params))
    others += guarded("transfer", partial(transfer, bench, params))
    others += guarded("queue mode", partial(real_queue.spread, bench, params.repeats))
    tiles = guarded("tiles: speed-up", partial(real_tiles.speed_up, bench, WORKERS, params.repeats))
    tiles += guarded("tiles: overhead", partial(real_tiles.overhead, bench, WORKERS, params.repeats))
    for _ in range(params.first_jobs - 1):
        bench.use(WORKERS, "static", FIRST_JOB)
        startups.append(cluster.restart())
        firsts.append(first_job(bench))
    headline += guarded("mixed speeds 1:1:1/3", partial(mixed, bench, cluster, params))
    tiles += guarded("tiles: mixed speeds", partial(real_tiles.mixed, bench, WORKERS, params.repeats))  # w2 slow
    headline += guarded("job after a pause, plain workers", partial(plain_workers_after_pauses, bench, cluster, params))
    return [first_job_figure(firsts, startups), *headline, *tiles, *others], startups[0]


def run(quick: bool = False) -> tuple[list[Figure], list[str]]:
    """Start the cluster, run every real benchmark, stop every process."""
    modes = available_modes()
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        with BenchCluster(Path(tmp), WORKERS) as cluster:
            figures, startup = measure(cluster, QUICK if quick else FULL, modes)
    return figures, notes(startup, modes)


def notes(startup: float, modes: list[str]) -> list[str]:
    return [
        f"ComfyUI {comfyui_version()} with --cpu: a master and 2 workers, each with this extension (passive on the "
        f"workers, as the README's install puts it on every instance) + tests/comfy_test_nodes, the workers with "
        f"ComfyUI's custom_nodes/websocket_image_save.py as a standard install loads it (a unit's images come as "
        f"websocket frames), on loopback, started together (all answered after {startup:.0f} s); "
        f"scheduling modes found: {', '.join(modes)}.",
        f"This machine has {os.cpu_count()} CPUs for 3 ComfyUI processes and the benchmark: the work is slept, but "
        "dispatch, events, PNG encoding and decoding of all instances compete for the cores.",
        "Measured = POST /prompt on the master (its websocket open, as a UI) until it reports the prompt finished.",
        "Floor = the master alone (plain ComfyUI graph: the test image node and SaveImage) making and saving all "
        "of the job's images with zero work, median of the runs after a warm-up: what one instance must do "
        "anyway to give the user those images. Efficiency = (total work / 3 + floor) / measured, per run; "
        "with zero work (image-heavy) that is one instance making every image / distributed.",
        "First job: gpu_config.json written, then the master and both workers started at the same time; the job "
        "is queued as soon as all three answer GET /system_stats. The first run follows the suite's start, each "
        "other one a restart of all three instances. Target: work per participant + 0.5 s, every run.",
        f"Mixed speeds: w2 restarted with {DELAY_SCALE_ENV}={SLOW_SCALE:g} (its delays last 3 x as "
        "long); ratio = measured / (best assignment of whole units with zero overhead + floor), lower is better; "
        "whole images cannot reach the fluid ideal (total work / total speed), which the detail gives too.",
        "Overhead = each distributed job - median of the same prompt on the master alone (both zero work).",
        f"After a pause: a warm cluster, the job idle for {PAUSE:.0f} s before it (ComfyUI collects its garbage right "
        "after a prompt when its last collection is over 10 s old: the first job and every job after a pause), then "
        "the same job back to back, alternating; at the end again with the workers restarted with "
        f"{GC_FREEZE_ENV}=0 (they collect as a plain ComfyUI worker does).",
        f"Tiles: a 1024x768 test image in {real_tiles.TILES} tiles of 256x256 (padding 16), each tile "
        f"{real_tiles.TILE_WORK:.0f} s of slept work in DistributedTestTileWork; speed-up = the master alone / master "
        "+ 2 workers (ideal 3); mixed speeds against the best assignment of whole tiles plus the master alone with "
        "zero work; overhead per tile = (a 2048x2048 image in four 1024x1024 tiles, zero work - the same image "
        "made and saved without tiles) / 4.",
        f"Queue mode: {real_queue.PROMPTS} prompts (one 512x512 image after {real_queue.WORK:.0f} s of slept work, "
        "SaveImage) POSTed at once with queue_mode no_collector, timed until the master finished the last; ideal = "
        "the work split over the 3 participants + the master alone making and saving the same images with zero work "
        "(queue mode off).",
        "Transfer: random pixels (about 3.1 MB per PNG); 'end to end' = worker bytes / (distributed job - the "
        "same prompt on the master alone), so it counts the worker's PNG encoding and the master's decoding.",
    ]
