"""Queue mode: routing whole prompts and taking their results back, against stand-in workers."""

from __future__ import annotations

import pytest

import asyncio

from comfy_distributed.queue_balancer import REMOTE_OUTPUT_CLASS
from comfy_distributed.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS
from tests.component.cluster import balancer, plain
from tests.standin import StandinComfy


@pytest.fixture(autouse=True)
async def nothing_leaks(standin_cluster):
    """Every test here fails at teardown if it leaked a task or an unclosed client session (see conftest)."""
    yield

def with_collector() -> dict:
    prompt = plain()
    prompt["1"]["inputs"]["seed"] = ["5", 0]
    prompt["5"] = {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": 9}}
    prompt["6"] = {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}}
    prompt["2"]["inputs"]["images"] = ["6", 0]
    return prompt


async def test_routing_rules(tmp_path):
    assert balancer(tmp_path, [9001], queue_mode="off").route(plain())[1] is None
    idle_master = balancer(tmp_path, [9001], master_load=0, queue_mode="no_collector")
    assert idle_master.route(plain())[1] is None  # the master is the least busy: it keeps the prompt
    busy = balancer(tmp_path, [9001], queue_mode="no_collector")
    assert busy.route(with_collector())[1] is None  # distributed as usual
    routed, forward = busy.route(plain())
    assert forward is not None and forward.candidates[0].port == 9001
    assert routed == {"2": {"class_type": REMOTE_OUTPUT_CLASS, "inputs": {"forward_id": forward.forward_id,
                                                                         "node": "2"},
                            "_meta": {"title": "SaveImage (on a worker)"}}}
    everything = balancer(tmp_path, [9001], queue_mode="all")
    _, forward = everything.route(with_collector())
    assert forward is not None
    assert {n["class_type"] for n in forward.prompt.values()} == {"DistributedTestImage", "SaveImage"}
    assert forward.prompt["1"]["inputs"]["seed"] == 9 and forward.prompt["2"]["inputs"]["images"] == ["1", 0]


async def test_forwarded_prompt_brings_its_files_back(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector")
        _, forward = b.route(plain(seed=4))
        b.start(forward)
        done = await asyncio.to_thread(b.wait, forward.forward_id, "2", lambda: False)
        assert done.state == "done" and done.worker.port == w1.port
        ((file, data),) = done.outputs["2"]
        assert file.type == "output" and data.startswith(b"\x89PNG")
        assert len(w1.received) == 1


async def test_no_worker_able_means_the_master_runs_it(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        w1.execution_error = "out of memory"
        w2.execution_error = "out of memory"
        b = balancer(tmp_path, [w1.port, w2.port], queue_mode="no_collector", max_retries=1)
        _, forward = b.route(plain())
        b.start(forward)
        done = await asyncio.to_thread(b.wait, forward.forward_id, "2", lambda: False)
        assert done.state == "master"
        assert len(done.causes) == 2 and all("out of memory" in c for c in done.causes)
