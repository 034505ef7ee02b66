"""What goes wrong in a pool, and what then happens: an agent killed mid-unit (its entry reclaimed and run again
elsewhere), a master gone (its units are never run), entries that do not fit the protocol (refused, the agent
carries on), a ComfyUI that does not answer (no unit taken until it does), Redis restarted (agents and brokers
come back, the job is opened again, its lost units reported failed)."""

from __future__ import annotations

import asyncio

from comfy_distributed.pool.protocol import MAX_UNIT_BYTES
from comfy_distributed.errors import PoolUnavailable
from tests.component.pool.pool_support import image_prompt, outcome, unit
from tests.waiting import until


async def test_a_killed_agents_unit_is_reclaimed_and_runs_again_elsewhere(pool):
    held = await pool.standin("held")
    held.gate = asyncio.Event()  # the prompt waits there until the test lets it go
    dying = pool.agent(held, "dying")
    broker = await pool.broker()
    prompt = image_prompt(seed=5)
    await pool.job(broker, "job1", prompt)
    await pool.ready(dying)
    first = broker.watch("job1", 0, 0)
    await broker.submit("job1", unit("job1", 0, prompt))
    await until(lambda: dying.busy is not None, 20, "the unit taken")
    assert await broker.reclaim("job1", idle_ms=1000) == [], "a live agent keeps its entry fresh"
    await pool.live(broker, 1)  # its name is known from its heartbeat
    await pool.kill(dying)
    reclaimed = await until(lambda: broker.reclaim("job1", idle_ms=500), 10, "the dead agent's entry")
    assert [(r.position, r.attempt, r.agent, r.message) for r in reclaimed] == \
        [(0, 0, dying.id, "agent dying stopped heartbeating")]
    assert await broker._client().xlen(broker.keys.units("job1")) == 0
    survivor = pool.agent(await pool.standin("survivor"), "survivor")
    second = broker.watch("job1", 0, 1)
    await broker.submit("job1", unit("job1", 0, prompt, attempt=1))
    done, _ = await outcome(second)
    assert (done.kind, done.attempt, done.agent) == ("done", 1, survivor.id)
    told = first.get_nowait()  # the broker failed it as it reclaimed it, to whoever waits for it
    assert (told.kind, told.attempt, told.error) == ("failed", 0, "agent dying stopped heartbeating")
    assert first.empty(), "the killed agent itself sent nothing"


async def test_an_agent_stopped_with_give_back_hands_its_unit_back_at_once(pool):
    held = await pool.standin("held")
    held.gate = asyncio.Event()
    agent = pool.agent(held, "leaving")
    broker = await pool.broker()
    prompt = image_prompt(seed=5)
    await pool.job(broker, "job1", prompt)
    await pool.ready(agent)
    await broker.submit("job1", unit("job1", 0, prompt))
    await until(lambda: agent.busy is not None, 20, "the unit taken")
    agent.stop(give_back=True)
    await until(lambda: pool.agents[agent].done(), 10, "the agent stopped")
    reclaimed = await broker.reclaim("job1", idle_ms=60_000)
    assert [(r.position, r.attempt) for r in reclaimed] == [(0, 0)]
    assert not await broker._client().exists(broker.keys.agent(agent.id)), "its heartbeat is taken away"


async def test_the_units_of_a_master_that_is_gone_are_never_run(pool):
    standin = await pool.standin("gpu1")
    gone = await pool.broker("gone", lease_interval=0.2, lease_ttl=1)
    prompt = image_prompt(seed=5)
    await pool.job(gone, "orphan", prompt)
    await gone.submit("orphan", unit("orphan", 0, prompt))
    await gone.close()  # the master dies: its lease is no longer refreshed
    client = await pool.broker()
    await until(lambda: _missing(client, client.keys.lease("orphan")), 10, "the lease expired")
    agent = pool.agent(standin, "gpu1")
    await pool.ready(agent)
    await until(lambda: _missing(client, client.keys.job("orphan")), 10, "the job record expired")
    await until(lambda: _not_listed(client, "orphan"), 10, "the job taken off the list by the agent")
    assert agent.served == [] and standin.received == []


