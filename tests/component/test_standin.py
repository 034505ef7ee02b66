"""Tier 2: the ComfyUI stand-in (tests/standin) on its own, no ComfyUI needed.

Checks the stand-in against transcripts recorded from real ComfyUI 0.3.64 (see
tests/standin/parity.py) and exercises each fault-injection knob.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import pytest_asyncio

from tests.standin import StandinComfy
from tests.standin.parity import (
    TRANSCRIPTS_FILE,
    Client,
    Driver,
    describe,
    differences,
    expected_pixels,
    run_scenarios,
    save,
    image_node,
)
from tests.waiting import until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

DEADLINE = 30.0


@pytest_asyncio.fixture
async def worker(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w:
        yield w


@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as s:
        yield s


def simple_prompt(seed: int = 1, delay: float = 0.0, batch_size: int = 1, prefix: str = "w") -> dict:
    return {"1": image_node(seed, batch_size=batch_size, delay=delay), "2": save("1", prefix)}


# ------------------------------------------------------------------------------ parity


async def test_matches_transcripts_recorded_from_real_comfyui(tmp_path):
    expected = json.loads(TRANSCRIPTS_FILE.read_text())
    async with StandinComfy(tmp_path / "parity", name="parity") as w:
        actual = await run_scenarios(w.url)
    problems = differences(expected, actual)
    assert not problems, "stand-in differs from real ComfyUI:\n" + "\n".join(problems[:40])


# ------------------------------------------------------------------------------ normal path


async def test_normal_path(worker, session):
    assert worker.url == f"http://127.0.0.1:{worker.port}" and worker.port > 0
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=5, batch_size=2, delay=0.1), client, extra_data={"extra_pnginfo": {"workflow": {}}})
    await client.wait_done(prompt_id)
    sequence = [describe(e) for e in client.events]
    assert sequence[:5] == ["status:0+sid", "status:1", "status:1", "execution_start", "execution_cached:[]"]
    assert sequence[-3:] == ["execution_success", "status:0", "executing:None"]
    assert sum(s.startswith("progress:") for s in sequence) == 10
    executed = next(e["data"] for e in client.events if e["type"] == "executed")
    assert executed["output"] == {"images": [
        {"filename": "w_00001_.png", "subfolder": "", "type": "output"},
        {"filename": "w_00002_.png", "subfolder": "", "type": "output"},
    ]}
    entry = await d.history(prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert await d.pixels_match(entry["outputs"]["2"]["images"], 5, 2, 12, 8) == [True, True]
    assert (worker.base_dir / "output" / "w_00002_.png").is_file()

    [record] = worker.received
    assert record["prompt_id"] == prompt_id
    assert record["client_id"] == client.client_id
    assert record["prompt"] == simple_prompt(seed=5, batch_size=2, delay=0.1)
    assert record["extra_data"] == {"extra_pnginfo": {"workflow": {}}}
    await client.close()


async def test_rejected_prompts_are_not_recorded(worker, session):
    d = Driver(session, worker.url)
    status, body = await d.post_prompt({"1": image_node(1)})
    assert status == 400 and body["error"]["type"] == "prompt_no_outputs"
    assert worker.received == []


async def test_deleting_a_node_class_simulates_a_missing_custom_node(worker, session):
    d = Driver(session, worker.url)
    del worker.node_classes["DistributedTestImage"]
    status, body = await d.post_prompt(simple_prompt())
    assert status == 400
    assert body == {
        "error": {"type": "invalid_prompt", "message": "Cannot execute because node DistributedTestImage does not exist.",
                  "details": "Node ID '#1'", "extra_info": {}},
        "node_errors": {},
    }
    _, info = await d.request("GET", "/object_info")
    assert "DistributedTestImage" not in info and "SaveImage" in info


async def test_extra_node_classes_run_in_a_thread_and_the_loop_stays_responsive(worker, session):
    started = []

    class Blocking:
        CATEGORY = "testing"
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"seconds": ("FLOAT", {"default": 0.5})}}

        def run(self, seconds):
            import torch

            started.append(time.monotonic())
            time.sleep(seconds)  # blocks its thread, not the server
            return (torch.zeros((1, 8, 8, 3)),)

    worker.node_classes["Blocking"] = Blocking
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    prompt_id = await d.queue({"1": {"class_type": "Blocking", "inputs": {"seconds": 1.0}}, "2": save("1", "blocking")}, client)
    await until(lambda: started, timeout=DEADLINE)
    before = time.monotonic()
    status, _ = await d.request("GET", "/system_stats")
    assert status == 200 and time.monotonic() - before < 0.5
    await client.wait_done(prompt_id)
    assert (await d.history(prompt_id))["status"]["status_str"] == "success"
    await client.close()


async def test_fifo_queue_and_delete(worker, session):
    d = Driver(session, worker.url)
    worker.gate = asyncio.Event()
    client = await Client(d).connect()
    first = await d.queue(simple_prompt(seed=1), client)
    second = await d.queue(simple_prompt(seed=2), client)
    third = await d.queue(simple_prompt(seed=3), client)
    await client.wait_for(lambda e: e["type"] == "executing" and e["data"].get("prompt_id") == first)
    _, queue = await d.request("GET", "/queue")
    assert [i[1] for i in queue["queue_running"]] == [first]
    assert [i[1] for i in queue["queue_pending"]] == [second, third]
    await d.request("POST", "/queue", json={"delete": [second]})
    worker.gate.set()
    await client.wait_done(third)
    starts = [e["data"]["prompt_id"] for e in client.events if e["type"] == "execution_start"]
    assert starts == [first, third]
    assert (await d.request("GET", f"/history/{second}"))[1] == {}
    await client.close()


async def test_interrupt_and_free_are_recorded(worker, session):
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(delay=3.0), client)
    await client.wait_for(lambda e: e["type"] == "progress")
    await d.request("POST", "/interrupt", json={"prompt_id": "someone-else"})
    await d.request("POST", "/interrupt", json={"prompt_id": prompt_id})
    await client.wait_done(prompt_id)
    assert [describe(e) for e in client.events if e["type"].startswith("execution_")][-1] == "execution_interrupted:1"
    await d.request("POST", "/interrupt")
    await d.request("POST", "/free", json={"unload_models": True, "free_memory": True})
    assert worker.interrupt_calls == [{"prompt_id": "someone-else"}, {"prompt_id": prompt_id}, {}]
    assert worker.free_calls == [{"unload_models": True, "free_memory": True}]
    await client.close()


async def test_two_standins_side_by_side(tmp_path, session):
    async with StandinComfy(tmp_path / "a", name="a") as a, StandinComfy(tmp_path / "b", name="b") as b:
        assert a.port != b.port
        results = []
        for w, seed in ((a, 11), (b, 12)):
            d = Driver(session, w.url)
            client = await Client(d).connect()
            prompt_id = await d.queue(simple_prompt(seed=seed, delay=0.1), client)
            results.append((d, client, prompt_id, seed))
        for d, client, prompt_id, seed in results:
            await client.wait_done(prompt_id)
            entry = await d.history(prompt_id)
            assert entry["outputs"]["2"]["images"][0]["filename"] == "w_00001_.png"
            assert await d.pixels_match(entry["outputs"]["2"]["images"], seed, 1, 12, 8) == [True]
            await client.close()


# ------------------------------------------------------------------------------ fault knobs


async def test_fail_routes(worker, session):
    d = Driver(session, worker.url)
    worker.fail_routes["/prompt"] = 500
    assert (await d.post_prompt(simple_prompt()))[0] == 500
    assert (await d.request("GET", "/prompt"))[0] == 500
    assert (await d.request("GET", "/api/prompt"))[0] == 500
    assert (await d.request("GET", "/queue"))[0] == 200
    assert worker.received == []

    worker.fail_routes["/history/{prompt_id}"] = 503
    assert (await d.request("GET", "/history/abc"))[0] == 503
    worker.fail_routes["/view"] = 404
    assert (await d.request("GET", "/view", params={"filename": "x.png"}))[0] == 404

    worker.fail_routes["/ws"] = 503
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(f"{worker.url}/ws?clientId=abc")
    assert info.value.status == 503

    worker.fail_routes.clear()
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(), client)
    await client.wait_done(prompt_id)
    await client.close()


async def test_execution_error(worker, session):
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    done = await d.queue(simple_prompt(seed=3), client)
    await client.wait_done(done)

    worker.execution_error = "CUDA out of memory (injected)"
    for _ in range(2):  # stays on, even for a prompt whose outputs are cached
        start = len(client.events)
        prompt_id = await d.queue(simple_prompt(seed=3), client)
        await client.wait_done(prompt_id, start)
        error = next(e["data"] for e in client.events[start:] if e["type"] == "execution_error")
        assert error["exception_message"] == "CUDA out of memory (injected)\n"  # ComfyUI appends "\n"
        assert error["exception_type"] == "RuntimeError"
        assert error["node_id"] == "1" and error["node_type"] == "DistributedTestImage"
        assert error["executed"] == [] and error["current_inputs"]["seed"] == [3]
        assert isinstance(error["traceback"], list) and error["traceback"]
        assert sorted(error["current_outputs"]) == ["1", "2"]
        sequence = [describe(e) for e in client.events[start:]]
        assert sequence[-3:] == ["execution_error:1", "status:0", "executing:None"]
        entry = await d.history(prompt_id)
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        assert entry["outputs"] == {}

    worker.execution_error = None
    start = len(client.events)
    prompt_id = await d.queue(simple_prompt(seed=3), client)
    await client.wait_done(prompt_id, start)
    assert (await d.history(prompt_id))["status"]["status_str"] == "success"
    await client.close()


async def test_gate_freezes_the_worker_mid_job(worker, session):
    d = Driver(session, worker.url)
    worker.gate = asyncio.Event()
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=4), client)
    await client.wait_for(lambda e: e["type"] == "executing" and e["data"].get("node") == "1")
    # frozen: the server answers, the job shows as running, nothing more happens
    for _ in range(5):
        _, queue = await d.request("GET", "/queue")
        assert [i[1] for i in queue["queue_running"]] == [prompt_id]
        assert (await d.request("GET", f"/history/{prompt_id}"))[1] == {}
    assert [describe(e) for e in client.events][-1] == "executing:1"
    worker.gate.set()
    await client.wait_done(prompt_id)
    assert (await d.history(prompt_id))["status"]["status_str"] == "success"

    # an interrupt sent to a frozen worker takes effect when it thaws, like ComfyUI's flag
    worker.gate = asyncio.Event()
    start = len(client.events)
    prompt_id = await d.queue(simple_prompt(seed=5), client)
    await client.wait_for(lambda e: e["type"] == "executing" and e["data"].get("node") == "1", start)
    await d.request("POST", "/interrupt")
    worker.gate.set()
    await client.wait_done(prompt_id, start)
    assert "execution_interrupted:1" in [describe(e) for e in client.events[start:]]
    await client.close()


async def test_view_delay(worker, session):
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=6), client)
    await client.wait_done(prompt_id)
    image = (await d.history(prompt_id))["outputs"]["2"]["images"][0]
    worker.view_delay = 0.6
    before = time.monotonic()
    view = asyncio.create_task(d.view(image))
    status, _ = await d.request("GET", "/system_stats")  # not held up by the slow transfer
    assert status == 200 and time.monotonic() - before < 0.5
    status, data, _ = await view
    assert status == 200 and data and time.monotonic() - before >= 0.6
    await client.close()


async def test_drop_ws_after_start(worker, session):
    d = Driver(session, worker.url)
    worker.drop_ws_after_start = True
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=7, delay=0.3), client)
    await until(lambda: client.closed, timeout=DEADLINE)
    assert [e["type"] for e in client.events][-1] == "execution_start"
    entry = await d.history(prompt_id)  # the job itself carries on
    assert entry["status"]["status_str"] == "success"

    worker.drop_ws_after_start = False
    again = await Client(d, client.client_id).connect()
    prompt_id = await d.queue(simple_prompt(seed=8), again)
    await again.wait_done(prompt_id)
    await again.close()
    await client.close()


async def test_execution_delay_scale(worker, session):
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    worker.execution_delay_scale = 0.01
    before = time.monotonic()
    prompt_id = await d.queue(simple_prompt(seed=9, delay=60.0), client)
    await client.wait_done(prompt_id)
    assert time.monotonic() - before < 10
    assert sum(e["type"] == "progress" for e in client.events) == 10

    worker.execution_delay_scale = 0.0
    start = len(client.events)
    prompt_id = await d.queue(simple_prompt(seed=10, delay=60.0), client)
    await client.wait_done(prompt_id, start)
    assert not any(e["type"] == "progress" for e in client.events[start:])
    assert await d.pixels_match((await d.history(prompt_id))["outputs"]["2"]["images"], 10, 1, 12, 8) == [True]
    await client.close()


async def test_stop_and_start_on_the_same_port(worker, session):
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=12), client)
    await client.wait_done(prompt_id)
    port = worker.port

    await worker.stop()
    await until(lambda: client.closed, timeout=DEADLINE)
    with pytest.raises(aiohttp.ClientConnectionError):
        await d.request("GET", "/system_stats")
    await worker.start()
    assert worker.port == port
    assert (await d.request("GET", "/system_stats"))[0] == 200
    # a restarted ComfyUI has lost its history and queue; files and the test records remain
    assert (await d.request("GET", f"/history/{prompt_id}"))[1] == {}
    assert (worker.base_dir / "output" / "w_00001_.png").is_file()
    assert len(worker.received) == 1
    again = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=12), again)
    await again.wait_done(prompt_id)
    assert (await d.history(prompt_id))["outputs"]["2"]["images"][0]["filename"] == "w_00002_.png"
    await again.close()
    await client.close()


async def test_stop_keep_state_is_only_a_network_outage(worker, session):
    d = Driver(session, worker.url)
    client = await Client(d).connect()
    prompt_id = await d.queue(simple_prompt(seed=13, delay=0.5), client)
    await client.wait_for(lambda e: e["type"] == "progress")
    await worker.stop(keep_state=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await d.request("GET", "/queue")
    await worker.start()
    entry = await d.history(prompt_id)  # it finished while nobody could reach the worker
    assert entry["status"]["status_str"] == "success"
    await client.close()


async def test_expected_pixels_are_those_of_the_test_node_pack():
    from tests.comfy_test_nodes import seeded_images

    [pixels] = expected_pixels(3, 1, 4, 2)
    assert pixels.shape == (2, 4, 3) and pixels.dtype.name == "uint8"
    assert (pixels == (seeded_images(3, 1, 4, 2)[0].numpy() * 255).clip(0, 255).astype("uint8")).all()
