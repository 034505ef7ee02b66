"""Distributed jobs on the pool, end to end through the engine: a master with no configured worker plans a Collector
job over the pool's live agents (one slot each), the units go through Redis to agents in front of stand-in ComfyUIs,
and the Collector gets the same images, in the same order, as from workers it reaches directly."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

from comfy_distributed.errors import PoolError, WorkerLacks
from comfy_distributed.pool.broker import PoolBroker
from comfy_distributed.pool.member import PoolMember, member_for
from comfy_distributed.cluster import core
from comfy_distributed.queue_mode.balancer import FORWARD_POSITION
from tests.component.cluster import (Cluster, assert_unit_images, balancer, by_position, pixels,
                                     plain, workflow)
from tests.comfy_test_nodes import seeded_images
from tests.component.pool.pool_support import PoolSite
from tests.component.tiles_support import alone, run_tiles, tile_workflow  # noqa: F401  (alone: a fixture)
from tests.waiting import until


async def join(cluster: core.Cluster, site: PoolSite, agents: int) -> PoolMember:
    """``cluster`` in the pool of ``site``, once ``agents`` agents are live there (one slot each)."""
    member = PoolMember(PoolBroker(site.redis.url, "default"), "the test pool")
    cluster.pool = member
    member.start()
    await until(lambda: member.joined and len(member.slots) == agents, 20, f"{agents} slot(s)")
    return member


async def pool_master(site: PoolSite, tmp_path, agents: int, **settings) -> Cluster:
    """A master whose config lists no worker, in the pool of ``site`` once ``agents`` agents are live there."""
    master = Cluster(tmp_path, [], **settings)
    await join(master.orchestrator.cluster, site, agents)
    return master


async def two_agents(site: PoolSite, delay_node: bool = False) -> list:
    agents = [site.agent(await site.standin(f"gpu{k}"), f"gpu{k}") for k in (1, 2)]
    await site.ready(*agents)
    return agents


async def test_a_collector_job_runs_on_the_pools_agents_with_each_units_seed(pool, tmp_path):
    await two_agents(pool)
    async with await pool_master(pool, tmp_path, 2) as master:
        result = await master.run(workflow(seed=42))
        assert sorted(by_position(result)) == [1, 2]
        assert_unit_images(result, 1, 43)
        assert_unit_images(result, 2, 44)
        assert {name for name, _ in by_position(result).values()} == {"pool 1", "pool 2"}
        assert not master.failure_messages()


async def test_the_pools_jobs_are_closed_in_redis_when_they_end(pool, tmp_path):
    await two_agents(pool)
    async with await pool_master(pool, tmp_path, 2) as master:
        await master.run(workflow(seed=5))
        broker = master.orchestrator.cluster.pool.broker

        async def no_open_job() -> bool:
            return not await broker._client().zrange(broker.keys.jobs, 0, -1)

        await until(no_open_job, 10, "the job taken off the pool")


async def test_a_unit_no_live_agent_can_run_fails_fast_and_the_master_runs_it(pool, tmp_path):
    await two_agents(pool)
    async with await pool_master(pool, tmp_path, 2, max_retries=0) as master:
        prompt = workflow(seed=7)
        prompt["5"] = {"class_type": "NodeNobodyHas", "inputs": {"image": ["1", 0]}}
        prompt["3"]["inputs"]["images"] = ["5", 0]  # on the way to the Collector: every unit needs it
        job = master.start(prompt)
        result = await master.collect(job)
        messages = master.failure_messages()
        assert messages and all("NodeNobodyHas" in m for m in messages), messages
        assert sorted(unit.position for unit in result.master_units) == [1, 2]  # re-run on the master


async def test_a_unit_whose_agent_dies_is_told_to_its_waiter_and_rerun_with_the_same_seed(pool, tmp_path,
                                                                                        monkeypatch):
    """Both units of the job run at once, one agent dies. Whichever of the job's waiting units asks Redis for dead
    agents' entries (here the test, first), the one whose agent died hears of it and is re-run on the pool with its
    own seed (the master only coordinates), and the other keeps waiting for its own agent."""
    from comfy_distributed.pool import member as member_module

    monkeypatch.setattr(member_module, "RECLAIM_EVERY", 60.0)  # the test asks Redis itself, as another waiter
    agents = await two_agents(pool)
    for standin in pool.standins:
        standin.gate = asyncio.Event()  # both units stay running until released
    master = await pool_master(pool, tmp_path, 2, worker_timeout=300)
    config = json.loads(master.path.read_text())
    master.path.write_text(json.dumps({**config, "master": {"participates": False}}))
    async with master:
        job = master.start(workflow(seed=42))
        await until(lambda: all(a.busy is not None for a in agents), 20, "both agents running a unit")
        dying = agents[0].busy.position  # the pool chose which unit each agent took
        await pool.kill(agents[0])
        broker = master.orchestrator.cluster.pool.broker

        async def taken_by_another_waiter() -> list:  # as the other unit's transport may ask first
            return await broker.reclaim(job.job_id, 1000)

        assert [dead.position for dead in await until(taken_by_another_waiter, 20, "the dead entry")] == [dying]
        await until(lambda: any("stopped heartbeating" in m for m in master.failure_messages()), 20,
                    "the dead agent's unit reported to the master")
        pool.standins[1].gate.set()  # the living agent finishes its own unit, then the re-run
        result = await master.collect(job)
        assert_unit_images(result, 1, 43)
        assert_unit_images(result, 2, 44)
        assert not result.master_units


def test_a_malformed_pool_url_in_the_environment_is_said_without_the_password(monkeypatch):
    monkeypatch.setenv("COMFY_DISTRIBUTED_POOL", "http://user:secret@host:6379")
    with pytest.raises(PoolError) as caught:
        member_for(None)
    assert "COMFY_DISTRIBUTED_POOL" in str(caught.value) and "secret" not in str(caught.value)
    monkeypatch.delenv("COMFY_DISTRIBUTED_POOL")
    assert member_for(None) is None


async def test_a_prompt_forwarded_in_queue_mode_runs_on_an_agent_and_its_files_come_back(pool, tmp_path):
    await two_agents(pool)
    queue = balancer(tmp_path, [], queue_mode="no_collector")
    try:
        await join(queue.cluster, pool, 2)
        _, forward = queue.route(plain(seed=4))
        assert forward is not None and [w.display_name for w in forward.workers.values()] == ["pool 1", "pool 2"]
        queue.start(forward)
        done = await asyncio.to_thread(queue.wait, forward.job_id, "2", lambda: False)
        assert done.state() == "done", done.record(FORWARD_POSITION).causes
        ((_, saved),) = done.outputs()["2"].files["images"]
        seeded = seeded_images(4, 1, 8, 8).numpy()[0]  # saved as ComfyUI's SaveImage does (clipped, then truncated)
        assert pixels(saved.path.read_bytes()).tolist() == (seeded * 255).clip(0, 255).astype("uint8").tolist()
    finally:
        await queue.close()
        await queue.cluster.close()


async def test_tiles_shared_over_the_pool_give_the_image_of_the_master_alone(pool, tmp_path, alone):
    await two_agents(pool)
    prompt = tile_workflow(delay=0.05)
    async with await pool_master(pool, tmp_path, 2) as master:
        merged, job, on_master = await run_tiles(master, prompt, master_delay=0.05)
        assert job is not None and len(job.units) == 12
        assert torch.equal(merged, await alone(prompt))
        assert len(on_master) < 12  # the agents took tiles


@pytest.mark.parametrize("hold", [0.0, 6.5], ids=["units end at once", "units end after the master looked"])
async def test_redis_restarted_mid_job_the_job_still_ends_with_every_image(pool, tmp_path, hold):
    """Redis without persistence restarts while the agents run the job's units (every key gone). Units that end
    before the master's next lease refresh (every 5 s) come back as usual: the agents and the master reconnect.
    Once the master sees its job gone, it opens it again and fails the attempts Redis lost, saying so: they run
    again (here on the master), and the agents' late answers to them are dropped. Either way the job ends whole."""
    for standin in (await pool.standin("gpu1"), await pool.standin("gpu2")):
        standin.gate = asyncio.Event()  # the units wait on their ComfyUI until Redis has restarted
        pool.agent(standin, standin.name)
    async with await pool_master(pool, tmp_path, 2, max_retries=2) as master:
        job = master.start(workflow(seed=42))
        await until(lambda: all(s.received for s in pool.standins), 20, "both agents running a unit")
        pool.redis.restart()
        await asyncio.sleep(hold)
        for standin in pool.standins:
            standin.gate.set()
        result = await master.collect(job)
        images = {position: name for position, (name, _) in by_position(result).items()}
        ran_here = sorted(unit.position for unit in result.master_units)
        lost = [m for m in master.failure_messages() if "Redis lost the unit" in m]
        said = (master.failure_messages(), images, ran_here)
        if hold:
            assert len(lost) == 2 and ran_here == [1, 2], said
        else:
            assert not lost and sorted(images) == [1, 2], said
        assert sorted([*images, *ran_here]) == [1, 2], (images, ran_here)
        for position in images:
            assert_unit_images(result, position, 42 + position)


