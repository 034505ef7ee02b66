"""The pool at scale on stand-ins: the master's CPU per unit with 256 agents, and two masters' shares over time.

Needs a ``redis-server`` (no ComfyUI): the bench starts one on a free loopback port. Stand-in ComfyUIs
(``tests.standin``) run in a child process (``bench.pool``), each with the project's own pool agent beside it.

- **CPU per unit**: the same job (one 2 s image per participant, static mode) on a master in this process, first
  with the 256 stand-ins as configured workers (the direct path: a websocket each, every event), then with no
  configured worker and the 256 agents as its pool. CPU time (``time.process_time``) of this process, which holds
  only the master, per job / 256 worker units; the agents and stand-ins run in the child, Redis in its own process.
  Then the same job with each pool unit answered by the master itself (no Redis, no agent): the engine's own cost,
  the floor under any transport.
- **Fair share**: 8 agents; two masters (brokers of their own, as two masters' engines use them) open a job each at
  the same moment and submit 48 units of 0.5 s each; while both have units left, the share of the units finished
  that were the first master's (0.5: even), and second by second. Then the same with the first master's weight 2 (2/3).
  Then a small job: one unit submitted 1 s after a big job of 96 units filled the agents; from sending it to an
  agent starting it, in units of 0.5 s (at most 1: it starts within one unit's time).

    python -m bench.pool_scale          # these figures alone (about 3 minutes)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from harness.redis_server import redis_server_path, running_redis

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.config import ConfigStore
from comfy_distributed.pool.broker import PoolBroker
from comfy_distributed.pool.caps import needs_of
from comfy_distributed.pool.member import PoolMember, PoolTransport
from comfy_distributed.pool.protocol import UnitEntry
from comfy_distributed.worker_client import PromptResult

from .figures import Figure, Target, machine, median, seconds_list, table
from .pool import StandinPool
from .standin_bench import Bench, BenchError, JobRun, mode_in_effect
from .workload import Workload, config, plain_workflow, write_config

SUITE = "pool"
AGENTS = 256
SHARE_AGENTS = 8
SHARE_UNITS = 48
UNIT_SECONDS = 0.5
WINDOW = 1.0
JOIN_TIMEOUT = 120.0
NOTES = [
    f"CPU per unit: {AGENTS} stand-in ComfyUIs (tests/standin) in two child processes, each with a pool agent beside "
    "it (idle agents block on the pool's wake-up stream); the master is this package's Orchestrator in the benchmark process, run once with "
    f"the {AGENTS} stand-ins as configured workers (direct) and once with the pool's {AGENTS} agents as its "
    "participants; the CPU time of the benchmark process per job / worker units. One redis-server on loopback.",
    f"Fair share: {SHARE_AGENTS} agents, two brokers as two masters; per second while both have units left, the "
    "first master's share of the units finished then.",
]


def share_unit(seed: int) -> dict:
    workload = Workload((1.0,), images=1, work_per_image=UNIT_SECONDS)
    return plain_workflow(seed, workload, UNIT_SECONDS, "PreviewImage")


# --- CPU per unit ------------------------------------------------------------------------------------


async def pool_runs(bench: Bench, redis_url: str, workload: Workload, repeats: int) -> list[JobRun]:
    """``repeats`` jobs (after a warm-up) on a master with no configured worker and the pool's agents."""
    path = write_config(bench.base_dir / "pool-master" / "gpu_config.json", config([], "static", workload))
    cluster = Cluster(ConfigStore(path))
    member = PoolMember(PoolBroker(redis_url, "default"), "the bench pool")
    cluster.pool = member
    member.start()
    orchestrator = Orchestrator(cluster)
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not (member.joined and len(member.slots) == AGENTS):
            if time.monotonic() > deadline:
                raise BenchError(f"the master sees {len(member.slots)} of {AGENTS} agents")
            await asyncio.sleep(0.2)
        await bench.job(orchestrator, workload.without_work(), "static")
        gc.collect()
        return [await bench.job(orchestrator, workload, "static") for _ in range(repeats)]
    finally:
        await orchestrator.close()
        await cluster.close()


