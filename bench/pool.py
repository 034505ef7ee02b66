"""Stand-in ComfyUI workers in a process of their own.

Why a separate process: the master's CPU time per job is then ``time.process_time()`` of the
benchmark process alone, and the workers' PNG encoding does not share the master's GIL, as
with real workers. The child prints ``{"ports": [...]}`` once every stand-in listens, and
stops when its stdin is closed.

    python -m bench.pool --scales 1,1,3 --dir /tmp/pool   # the child side, started by StandinPool

With ``agents`` (a pool's Redis URL), each stand-in also gets a pool agent beside it in the child (the project's own
:class:`~comfy_distributed.pool.agent.Agent`, with its default timing), and the ports are printed once every
agent has published what its stand-in can run. Each unit an agent served is then written, on stop, to
``served.jsonl`` in the directory: ``{"agent", "job", "position", "started", "ended"}`` (wall-clock seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


class PoolError(RuntimeError):
    """The pool process did not start or answer."""


class StandinPool:
    """``with StandinPool([1, 1, 3], tmp) as pool: pool.ports`` -- one stand-in per delay scale."""

    def __init__(self, scales: list[float], base_dir: Path, agents: str | None = None) -> None:
        self.scales = scales
        self.base_dir = Path(base_dir)
        self.agents = agents
        self.ports: list[int] = []
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "StandinPool":
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.base_dir / "pool.log", "wb")
        with log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.pool", "--scales", ",".join(map(str, self.scales)),
                 "--dir", str(self.base_dir), *(["--agents", self.agents] if self.agents else [])],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
        try:
            self.ports = self._read_ports()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _read_ports(self) -> list[int]:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            ready, _, _ = select.select([self._process.stdout], [], [], 0.2)
            if ready:
                line = self._process.stdout.readline()
                if line:
                    return [int(p) for p in json.loads(line)["ports"]]
        raise PoolError(f"stand-in pool not ready in {READY_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the pool process has used so far; NaN where /proc is missing."""
        try:
            assert self._process is not None
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AssertionError, IndexError, ValueError):
            return float("nan")

    def log_tail(self, lines: int = 30) -> str:
        path = self.base_dir / "pool.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Close stdin (the child stops its servers); kill it if it does not exit in time."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


    def served(self) -> list[dict]:
        """The units the child's agents served (after :meth:`stop`)."""
        path = self.base_dir / "served.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def serve(scales: list[float], base_dir: Path, agents_url: str | None = None) -> None:
    from tests.standin import StandinComfy

    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for index, scale in enumerate(scales):
            server = await stack.enter_async_context(StandinComfy(base_dir / f"w{index}", name=f"w{index}"))
            server.execution_delay_scale = scale
            servers.append(server)
        agents = await start_agents(agents_url, servers, base_dir) if agents_url else []
        print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        finally:
            await stop_agents(agents, base_dir)


async def start_agents(url: str, servers: list, base_dir: Path) -> list:
    """An agent beside each stand-in, each unit it serves timed; returned once all of them can take units."""
    from comfy_distributed.pool import agent as agent_module
    from comfy_distributed.pool.agent import Agent

    served: list[dict] = []
    real_run_unit = agent_module.run_unit

    async def timed_run_unit(comfy, redis, pool_url, keys, caps, unit, sender) -> None:
        started = time.time()
        await real_run_unit(comfy, redis, pool_url, keys, caps, unit, sender)
        served.append({"agent": comfy.worker.name, "job": unit.job_id, "position": unit.position,
                       "started": started, "ended": time.time()})

    agent_module.run_unit = timed_run_unit  # type: ignore[assignment]
    agents = [Agent(url, s.url, name=f"a{index}") for index, s in enumerate(servers)]
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    deadline = time.monotonic() + READY_TIMEOUT - 10
    while not all(a.comfyui_up and a.caps is not None for a in agents):
        if time.monotonic() > deadline or any(t.done() for t in tasks):
            raise RuntimeError("the stand-ins' agents did not all get ready")
        await asyncio.sleep(0.2)
    start_agents.served = served  # type: ignore[attr-defined]
    return list(zip(agents, tasks))


async def stop_agents(agents: list, base_dir: Path) -> None:
    for agent, _ in agents:
        agent.stop(give_back=True)
    await asyncio.gather(*(task for _, task in agents), return_exceptions=True)
    served = getattr(start_agents, "served", [])
    (base_dir / "served.jsonl").write_text("".join(json.dumps(item) + "\n" for item in served))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", required=True, help="comma-separated execution_delay_scale, one per stand-in")
    parser.add_argument("--dir", required=True, type=Path, help="base directory of the stand-ins")
    parser.add_argument("--agents", metavar="REDIS_URL", help="a pool agent beside each stand-in, on this Redis")
    args = parser.parse_args(argv)
    asyncio.run(serve([float(s) for s in args.scales.split(",")], args.dir, args.agents))


if __name__ == "__main__":
    main()
