"""Real ComfyUI on loopback: a master with this extension and two plain workers (``--cpu``).

Started with ``tests/real/cluster.Cluster`` (its own base directory per instance, every process
stopped at the end). Jobs are queued on the master with a plain ``POST /prompt`` and timed until
the master reports the prompt finished (``executing`` null, sent after its history entry is
written). Work is DistributedTestImage's delay, slept, so it uses no CPU. Heterogeneous speeds
are not measured here: plain workers all run the same prompt at the same speed, and a worker
cannot be slowed without changing it, so that benchmark is in the stand-in suite.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_distributed.errors import WorkerError, WorkerTimeout
from comfy_distributed.worker_client import ComfyClient, PromptResult

from .figures import Figure, Target, median, spread
from .workload import (
    COLLECTOR, SEED_STEP, TOO_FAST, Workload, available_modes,
    config, plain_workflow, workflow,
)

SUITE = "real"
MB = 1e6


class BenchError(RuntimeError):
    """A job failed or did not run as the benchmark asked: its time would mean nothing."""


@dataclass(slots=True, frozen=True)
class Params:
    repeats: int
    overhead_jobs: int
    transfer_repeats: int


FULL = Params(repeats=5, overhead_jobs=10, transfer_repeats=3)
QUICK = Params(repeats=1, overhead_jobs=3, transfer_repeats=1)


def unavailable() -> str | None:
    """Why the real suite cannot run here, or None."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return ("COMFYUI_PATH is not set (a ComfyUI checkout; COMFYUI_PYTHON names its interpreter, "
                "default its venv/.venv)")
    if not (Path(path) / "main.py").is_file():
        return f"COMFYUI_PATH={path} has no main.py"
    return None


@dataclass(slots=True, frozen=True)
class RealRun:
    """A distributed job's time, its worker units, and when the master reached, heard and left its Collector."""

    seconds: float
    worker_units: int
    collector: float
    results: float
    collector_done: float


def breakdown(runs: list[RealRun]) -> str:
    return (f"master at its Collector {median(r.collector for r in runs):.2f} s, workers' results in "
            f"{median(r.results for r in runs):.2f} s, Collector done {median(r.collector_done for r in runs):.2f} s")


class RealBench:
    """Jobs on a running cluster; every config change is a rewrite of the master's gpu_config.json."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.seeds = itertools.count(random.randrange(1, 1 << 40) * SEED_STEP, SEED_STEP)

    def use(self, workers: list[Any], mode: str, workload: Workload) -> None:
        data = config([w.port for w in workers], mode, workload)
        data.setdefault("master", {})["port"] = self.cluster.master.port
        self.cluster.config_path.write_text(json.dumps(data))

    def timed(self, prompt: dict) -> tuple[float, dict, list[dict]]:
        """Seconds from POST /prompt until the master has finished it; fails on any error.

        Events carry ``t``, their arrival in seconds after the POST, for breakdowns.
        """
        from tests.real.cluster import history_entry

        seconds, prompt_id, events = asyncio.run(follow(self.cluster.master.url, prompt))
        entry = history_entry(self.cluster.master.url, prompt_id)
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            raise BenchError(f"the prompt failed: {json.dumps(status.get('messages'))[-2000:]}")
        failures = [e["data"].get("message") for e in events if e["type"] == "multigpu.worker_failed"]
        if failures:
            raise BenchError(f"worker failures: {failures}")
        return seconds, entry, events

    def distributed(self, workload: Workload, mode: str, output: str = "SaveImage") -> RealRun:
        """One job, checked: every image there, no worker failure."""
        seconds, entry, events = self.timed(workflow(next(self.seeds), workload, mode, output))
        if output == "SaveImage":
            images = len(entry.get("outputs", {}).get("4", {}).get("images", []))
            if images != workload.total_images:
                raise BenchError(f"{images} images, expected {workload.total_images}")
        if seconds < TOO_FAST * workload.policy_makespan(mode):
            raise BenchError(f"{seconds:.3f} s is less than the work itself: some was skipped (cached?)")
        progress = [e["data"] for e in events if e["type"] == "multigpu.job_progress"]
        units = len(progress[-1]["units"]) if progress else -1
        return RealRun(seconds, units, at(events, "executing", COLLECTOR), at(events, "multigpu.job_done"),
                       at(events, "executing", "4"))

    def single(self, workload: Workload, delay: float, output: str = "SaveImage") -> float:
        """The same work as one participant's, on the master alone without our nodes."""
        return self.timed(plain_workflow(next(self.seeds), workload, delay, output))[0]