@contextlib.contextmanager
def answering_at_once(workload: Workload) -> Iterator[None]:
    """Pool units answered by the master itself after the unit's work, with a PNG of the job's size: what the
    engine costs per unit with a transport that costs nothing (no Redis, no agent)."""
    buffer = io.BytesIO()
    Image.new("RGB", (workload.width, workload.height)).save(buffer, "PNG")
    png, real = buffer.getvalue(), PoolTransport.run_prompt

    async def run_prompt(self: PoolTransport, prompt: dict, deadline: float, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(workload.work_per_image * workload.images)
        self._made[("null.png", "", "output")] = png
        output = next(n for n, node in prompt.items() if node.get("class_type") in ("SaveImage", "PreviewImage"))
        return PromptResult("null", {output: {"images": [{"filename": "null.png", "subfolder": "",
                                                           "type": "output"}]}}, self.name)

    PoolTransport.run_prompt = run_prompt  # type: ignore[method-assign]
    try:
        yield
    finally:
        PoolTransport.run_prompt = real  # type: ignore[method-assign]


def per_unit(name: str, runs: list[JobRun], target: Target | None, detail: str) -> list[Figure]:
    return [
        Figure(SUITE, f"{AGENTS} {name}, master CPU per unit", "static", tuple(r.cpu * 1000 / AGENTS for r in runs),
               "ms", target, lower_is_better=True,
               detail=f"{detail}; per job {' '.join(f'{r.cpu * 1000:.0f}' for r in runs)} ms of the master, "
                      f"{' '.join(f'{r.pool_cpu * 1000:.0f}' for r in runs)} ms of the stand-ins' processes"),
        Figure(SUITE, f"{AGENTS} {name}, of it on the event loop", "static",
               tuple(r.loop_cpu * 1000 / AGENTS for r in runs), "ms", None, lower_is_better=True,
               detail="the thread where the master talks to its workers or the pool; the rest is the worker "
                      "threads that decode each unit's PNGs into tensors and the Collector's thread"),
    ]


async def cpu_per_unit(base: Path, redis_url: str, repeats: int, work: float) -> list[Figure]:
    workload = Workload((1.0,) * (AGENTS + 1), images=1, work_per_image=work)
    half = AGENTS // 2  # two child processes: the stand-ins and agents use both cores
    with StandinPool([1.0] * half, base / "standins-1", agents=redis_url) as first, \
            StandinPool([1.0] * (AGENTS - half), base / "standins-2", agents=redis_url) as second:
        bench = Bench(base, lambda: first.cpu_seconds() + second.cpu_seconds())
        direct = await bench.jobs(first.ports + second.ports, "static", workload, repeats)
        pooled = await pool_runs(bench, redis_url, workload, repeats)
        with answering_at_once(workload):
            floor = await pool_runs(bench, redis_url, workload, repeats)
    for runs in (direct, pooled):
        if why := mode_in_effect(runs, "static", workload):
            raise BenchError(why)
    ratio = median([r.cpu for r in direct]) / median([r.cpu for r in pooled])
    return [
        *per_unit("direct workers", direct, None, "the same stand-ins as configured workers"),
        *per_unit("pool agents", pooled, Target(0.5), f"{ratio:.1f} times less than direct (target: 4)"),
        Figure(SUITE, f"{AGENTS} slots answering at once, master CPU per unit", "static",
               tuple(r.cpu * 1000 / AGENTS for r in floor), "ms", None, lower_is_better=True,
               detail="the same job, each pool unit answered by the master itself after its work with a PNG of the "
                      "job's size: the engine's own cost per unit (planning, scheduling, collecting, decoding), "
                      "which no transport can go below"),
        Figure(SUITE, f"{AGENTS} pool agents, efficiency", "static", tuple(workload.ideal / r.wall for r in pooled),
               "ratio", None, f"ideal {workload.ideal:.2f} s / measured {seconds_list(r.wall for r in pooled)}; "
               f"direct: {seconds_list(r.wall for r in direct)}; every stand-in and agent on one machine's 2 cores"),
    ]


# --- fair share --------------------------------------------------------------------------------------


async def send(broker: PoolBroker, job_id: str, count: int, first_seed: int, weight: float = 1.0) -> list:
    """Open a job and submit ``count`` units; a task per unit that ends with the time its done reply came."""
    prompt = share_unit(first_seed)
    await broker.open_job(job_id, needs_of(prompt), weight=weight)
    waits = []
    for position in range(count):
        replies = broker.watch(job_id, position, 0)
        await broker.submit(job_id, UnitEntry(job_id=job_id, position=position, attempt=0,
                                              prompt=share_unit(first_seed + position), deadline=time.time() + 600))
        waits.append(asyncio.create_task(done_at(replies)))
    return waits


async def done_at(replies: asyncio.Queue) -> float:
    while True:
        reply = await asyncio.wait_for(replies.get(), 120)
        if reply.kind == "failed":
            raise BenchError(f"unit {reply.position} of {reply.job_id} failed: {reply.error}")
        if reply.kind == "done":
            return time.monotonic()


def shares(first: list[float], second: list[float]) -> tuple[float, list[float]]:
    """While both jobs have units left: the first job's share of all units finished then, and per :data:`WINDOW`
    (the agents take their turns in step, so one second may hold an extra unit of either)."""
    start, end = min(first + second), min(max(first), max(second))
    windows = []
    t = start
    while t + WINDOW <= end:
        a = sum(t <= x < t + WINDOW for x in first)
        b = sum(t <= x < t + WINDOW for x in second)
        if a + b:
            windows.append(a / (a + b))
        t += WINDOW
    a, b = sum(x <= end for x in first), sum(x <= end for x in second)
    return a / (a + b), windows


async def two_masters(url: str, run: int, weight: float) -> tuple[float, list[float]]:
    async with PoolBroker(url, "default", f"master-a-{run}") as a, PoolBroker(url, "default", f"master-b-{run}") as b:
        first, second = await asyncio.gather(send(a, f"a{run}", SHARE_UNITS, 1000 * run, weight),
                                             send(b, f"b{run}", SHARE_UNITS, 1000 * run + 500))
        times_a, times_b = await asyncio.gather(asyncio.gather(*first), asyncio.gather(*second))
        for broker, job in ((a, f"a{run}"), (b, f"b{run}")):
            await broker.close_job(job)
    return shares(list(times_a), list(times_b))


async def small_behind_big(url: str, run: int) -> float:
    """When (wall clock) the small job's one unit was sent, behind a big job that filled the agents."""
    async with PoolBroker(url, "default", f"big-{run}") as big, PoolBroker(url, "default", f"small-{run}") as small:
        waits = await send(big, f"big{run}", SHARE_UNITS * 2, 5000 + 1000 * run)
        await asyncio.sleep(1.0)
        sent = time.time()
        (mine,) = await send(small, f"small{run}", 1, 9000 + run)
        await asyncio.gather(mine, *waits)
        await big.close_job(f"big{run}")
        await small.close_job(f"small{run}")
    return sent


def over_time(runs: list[tuple[float, list[float]]]) -> str:
    return " | ".join(" ".join(f"{share:.2f}" for share in windows) for _, windows in runs)


async def fair_share(base: Path, redis_url: str, repeats: int) -> list[Figure]:
    with StandinPool([1.0] * SHARE_AGENTS, base / "share", agents=redis_url) as standins:
        even = [await two_masters(redis_url, run, 1.0) for run in range(repeats)]
        weighted = [await two_masters(redis_url, 100 + run, 2.0) for run in range(repeats)]
        sent = [await small_behind_big(redis_url, run) for run in range(repeats)]
    served = standins.served()
    agents_used = len({item["agent"] for item in served})
    started = {item["job"]: item["started"] for item in served if item["job"].startswith("small")}
    small = [started[f"small{run}"] - at for run, at in enumerate(sent)]
    return [
        Figure(SUITE, "two masters, first one's share", "weight 1:1", tuple(share for share, _ in even), "ratio",
               None, f"of the units finished while both waited, per run; even = 0.5; {SHARE_AGENTS} agents, "
               f"{SHARE_UNITS} units of {UNIT_SECONDS} s each per master; {agents_used} agents served; second by "
               f"second: {over_time(even)}"),
        Figure(SUITE, "two masters, first one's share", "weight 2:1", tuple(share for share, _ in weighted), "ratio",
               None, f"the first master's weight 2: 0.667 expected; second by second: {over_time(weighted)}"),
        Figure(SUITE, "small job behind a big one, start", "any", tuple(w / UNIT_SECONDS for w in small),
               "units", Target(1.0), lower_is_better=True,
               detail=f"from sending its one unit to an agent starting it, in units of {UNIT_SECONDS} s; sent 1 s "
                      f"after {SHARE_UNITS * 2} units of a big job filled {SHARE_AGENTS} agents: "
                      f"{seconds_list(small)}"),
    ]


def run(repeats: int = 3, work: float = 2.0) -> list[Figure]:
    if redis_server_path() is None:
        raise BenchError("redis-server is not installed (apt install redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-pool-scale-") as tmp:
        base = Path(tmp)
        with running_redis(base / "redis") as redis:
            figures = asyncio.run(cpu_per_unit(base, redis.url, repeats, work))
            return figures + asyncio.run(fair_share(base, redis.url, repeats))


def main() -> int:
    load = machine()["load"]
    figures = run(1 if "--quick" in sys.argv else 3, 0.25 if "--quick" in sys.argv else 2.0)
    print(f"load average {load} before, {machine()['load']} after\n")
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
