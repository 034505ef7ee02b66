"""Several masters, one pool: two masters' jobs share the agents about evenly, and a small job submitted behind a
big one starts within one unit, not after the big one."""

from __future__ import annotations

from tests.component.pool.pool_support import image_prompt, outcome, unit
from tests.waiting import until


async def test_two_masters_jobs_each_get_about_half_of_two_agents(pool):
    agents = [pool.agent(await pool.standin(f"gpu{i}"), f"gpu{i}") for i in (1, 2)]
    first, second = await pool.broker("master-a"), await pool.broker("master-b")
    prompt = image_prompt(seed=3, delay=0.1)
    await pool.job(first, "big-a", prompt)
    await pool.job(second, "big-b", prompt)
    await pool.ready(*agents)
    watched = []
    for broker, job_id in ((first, "big-a"), (second, "big-b")):  # all of a's units are in before b's
        for position in range(6):
            watched.append(broker.watch(job_id, position, 0))
            await broker.submit(job_id, unit(job_id, position, image_prompt(seed=position, delay=0.1)))
    for queue in watched:
        done, _ = await outcome(queue)
        assert done.kind == "done", done.error
    await until(lambda: sum(len(a.served) for a in agents) == 12, 10, "the agents' records of every unit")
    for agent in agents:
        jobs = [job for job, _, _ in agent.served]
        assert abs(jobs.count("big-a") - jobs.count("big-b")) <= 1, f"{agent.name} served {jobs}"
        assert jobs[:2] in (["big-a", "big-b"], ["big-b", "big-a"]), f"{agent.name} alternates: {jobs}"


async def test_a_small_job_behind_a_big_one_starts_within_one_unit(pool):
    agent = pool.agent(await pool.standin("gpu1"), "gpu1")
    big, small = await pool.broker("master-big"), await pool.broker("master-small")
    await pool.job(big, "big", image_prompt(seed=1))
    await pool.job(small, "small", image_prompt(seed=1))
    await pool.ready(agent)
    for position in range(10):
        await big.submit("big", unit("big", position, image_prompt(seed=position, delay=0.1)))
    await until(lambda: len(agent.served) >= 2, 20, "the big job under way")
    replies = small.watch("small", 0, 0)
    await small.submit("small", unit("small", 0, image_prompt(seed=99)))
    taken_before = len(agent.served)
    done, _ = await outcome(replies)
    assert done.kind == "done", done.error
    await until(lambda: ("small", 0, 0) in agent.served, 10, "the agent's record of the small unit")  # written
    position = agent.served.index(("small", 0, 0))  # just after its done reply is sent
    assert position <= taken_before + 1, f"served {agent.served}"
