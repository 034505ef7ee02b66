"""Queue mode on real ComfyUI: a queue of whole prompts spread over the master and two workers.

A user queues many prompts on the master (a batch of variations, say) and waits for the last one to
be in the master's history. Each prompt here is one 512x512 image after ``WORK`` seconds of slept work
(DistributedTestImage), saved by SaveImage; with queue mode a prompt goes whole to a participant, and a
worker's image comes back into the master's output folder and history. The ideal is the work split
evenly over the three participants plus the floor: the master alone making and saving every image of
the queue with zero work. Efficiency = ideal / measured, per run.

    COMFYUI_PATH=... python -m bench.real_queue        # this figure alone (about 2 minutes)
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from comfy_distributed.errors import WorkerError, WorkerTimeout
from comfy_distributed.worker_client import ComfyClient, finished
from harness.comfy_process import history_entry, http_json

from .figures import Figure, machine, median, seconds_list, table
from .real_cluster import BenchCluster, unavailable
from .real_jobs import BenchError, RealBench
from .workload import Workload, plain_workflow

SUITE = "real"
WORKERS = ("w1", "w2")
PROMPTS = 9
"""Prompts in the queue: three per participant when they spread evenly."""
WORK = 2.0
"""Seconds of slept work per prompt."""
IMAGE = Workload((1.0,), images=1, work_per_image=WORK, width=512, height=512)


async def _queue_and_wait(url: str, prompts: list[dict], timeout: float) -> tuple[float, list[str]]:
    """POST every prompt at once (a websocket open first, as a UI); seconds until the master finished the last."""
    client_id = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    try:
        async with ComfyClient(url, name="the master") as client, client.listen(client_id, deadline) as events:
            started = time.monotonic()
            prompt_ids = [await client.submit(prompt, client_id) for prompt in prompts]
            waiting = set(prompt_ids)
            while waiting:
                event = await events.next(deadline)
                if event.get("type") == "execution_error":
                    data = event.get("data") or {}
                    raise BenchError(f"a prompt failed: {str(data.get('exception_message'))[:300]}")
                waiting = {prompt_id for prompt_id in waiting if not finished(event, prompt_id)}
            return time.monotonic() - started, prompt_ids
    except WorkerTimeout:
        raise BenchError(f"the queue did not finish in {timeout:.0f} s") from None
    except WorkerError as exc:
        raise BenchError(exc.message) from None


def queued(bench: RealBench, prompts: list[dict], timeout: float = 300) -> tuple[float, list[dict]]:
    """The queue's seconds, and each prompt's history entry on the master (every one checked for its image)."""

    seconds, prompt_ids = asyncio.run(_queue_and_wait(bench.cluster.master.url, prompts, timeout))
    entries = [history_entry(bench.cluster.master.url, p) for p in prompt_ids]
    for entry in entries:
        status = entry.get("status") or {}
        images = entry.get("outputs", {}).get("4", {}).get("images", [])
        if status.get("status_str") != "success" or len(images) != 1:
            raise BenchError(f"a prompt did not give its image: {json.dumps(status)[:500]}")
    return seconds, entries


def use_queue(bench: RealBench, mode: str) -> None:
    bench.use(WORKERS, "static", IMAGE, queue_mode=mode)


def where(bench: RealBench, before: dict[str, int]) -> dict[str, int]:
    """Prompts each worker ran since ``before`` (their history)."""
    return {name: len(http_json("GET", f"{bench.cluster.instances[name].url}/history") or {}) - before[name]
            for name in WORKERS}


def spread(bench: RealBench, repeats: int) -> list[Figure]:
    """``repeats`` x (the floor on the master alone, then the queue in queue mode), after a warm-up of each."""
    def prompts(delay: float) -> list[dict]:
        return [plain_workflow(next(bench.seeds), IMAGE, delay) for _ in range(PROMPTS)]

    use_queue(bench, "off")
    queued(bench, prompts(0.0))
    use_queue(bench, "no_collector")
    bench.cluster.wait_online(WORKERS)
    queued(bench, prompts(0.0))
    floors, runs, spreads = [], [], []
    for _ in range(repeats):
        use_queue(bench, "off")
        floors.append(queued(bench, prompts(0.0))[0])
        use_queue(bench, "no_collector")
        before = where(bench, dict.fromkeys(WORKERS, 0))
        seconds, _ = queued(bench, prompts(WORK))
        if seconds < PROMPTS * WORK / 3:
            raise BenchError(f"{seconds:.2f} s is less than the work itself: some was skipped (cached?)")
        runs.append(seconds)
        spreads.append(where(bench, before))
    ideal = PROMPTS * WORK / 3 + median(floors)
    ran = " / ".join(f"w1 {s['w1']}, w2 {s['w2']}, master {PROMPTS - s['w1'] - s['w2']}" for s in spreads)
    return [Figure(SUITE, f"queue mode, {PROMPTS} prompts of 512x512", "queue", tuple(ideal / s for s in runs), "ratio",
                   None, f"ideal {ideal:.2f} s = work / 3 {PROMPTS * WORK / 3:.2f} s + floor {median(floors):.2f} s "
                         f"(the master alone making and saving the {PROMPTS} images with zero work, queue mode off: "
                         f"{seconds_list(floors)}); measured {seconds_list(runs)}; prompts per participant: {ran}")]


def main() -> int:
    if why := unavailable():
        print(f"skipped: {why}", file=sys.stderr)
        return 0
    load = machine()["load"]
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        with BenchCluster(Path(tmp), WORKERS) as cluster:
            bench = RealBench(cluster)
            use_queue(bench, "off")
            cluster.start()
            figures = spread(bench, repeats=3)
    print(f"load average {load} before, {machine()['load']} after\n")
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
