"""What the pool's component tests share: a site of stand-in ComfyUIs, in-process agents in front of them and
master-side brokers, all on one real Redis, stopped at the end (an agent still running then fails the test)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from comfy_distributed.pool.agent import Agent, AgentTiming
from comfy_distributed.pool.broker import LiveAgent, PoolBroker
from comfy_distributed.pool.caps import needs_of
from comfy_distributed.pool.protocol import UnitEntry, UnitReply
from harness.redis_server import RedisServer
from tests.standin import StandinComfy
from tests.waiting import until

FAST = AgentTiming(heartbeat=0.2, heartbeat_ttl=2, idle=0.05, comfyui_check=0.2, caps_reread=60.0, progress=0.05)
"""An agent's pace in tests: the protocol's, made short."""


def image_prompt(seed: int, batch: int = 1, delay: float = 0.0) -> dict[str, Any]:
    """A worker copy as the engine makes one: the test pack's seeded images, shown by a core output node."""
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": seed, "batch_size": batch, "width": 32, "height": 24, "delay": delay}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def unit(job_id: str, position: int, prompt: dict[str, Any], attempt: int = 0, seconds: float = 60.0,
         **fields: Any) -> UnitEntry:
    return UnitEntry(job_id=job_id, position=position, attempt=attempt, prompt=prompt,
                     deadline=time.time() + seconds, **fields)


async def outcome(queue: asyncio.Queue[UnitReply], timeout: float = 30.0) -> tuple[UnitReply, list[UnitReply]]:
    """The done or failed reply of a watched attempt, and every reply before it."""
    before: list[UnitReply] = []
    deadline = time.monotonic() + timeout
    while True:
        reply = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.01))
        if reply.kind in ("done", "failed"):
            return reply, before
        before.append(reply)


class PoolSite:
    """Stand-ins, agents and brokers of one test, on ``redis``."""

    def __init__(self, redis: RedisServer, folder: Path) -> None:
        self.redis, self.folder = redis, folder
        self.standins: list[StandinComfy] = []
        self.agents: dict[Agent, asyncio.Task[None]] = {}
        self.brokers: list[PoolBroker] = []

    async def __aenter__(self) -> PoolSite:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents:
            agent.stop()
        results = await asyncio.wait_for(asyncio.gather(*self.agents.values(), return_exceptions=True), 30)
        for broker in self.brokers:
            await broker.close()
        for standin in self.standins:
            if standin.gate is not None:
                standin.gate.set()
            await standin.stop()
        crashed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        assert not crashed, f"an agent crashed: {crashed!r}"

    async def standin(self, name: str, start: bool = True) -> StandinComfy:
        standin = StandinComfy(self.folder / name, name=name)
        self.standins.append(standin)
        if start:
            await standin.start()
        return standin

    def agent(self, standin: StandinComfy, name: str, tags: list[str] | None = None,
              url: str | None = None) -> Agent:
        """An agent in front of ``standin`` (whose port is fixed once it started), running in a task."""
        agent = Agent(self.redis.url, url or standin.url, name=name, tags=tags, timing=FAST)
        self.agents[agent] = asyncio.create_task(agent.run(), name=f"agent-{name}")
        return agent

    async def ready(self, *agents: Agent) -> None:
        await until(lambda: all(a.comfyui_up and a.caps is not None for a in agents), 20, "agents ready")

    async def live(self, broker: PoolBroker, count: int) -> list[LiveAgent]:
        """The pool's agents once ``count`` of them say their ComfyUI answers and have published their caps."""
        async def look() -> list[LiveAgent]:
            agents = await broker.agents()
            fine = [a for a in agents if a.heartbeat.comfyui and a.caps is not None]
            return agents if len(fine) == count else []

        return await until(look, 20, f"{count} agents with a ComfyUI")

    async def kill(self, agent: Agent) -> None:
        """The agent's process dies: its tasks end where they are, nothing is cleaned up in Redis."""
        task = self.agents.pop(agent)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def broker(self, master_id: str | None = None, **kwargs: Any) -> PoolBroker:
        broker = PoolBroker(self.redis.url, "default", master_id, **kwargs)
        await broker.connect()
        self.brokers.append(broker)
        return broker

    async def job(self, broker: PoolBroker, job_id: str, prompt: dict[str, Any], tags: list[str] | None = None,
                  weight: float = 1.0) -> None:
        await broker.open_job(job_id, needs_of(prompt), tags or [], weight)
