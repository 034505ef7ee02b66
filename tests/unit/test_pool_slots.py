"""A master's pool slots: each stays the same participant while a job holds it, whatever the agents do meanwhile,
and never takes a configured worker's place."""

from __future__ import annotations

import asyncio

from comfy_distributed.api.schemas_out import PoolStatus
from comfy_distributed.config import GpuConfig, WorkerConfig
from comfy_distributed.pool.broker import LiveAgent
from comfy_distributed.pool.member import PoolMember
from comfy_distributed.pool.protocol import Busy, Heartbeat


class Heartbeats:
    """What a member reads of its broker here: the live agents, as the test sets them."""

    master_id = "master-a"

    def __init__(self) -> None:
        self.live: list[LiveAgent] = []

    async def agents(self) -> list[LiveAgent]:
        return self.live


def agents(count: int) -> list[LiveAgent]:
    return [LiveAgent(Heartbeat(id=f"a{k}", name=f"gpu{k}", comfyui=True), None) for k in range(count)]


def test_a_slot_stays_the_pools_while_a_job_holds_it():
    heartbeats = Heartbeats()
    member = PoolMember(heartbeats, "the test pool")  # type: ignore[arg-type]
    heartbeats.live = agents(2)
    asyncio.run(member.refresh())
    planned = member.with_slots(GpuConfig()).workers
    heartbeats.live = agents(2)
    asyncio.run(member.refresh())  # read again (every 2 s while a job runs)
    assert [member.owns(slot) for slot in planned] == [True, True]
    heartbeats.live = agents(1)
    asyncio.run(member.refresh())  # an agent went away: the job's slot 2 still reaches the pool
    assert member.owns(planned[1]) and list(member.slots) == ["pool-1"]


def test_a_slot_never_takes_a_configured_workers_place():
    heartbeats = Heartbeats()
    member = PoolMember(heartbeats, "the test pool")  # type: ignore[arg-type]
    heartbeats.live = agents(2)
    asyncio.run(member.refresh())
    mine = WorkerConfig(id="pool-1", name="my GPU", port=8189)
    workers = member.with_slots(GpuConfig(workers=[mine])).workers
    assert [str(w.id) for w in workers] == ["pool-1", "pool-2"] and workers[0] is mine
    assert not member.owns(mine) and member.owns(workers[1])


def test_the_pools_status_names_this_master_so_that_its_units_are_told_from_anothers():
    heartbeats = Heartbeats()
    member = PoolMember(heartbeats, "the test pool")  # type: ignore[arg-type]
    heartbeats.live = [LiveAgent(Heartbeat(id="a0", name="gpu0", tags=["gpu24"], comfyui=True, checkpoint="sd15",
                                           busy=Busy(job_id="j1", position=2, attempt=1, master="master-b")), None)]
    asyncio.run(member.refresh())
    shown = PoolStatus.model_validate(member.status())
    assert shown.master == "master-a" and shown.agents[0].busy == {"job_id": "j1", "position": 2, "attempt": 1,
                                                                  "master": "master-b"}


def test_a_worker_given_to_the_pool_is_reached_through_the_pool_only(tmp_path):
    """Its agent's slot is how the master reaches it: the worker itself is no direct participant then (its GPU would
    be asked twice); without a pool it is a worker like any other."""
    import json

    from comfy_distributed.cluster.core import Cluster
    from comfy_distributed.config import ConfigStore

    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [{"id": 1, "port": 8189, "pool_agent": True},
                                            {"id": 2, "port": 8190}]}))
    cluster = Cluster(ConfigStore(path), lambda event, data: None)
    assert [str(w.id) for w in cluster.config().workers] == ["1", "2"]
    heartbeats = Heartbeats()
    heartbeats.live = agents(1)
    cluster.pool = member = PoolMember(heartbeats, "the test pool")  # type: ignore[arg-type]
    asyncio.run(member.refresh())
    assert [str(w.id) for w in cluster.config().workers] == ["2", "pool-1"]
    cluster.pool = None  # the stand-in broker has nothing to close
    asyncio.run(cluster.close())


def test_an_idle_agent_waiting_for_work_outlives_redis_going_away():
    """Where an idle agent spends its time, blocked in Redis for a wake-up, Redis may fail: it waits and tries
    again, as after a failed look at the jobs, and never ends (the agent process would exit)."""
    from comfy_distributed.errors import PoolUnavailable
    from comfy_distributed.pool.agent import Agent

    agent = Agent("redis://127.0.0.1:1/0", "http://127.0.0.1:1", name="idle")
    turns: list[int] = []

    async def turn() -> bool:
        turns.append(len(turns))
        if len(turns) == 3:
            agent.stop()
        return False

    async def wait_for_work() -> None:
        raise PoolUnavailable("XREAD wake: Redis at redis://127.0.0.1:1/0 does not answer")

    agent._turn, agent._wait_for_work = turn, wait_for_work  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(agent._work_loop(), 10))
    assert turns == [0, 1, 2]
