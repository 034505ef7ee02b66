"""A unit through the pool: submitted by a master's broker, run by an agent on a stand-in ComfyUI, its outputs back
byte for byte as a direct run gives them; capabilities and tags decide which agent takes it."""

from __future__ import annotations

import time

from comfy_distributed.config import Settings, WorkerConfig
from comfy_distributed.pool.caps import needs_of
from comfy_distributed.pool.keys import GROUP
from comfy_distributed.worker_client import WorkerClient
from tests.component.pool.pool_support import image_prompt, outcome, unit
from tests.waiting import until


async def direct_images(url: str, prompt: dict) -> list[bytes]:
    worker = WorkerConfig(id="direct", port=int(url.rsplit(":", 1)[1]), host=url)
    async with WorkerClient(worker, Settings()) as client:
        result = await client.run_prompt(prompt, time.monotonic() + 30)
        return await client.fetch_files(result.images("2"), time.monotonic() + 30)


async def test_a_unit_comes_back_as_a_direct_run_gives_it(pool):
    standin = await pool.standin("gpu1")
    agent = pool.agent(standin, "gpu one")
    broker = await pool.broker("master-a")
    prompt = image_prompt(seed=7, batch=2, delay=0.3)
    await pool.job(broker, "job1", prompt)
    await pool.ready(agent)
    replies = broker.watch("job1", 0, 0)
    await broker.submit("job1", unit("job1", 0, prompt, wanted=["2"]))
    done, before = await outcome(replies)
    assert done.kind == "done", done.error
    assert (done.agent, done.agent_name) == (agent.id, "gpu one")
    images = done.outputs["2"]["images"]
    assert [f.data for f in images] == await direct_images(standin.url, prompt)
    assert [f.type for f in images] == ["temp", "temp"]
    progress = [r for r in before if r.kind == "progress"]
    assert progress and progress[-1].max == 10 and len(progress) <= 10, "throttled progress of the 10 steps"
    await until(lambda: agent.served, 10, "the agent's record of the unit")  # written just after its done reply
    assert agent.served == [("job1", 0, 0)]
    client = broker._client()
    assert await client.xlen(broker.keys.units("job1")) == 0, "the entry is acknowledged and deleted"
    await broker.close_job("job1")
    assert not await client.exists(broker.keys.job("job1"), broker.keys.lease("job1"), broker.keys.units("job1"))


async def test_input_files_travel_through_redis_and_are_renamed_when_comfyui_renames_them(pool):
    standin = await pool.standin("gpu1")
    (standin.base_dir / "input").mkdir(parents=True, exist_ok=True)
    (standin.base_dir / "input" / "cat.png").write_bytes(b"another cat")  # the upload must not overwrite it
    agent = pool.agent(standin, "gpu1")
    broker = await pool.broker()
    png = _png()
    sha = await broker.put_file(png)
    assert await broker.put_file(png) == sha, "content-addressed: the same key"
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    await broker.open_job("job1", needs_of(prompt, {"cat.png"}))
    await pool.ready(agent)
    replies = broker.watch("job1", 0, 0)
    await broker.submit("job1", unit("job1", 0, prompt, files=[{"sha256": sha, "name": "cat.png", "subfolder": ""}]))
    done, _ = await outcome(replies)
    assert done.kind == "done", done.error
    ran = standin.received[-1]["prompt"]["1"]["inputs"]["image"]
    assert ran != "cat.png" and ran.endswith(".png"), "ComfyUI kept its own cat.png and named ours anew"
    assert (standin.base_dir / "input" / "cat.png").read_bytes() == b"another cat"


async def test_a_unit_no_agent_can_run_is_never_taken_and_the_broker_says_what_is_missing(pool):
    lacking = await pool.standin("small")
    del lacking.node_classes["DistributedTestImage"]
    small = pool.agent(lacking, "small", tags=["gpu48"])
    untagged = pool.agent(await pool.standin("untagged"), "untagged")
    broker = await pool.broker()
    prompt = image_prompt(seed=1)
    await pool.job(broker, "job1", prompt, tags=["gpu48"])
    await pool.ready(small, untagged)
    await broker.submit("job1", unit("job1", 0, prompt))
    agents = await pool.live(broker, 2)
    lacks = {a.name: a.lacks(needs_of(prompt), ["gpu48"]) for a in agents}
    assert lacks == {"small": ["node class DistributedTestImage"], "untagged": ["tag gpu48"]}
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # many turns of both agents
        assert await broker._client().xpending(broker.keys.units("job1"), GROUP) == \
            {"pending": 0, "min": None, "max": None, "consumers": []}
        await until(lambda: True, 1)
    assert small.served == untagged.served == []
    fitting = pool.agent(await pool.standin("big"), "big", tags=["gpu48", "video"])
    replies = broker.watch("job1", 0, 0)
    done, _ = await outcome(replies)
    assert (done.kind, done.agent) == ("done", fitting.id)


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()
