"""The shared pool on real ComfyUI, side by side with the direct path in one run.

Two masters over the same two workers (ComfyUI with the test node pack). Master A reaches them directly: its
config lists them. Master B lists no worker and joins a real ``redis-server``, where an agent beside each worker
(``python -m comfy_distributed agent``, a real process) takes B's units. Jobs alternate A, B, A, B... with the same
work (3 participants x batch 2 x 1 s per image at 512x512, static mode), so the figure is what the pool costs
against the direct path on the same machine in the same minutes: direct seconds / pool seconds, per pair (1.0:
nothing). Then an agent is killed with SIGKILL while it runs a unit: the job's extra seconds against the same job
undisturbed is what reclaiming a dead agent's unit costs (an agent silent for 20 s is taken for dead, and its unit
runs again elsewhere).

    COMFYUI_PATH=... python -m bench.real_pool        # these figures alone (about 3 minutes)
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.agent_process import kill_agent, start_agent, stop_agent
from harness.comfy_process import ROOT, TEST_NODES, ComfyInstance, http_json, start_comfyui
from harness.redis_server import RedisServer, redis_server_path, running_redis

from .figures import Figure, machine, seconds_list, table
from .real_cluster import BenchCluster, unavailable
from .real_jobs import BenchError, RealBench
from .workload import Workload

SUITE = "pool"
WORKERS = ("w1", "w2")
WORK = Workload((1.0, 1.0, 1.0), images=2, work_per_image=1.0, width=512, height=512)
SLOW = Workload((1.0, 1.0, 1.0), images=1, work_per_image=6.0, width=512, height=512)
"""The reclaim job: long units, so the agent is surely killed while it runs one."""
KILL_AFTER = 2.0
"""Seconds after the reclaim job is queued that an agent is killed (its unit then runs for 4 s more)."""
SETTINGS = {"worker_timeout": 300, "max_retries": 2, "scheduling_mode": "static"}
NOTES = [
    "Two masters (ComfyUI --cpu, this extension) over the same two workers (ComfyUI --cpu, tests/comfy_test_nodes): "
    "one reaches them directly, the other through a real redis-server on loopback and an agent process beside each "
    "worker; their jobs alternate, never overlap.",
    "Measured = POST /prompt on the master (its websocket open, as a UI) until it reports the prompt finished.",
]


class PoolMaster:
    """Master B: no configured worker, the pool's two agents; what :class:`RealBench` needs of a cluster."""

    def __init__(self, base: Path, redis: RedisServer, workers: list[ComfyInstance]) -> None:
        self.config_path = base / "pool_config.json"
        self.config_path.write_text(json.dumps({"settings": SETTINGS}))
        self.master = start_comfyui("pool-master", base / "pool-master",
                                    custom_nodes={"ComfyUI-Distributed": ROOT, "comfy_test_nodes": TEST_NODES},
                                    env={"COMFY_DISTRIBUTED_CONFIG": str(self.config_path),
                                         "COMFY_DISTRIBUTED_POOL": redis.url})
        self.agents = {worker.name: start_agent(redis.url, worker.url, worker.name, base / f"agent-{worker.name}.log")
                       for worker in workers}

    def ready_agents(self) -> int:
        pool = http_json("GET", f"{self.master.url}/multigpu/status", timeout=5).get("pool") or {}
        return sum(1 for a in pool.get("agents", []) if a["comfyui"]) if pool.get("joined") else 0

    def wait_ready(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ready_agents() < count:
            if time.monotonic() > deadline:
                raise BenchError(f"the pool master does not see {count} agents ready")
            time.sleep(0.5)
        time.sleep(2.5)  # the slots follow the agents read every 2 s

    def kill(self, name: str) -> None:
        kill_agent(self.agents[name])

    def stop(self) -> None:
        for process in self.agents.values():
            stop_agent(process)
        self.master.stop()


def side_by_side(direct: RealBench, pool: RealBench, repeats: int) -> Figure:
    """``repeats`` pairs (direct, then pool) after a warm-up of each; direct seconds / pool seconds per pair."""
    direct.distributed(WORK.without_work(), "static")
    pool.distributed(WORK.without_work(), "static")
    pairs = [(direct.distributed(WORK, "static").seconds, pool.distributed(WORK, "static").seconds)
             for _ in range(repeats)]
    return Figure(SUITE, "pool vs direct, 512x512", "static", tuple(d / p for d, p in pairs), "ratio", None,
                  f"direct {seconds_list(d for d, _ in pairs)} / pool {seconds_list(p for _, p in pairs)}; "
                  f"master + 2 workers, batch 2 x {WORK.work_per_image:.0f} s per image; the pool's two agents "
                  "run beside the same two workers")


def reclaim(pool: RealBench, side: PoolMaster) -> Figure:
    """The reclaim job undisturbed, then again with an agent killed while it runs a unit: the extra seconds."""
    undisturbed = pool.distributed(SLOW, "static").seconds
    timer = threading.Timer(KILL_AFTER, side.kill, args=("w1",))
    timer.start()
    try:
        run = pool.distributed(SLOW, "static", worker_failures_allowed=True)
    finally:
        timer.cancel()
    if not any("stopped heartbeating" in failure for failure in run.failures):
        raise BenchError(f"the killed agent's unit was not reclaimed: {run.failures}")
    return Figure(SUITE, "reclaim a dead agent's unit", "static", (run.seconds - undisturbed,), "s", None,
                  f"job {run.seconds:.2f} s with agent w1 killed {KILL_AFTER:.0f} s in, {undisturbed:.2f} s "
                  f"undisturbed ({SLOW.work_per_image:.0f} s units); an agent silent for 20 s is taken for dead",
                  lower_is_better=True)


def run(repeats: int = 3) -> list[Figure]:
    """Start Redis, the two masters, the workers and the agents; measure; stop every process."""
    if redis_server_path() is None:
        raise BenchError("redis-server is not installed (apt install redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        base = Path(tmp)
        with running_redis(base / "redis") as redis, BenchCluster(base, WORKERS) as cluster:
            cluster.start()
            direct = RealBench(cluster)
            direct.use(WORKERS, "static", WORK, **SETTINGS)
            side = PoolMaster(base, redis, [cluster.instances[name] for name in WORKERS])
            try:
                side.wait_ready(len(WORKERS))
                pool = RealBench(side)  # type: ignore[arg-type]  # what it reads of a cluster: .master
                return [side_by_side(direct, pool, repeats), reclaim(pool, side)]
            finally:
                side.stop()


def main() -> int:
    if why := unavailable():
        print(f"skipped: {why}", file=sys.stderr)
        return 0
    load = machine()["load"]
    figures = run()
    print(f"load average {load} before, {machine()['load']} after\n")
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