async def test_entries_that_do_not_fit_the_protocol_are_refused_and_the_agent_carries_on(pool):
    agent = pool.agent(await pool.standin("gpu1"), "gpu1")
    broker = await pool.broker()
    prompt = image_prompt(seed=2)
    await pool.job(broker, "job1", prompt)
    redis, stream = broker._client(), broker.keys.units("job1")
    await redis.set(broker.keys.job("bad"), b"{not json")  # a job record nobody can read
    await redis.set(broker.keys.lease("bad"), b"x", ex=30)
    await redis.zadd(broker.keys.jobs, {"bad": 0})
    await redis.set(broker.keys.agent("f00"), b'{"id": "f00", "name": "x\\n"}')  # a bad heartbeat
    await redis.xadd(stream, {"unit": b"not json"})
    await redis.xadd(stream, {"unit": b"[" * 200 + b"]" * 200})
    await redis.xadd(stream, {"unit": b'{"job_id": "job1", "position": -1, "prompt": {}}'})
    await redis.xadd(stream, {"unit": b'{"job_id": "other", "position": 0, "attempt": 0, "deadline": 1e12, '
                                      b'"prompt": {"1": {"class_type": "X"}}}'})
    await redis.xadd(stream, {"unit": b" " * (MAX_UNIT_BYTES + 1)})
    await redis.xadd(stream, {"nothing": b"here"})
    await pool.ready(agent)
    replies = broker.watch("job1", 0, 0)
    await broker.submit("job1", unit("job1", 0, prompt))
    done, _ = await outcome(replies)
    assert done.kind == "done", done.error
    await until(lambda: agent.served, 10, "the agent's record of the unit")  # written just after its done reply
    assert agent.refused == 6 and agent.served == [("job1", 0, 0)]
    assert await redis.xlen(stream) == 0, "refused entries are acknowledged and deleted"
    assert [a.name for a in await broker.agents()] == ["gpu1"]


async def test_an_oversized_or_misshapen_reply_is_dropped_by_the_master(pool):
    broker = await pool.broker("m1", max_file_bytes=10)
    replies = broker.watch("job1", 0, 0)
    head = b'{"job_id": "job1", "position": 0, "attempt": 0, "agent": "a1", "agent_name": "a1", "outputs": ' \
           b'{"2": {"images": [{"filename": "x.png", "field": "f0"}]}}}'
    redis = broker._client()
    await redis.xadd(broker.inbox.stream, {"kind": b"done", "head": head, "f0": b"x" * 11})
    await redis.xadd(broker.inbox.stream, {"kind": b"done", "head": head})
    await redis.xadd(broker.inbox.stream, {"kind": b"shout", "head": head})
    await redis.xadd(broker.inbox.stream, {"kind": b"failed", "head": b"{}"})
    await redis.xadd(broker.inbox.stream, {"kind": b"done", "head": head, "f0": b"x" * 10})
    done = await asyncio.wait_for(replies.get(), 10)
    assert done.outputs["2"]["images"][0].data == b"x" * 10
    assert broker.inbox.dropped == 4 and replies.empty()
    await until(lambda: _length(broker, broker.inbox.stream, 0), 5, "read entries deleted")


async def test_an_agent_waits_for_its_comfyui_and_takes_units_once_it_answers(pool):
    standin = await pool.standin("late")
    await standin.start()
    await standin.stop()  # its port is known, nothing listens there
    agent = pool.agent(standin, "patient")
    broker = await pool.broker()
    prompt = image_prompt(seed=4)
    await pool.job(broker, "job1", prompt)
    replies = broker.watch("job1", 0, 0)
    await broker.submit("job1", unit("job1", 0, prompt))
    beats = await until(broker.agents, 10, "a heartbeat")
    assert not beats[0].heartbeat.comfyui and agent.served == []
    await standin.start()
    done, _ = await outcome(replies)
    assert done.kind == "done", done.error
    await standin.stop()
    await until(lambda: not agent.comfyui_up, 10, "the agent sees its ComfyUI gone")
    await standin.start()
    await until(lambda: agent.comfyui_up, 10, "and back")


async def test_after_redis_restarts_agents_and_brokers_come_back_and_lost_units_are_reported(pool):
    held = await pool.standin("gpu1")
    agent = pool.agent(held, "gpu1")
    broker = await pool.broker(lease_interval=0.2)
    prompt = image_prompt(seed=8)
    await pool.job(broker, "job1", prompt)
    await pool.ready(agent)
    first = broker.watch("job1", 0, 0)
    await broker.submit("job1", unit("job1", 0, prompt))
    assert (await outcome(first))[0].kind == "done"
    held.gate = asyncio.Event()
    lost = broker.watch("job1", 1, 0)
    await broker.submit("job1", unit("job1", 1, prompt))
    await until(lambda: agent.busy is not None, 20, "the second unit taken")
    await asyncio.to_thread(pool.redis.restart)  # every key is gone
    failed, _ = await outcome(lost)
    assert failed.kind == "failed" and "lost" in failed.error
    held.gate.set()
    again = broker.watch("job1", 1, 1)
    await until(lambda: _submitted(broker, "job1", unit("job1", 1, prompt, attempt=1)), 20, "a submit after it")
    done, _ = await outcome(again)
    assert (done.kind, done.attempt, done.agent) == ("done", 1, agent.id)


async def _missing(broker, key: str) -> bool:
    return not await broker._client().exists(key)


async def _not_listed(broker, job_id: str) -> bool:
    return await broker._client().zscore(broker.keys.jobs, job_id) is None


async def _length(broker, stream: str, length: int) -> bool:
    return await broker._client().xlen(stream) == length


async def _submitted(broker, job_id, entry) -> bool:
    try:
        await broker.submit(job_id, entry)
    except PoolUnavailable:
        return False
    return True
