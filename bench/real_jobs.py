"""Timed jobs on a running real cluster, queued and followed as a user's UI does.

A job is queued on the master with a plain ``POST /prompt`` (its websocket open first) and
timed until the master reports the prompt finished (``executing`` null, sent after its history
entry is written): what a user waits for, from the click to the last saved image. A job that
failed, lost a worker, or finished faster than its work is refused: its time would mean nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from comfy_distributed.cli.master_events import registered
from comfy_distributed.errors import WorkerError, WorkerTimeout
from comfy_distributed.worker_client import ComfyClient, PromptResult

from harness.comfy_process import history_entry, http_json

from .figures import median
from .real_cluster import BenchCluster
from .workload import COLLECTOR, SEED_STEP, TOO_FAST, Workload, config, plain_workflow, workflow


class BenchError(RuntimeError):
    """A job failed or did not run as the benchmark asked: its time would mean nothing."""


@dataclass(slots=True, frozen=True)
class RealRun:
    """A distributed job's time, its units, and when the master reached, heard and left its Collector."""

    seconds: float
    worker_units: int
    master_units: int
    """Units the master ran besides its own share (a worker's unit it took over, say)."""
    failures: tuple[str, ...]
    """What each worker failure said (a unit then re-run, or taken over by the master)."""
    collector: float
    results: float
    collector_done: float


def breakdown(runs: list[RealRun]) -> str:
    """Where the median job spent its time, from the master's websocket; and the slowest job, part by part, to say
    where a worst run lost its time (reaching the Collector, the workers' results, or the master's saving after)."""
    text = (f"master at its Collector {median(r.collector for r in runs):.2f} s, workers' results in "
            f"{median(r.results for r in runs):.2f} s, Collector done {median(r.collector_done for r in runs):.2f} s")
    if len(runs) < 2:
        return text
    worst = max(runs, key=lambda r: r.seconds)
    return (f"{text}, finished {median(r.seconds for r in runs):.2f} s; the slowest: {worst.collector:.2f} / "
            f"{worst.results:.2f} / {worst.collector_done:.2f} / {worst.seconds:.2f} s")


class RealBench:
    """Jobs on a running cluster; every config change is a rewrite of the master's gpu_config.json."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.seeds = itertools.count(random.randrange(1, 1 << 40) * SEED_STEP, SEED_STEP)

    def use(self, workers: tuple[str, ...], mode: str, workload: Workload, **settings: Any) -> None:
        ports = [self.cluster.ports[name] for name in workers]
        self.cluster.write_config(config(ports, mode, workload, **settings))

    def timed(self, prompt: dict[str, Any], worker_failures_allowed: bool = False) -> tuple[float, dict, list[dict]]:
        """Seconds from POST /prompt until the master has finished it; fails on any error (and, unless
        allowed, on a worker's failure, which a re-run hides in the outcome but not in the time).

        Events carry ``t``, their arrival in seconds after the POST, for breakdowns.
        """

        seconds, prompt_id, events = asyncio.run(follow(self.cluster.master.url, prompt))
        entry = history_entry(self.cluster.master.url, prompt_id)
        status = entry.get("status") or {}
        if status.get("status_str") != "success":
            raise BenchError(f"the prompt failed: {json.dumps(status.get('messages'))[-2000:]}")
        failures = [e["data"].get("message") for e in events if e["type"] == "multigpu.worker_failed"]
        if failures and not worker_failures_allowed:
            raise BenchError(f"worker failures: {failures}")
        return seconds, entry, events

    def distributed(self, workload: Workload, mode: str, output: str = "SaveImage",
                    worker_failures_allowed: bool = False) -> RealRun:
        """One job, checked: every image there, no worker failure (unless allowed), no work skipped."""
        prompt = workflow(next(self.seeds), workload, mode, output)
        seconds, entry, events = self.timed(prompt, worker_failures_allowed)
        if output == "SaveImage":
            images = len(entry.get("outputs", {}).get("4", {}).get("images", []))
            if images != workload.total_images:
                raise BenchError(f"{images} images, expected {workload.total_images}")
        if seconds < TOO_FAST * workload.policy_makespan(mode):
            raise BenchError(f"{seconds:.3f} s is less than the work itself: some was skipped (cached?)")
        progress = [e["data"] for e in events if e["type"] == "multigpu.job_progress"]
        done = [e["data"] for e in events if e["type"] == "multigpu.job_done"]
        return RealRun(seconds, len(progress[-1]["units"]) if progress else -1,
                       len(done[-1].get("master_units") or []) if done else -1,
                       tuple(str(e["data"].get("message")) for e in events if e["type"] == "multigpu.worker_failed"),
                       at(events, "executing", COLLECTOR), at(events, "multigpu.job_done"),
                       at(events, "executing", "4"))

    def single(self, workload: Workload, images: int, delay: float, output: str = "SaveImage") -> float:
        """``images`` images made and saved by the master alone, without our nodes: the single-instance baseline."""
        alone = Workload((1.0,), images, workload.work_per_image, width=workload.width, height=workload.height)
        return self.timed(plain_workflow(next(self.seeds), alone, delay, output))[0]


async def follow(url: str, prompt: dict, timeout: float = 300) -> tuple[float, str, list[dict]]:
    """Queue ``prompt`` like a UI does (its websocket open first) and wait until it has finished."""
    try:
        async with ComfyClient(url, name="the master") as client:
            client_id = uuid.uuid4().hex
            async with registered(client, client_id):  # the master sends its events to registered clients only
                followed = await client.queue_and_follow(prompt, time.monotonic() + timeout, client_id=client_id)
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


def fetch_files_made(url: str, workload: Workload) -> tuple[int, float]:
    """Bytes and seconds of fetching, one by one like the master, the images of a prompt queued on the worker itself
    (``workload``'s images, zero work, Preview Image: files in its temp folder, as a unit's are where the worker has
    no ``SaveImageWebsocket``)."""
    prompt = plain_workflow(random.randrange(1, 1 << 40), workload, 0.0, "PreviewImage")
    answer = http_json("POST", f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    entry = history_entry(url, answer["prompt_id"], timeout=120)
    return asyncio.run(_fetch_outputs(url, entry))


async def _fetch_outputs(url: str, entry: dict[str, Any]) -> tuple[int, float]:
    """The master's own way: ``GET /view`` through the one ComfyUI client, each file in turn."""
    async with ComfyClient(url, name="the worker") as client:
        result = PromptResult("made", entry["outputs"])
        files = [file for node_id in result.outputs for file in result.images(node_id)]
        started, moved = time.perf_counter(), 0
        for file in files:
            moved += len(await client.view(file, timeout=30))
    return moved, time.perf_counter() - started