async def test_a_master_with_tags_plans_and_sends_its_units_only_to_agents_that_offer_them(pool, tmp_path):
    tagged = pool.agent(await pool.standin("big"), "big", tags=["gpu48", "video"])
    plain_agent = pool.agent(await pool.standin("small"), "small", tags=["gpu12"])
    await pool.ready(tagged, plain_agent)
    master = Cluster(tmp_path, [])
    member = PoolMember(PoolBroker(pool.redis.url, "default"), "the test pool", tags=["gpu48"], weight=3.0)
    master.orchestrator.cluster.pool = member
    member.start()
    await until(lambda: member.joined and len(member.live) == 2, 20, "both agents live")
    async with master:
        assert [agent.name for agent in member.agents] == ["big"] and len(member.slots) == 1
        result = await master.run(workflow(seed=11))
        assert sorted(by_position(result)) == [1]
        assert_unit_images(result, 1, 12)
        assert [job for job, _, _ in tagged.served] and not plain_agent.served


async def test_a_unit_no_agent_with_the_masters_tags_can_run_fails_fast_naming_the_tag(pool, tmp_path):
    agent = pool.agent(await pool.standin("small"), "small", tags=["gpu12"])
    await pool.ready(agent)
    member = PoolMember(PoolBroker(pool.redis.url, "default"), "the test pool", tags=["gpu48"], weight=2.5)
    await member.broker.connect()
    try:
        await member.refresh()
        assert len(member.live) == 1 and not member.agents and not member.slots
        transport = member.transport(member._slot(1), core.Settings(), "job-tags")
        with pytest.raises(WorkerLacks) as caught:
            await transport.run_prompt(plain(seed=1), time.monotonic() + 30)
        assert "tag gpu48" in str(caught.value), caught.value
        await member.open_job("job-tags", plain(seed=1))
        raw = await member.broker._client().get(member.broker.keys.job("job-tags"))
        record = json.loads(raw)
        assert (record["tags"], record["weight"]) == (["gpu48"], 2.5)
        await asyncio.sleep(0.3)  # the agent's turns see the job, and pass it by
        assert not agent.served
        await member.close_job("job-tags")
    finally:
        await member.broker.close()


def test_settings_pool_tags_and_weight_are_checked_and_kept_with_a_url_from_the_environment(monkeypatch):
    from comfy_distributed.config import Settings
    from comfy_distributed.pool.settings import pool_config

    settings = Settings.model_validate({"pool": {"url": "redis://h:1/0", "tags": ["video", "gpu48", "video"],
                                                 "weight": 2}})
    assert settings.pool.tags == ["gpu48", "video"] and settings.pool.weight == 2.0
    assert settings.pool.public() == {"url": "redis://h:1/0", "name": "default", "tags": ["gpu48", "video"],
                                      "weight": 2.0}
    pool = pool_config(settings, {"COMFY_DISTRIBUTED_POOL": "redis://other:2/0"})
    assert (pool.url, pool.tags, pool.weight) == ("redis://other:2/0", ["gpu48", "video"], 2.0)
    for bad, said in (({"tags": ["no spaces"]}, "tag 'no spaces'"), ({"weight": 0}, "weight"),
                      ({"weight": float("inf")}, "weight"), ({"tags": "gpu48"}, "tags")):
        with pytest.raises(Exception) as caught:
            Settings.model_validate({"pool": {"url": "redis://h:1/0", **bad}})
        assert said in str(caught.value), caught.value