def efficiency(bench: RealBench, params: Params, modes: list[str]) -> list[Figure]:
    """3 equal instances, 2 images each at 1 s per image (static units of 2 s)."""
    cluster = bench.cluster
    workload = Workload((1.0, 1.0, 1.0), images=2, work_per_image=1.0, width=64, height=48)
    bench.single(workload, 0.0)
    alone = median(bench.single(workload, workload.delay("static")) for _ in range(params.repeats))
    figures = []
    for mode in modes:
        bench.use([cluster.w1, cluster.w2], mode, workload)
        bench.distributed(Workload(workload.speeds, workload.images, 0.0, width=64, height=48), mode)
        runs = [bench.distributed(workload, mode) for _ in range(params.repeats)]
        units = {r.worker_units for r in runs}
        if units != {workload.worker_units(mode)}:
            figures.append(Figure(SUITE, "efficiency, 3 equal", mode, float("nan"), "ratio",
                                  detail=f"{sorted(units)} worker units: the mode was not in effect"))
            continue
        wall = median(r.seconds for r in runs)
        figures.append(Figure(
            SUITE, "efficiency, 3 equal", mode, workload.ideal / wall, "ratio", Target(">=", 0.95),
            f"ideal {workload.ideal:.2f} s / measured {wall:.3f} s (median of {len(runs)}: "
            f"{spread(r.seconds for r in runs)}); units of "
            f"{workload.delay(mode):.1f} s; {breakdown(runs)}; the same 2 s prompt on the master alone "
            f"{alone:.3f} s"))
    return figures


def overhead(bench: RealBench, params: Params) -> list[Figure]:
    """Zero work, 1 image of 64x48 per instance; net = distributed - the same prompt on the master alone."""
    cluster = bench.cluster
    workload = Workload((1.0, 1.0, 1.0), images=1, work_per_image=0.0, width=64, height=48)
    bench.use([cluster.w1, cluster.w2], "static", workload)
    bench.distributed(workload, "static")
    jobs = sorted(bench.distributed(workload, "static").seconds * 1000 for _ in range(params.overhead_jobs))
    alone = median(bench.single(workload, 0.0) * 1000 for _ in range(params.overhead_jobs))
    return [
        Figure(SUITE, "overhead per job, zero work", "static", median(jobs) - alone, "ms", Target("<=", 50),
               f"master + 2 workers {median(jobs):.1f} ms (median of {len(jobs)}) - the master alone "
               f"{alone:.1f} ms"),
    ]


def transfer(bench: RealBench, params: Params) -> list[Figure]:
    """One worker, 8 images of 1024x1024 each side; output PreviewAny so the master encodes nothing."""
    cluster = bench.cluster
    workload = Workload((1.0, 1.0), images=8, work_per_image=0.0, width=1024, height=1024)
    bench.use([cluster.w1], "static", workload)
    bench.distributed(workload, "static", "PreviewAny")
    runs = [bench.distributed(workload, "static", "PreviewAny") for _ in range(params.transfer_repeats)]
    jobs = median(r.seconds for r in runs)
    alone = median(bench.single(workload, 0.0, "PreviewAny") for _ in range(params.transfer_repeats))
    moved, seconds = fetch_last_outputs(cluster.w1.url)
    return [
        Figure(SUITE, "transfer 8x1024x1024, GET /view only", "static", moved / seconds / MB, "MB/s",
               Target(">=", 100), f"{moved / MB:.1f} MB in {seconds:.3f} s (the worker's last files, fetched again)"),
        Figure(SUITE, "transfer 8x1024x1024, end to end", "static", moved / max(jobs - alone, 1e-6) / MB, "MB/s",
               None, f"job {jobs:.3f} s - the master alone {alone:.3f} s, which includes the workers' own PNG "
                     f"encoding; {breakdown(runs)}"),
    ]


async def follow(url: str, prompt: dict, timeout: float = 300) -> tuple[float, str, list[dict]]:
    """Queue ``prompt`` like a UI does (its websocket open first) and wait until it has finished."""
    try:
        async with ComfyClient(url, name="the master") as client:
            followed = await client.queue_and_follow(prompt, time.monotonic() + timeout)
    except WorkerTimeout:
        raise BenchError(f"the prompt did not finish in {timeout:.0f} s") from None
    except WorkerError as exc:
        raise BenchError(exc.message) from None
    return followed.seconds, followed.prompt_id, [{**event, "t": t} for t, event in followed.events]


def at(events: list[dict], kind: str, node: str | None = None) -> float:
    """When the first event of this kind (for this node) arrived; NaN if none did."""
    for event in events:
        if event["type"] == kind and (node is None or (event.get("data") or {}).get("node") == node):
            return float(event["t"])
    return float("nan")


def fetch_last_outputs(url: str) -> tuple[int, float]:
    """Bytes and seconds of fetching, one by one like the master, the images of the worker's last prompt."""
    return asyncio.run(_fetch_last_outputs(url))


async def _fetch_last_outputs(url: str) -> tuple[int, float]:
    """The master's own way: ``GET /view`` through the one ComfyUI client, each file in turn."""
    async with ComfyClient(url, name="the worker") as client:
        history = await client.get_json("/history", params={"max_items": 1})
        (entry,) = history.values()
        result = PromptResult("last", entry["outputs"])
        files = [file for node_id in result.outputs for file in result.images(node_id)]
        started, moved = time.perf_counter(), 0
        for file in files:
            moved += len(await client.view(file, timeout=30))
    return moved, time.perf_counter() - started


def comfyui_version() -> str:
    path = Path(os.environ.get("COMFYUI_PATH", "")) / "comfyui_version.py"
    try:
        return path.read_text().split("__version__ =", 1)[1].strip().strip("\"'")
    except (OSError, IndexError):
        return "unknown"


def run(quick: bool = False) -> tuple[list[Figure], list[str]]:
    """Start the cluster, run every real benchmark, stop every process."""
    from tests.real.cluster import Cluster

    params = QUICK if quick else FULL
    modes = available_modes()
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        started = time.monotonic()
        cluster = Cluster(Path(tmp), workers=("w1", "w2"))
        try:
            startup = time.monotonic() - started
            bench = RealBench(cluster)
            figures = efficiency(bench, params, modes)
            figures += overhead(bench, params)
            figures += transfer(bench, params)
        finally:
            cluster.stop()
    notes = [
        f"ComfyUI {comfyui_version()} with --cpu: a master (this extension + tests/comfy_test_nodes) and 2 plain "
        f"workers on loopback, started in {startup:.0f} s; scheduling modes found: {', '.join(modes)}.",
        f"This machine has {os.cpu_count()} CPUs for 3 ComfyUI processes and the benchmark: the work is slept, but "
        "dispatch, events, PNG encoding and decoding of all instances compete for the cores, which lowers "
        "these figures compared with one GPU machine per instance.",
        "Measured = POST /prompt on the master until it reports the prompt finished; ideal = total work / 3.",
        "Overhead = median distributed job - median of the same prompt on the master alone (both zero work).",
        "Transfer: random pixels (about 3.1 MB per PNG); 'end to end' = worker bytes / (distributed job - the "
        "same prompt on the master alone), so it counts the worker's PNG encoding and the master's decoding.",
        "Heterogeneous speeds are measured in the stand-in suite only (plain workers cannot be slowed).",
    ]
    return figures, notes
