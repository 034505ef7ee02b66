"""Queue mode: routing whole prompts and taking their results back, against stand-in workers."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from PIL import Image

from comfy_distributed.queue_mode.balancer import FORWARD_POSITION, REMOTE_OUTPUT_CLASS
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS
from tests.component.cluster import balancer, plain
from tests.standin import StandinComfy
from tests.waiting import until


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
    assert forward is not None and list(forward.workers.values())[0].port == 9001
    assert routed == {"2": {"class_type": REMOTE_OUTPUT_CLASS, "inputs": {"forward_id": forward.job_id,
                                                                         "node": "2"},
                            "_meta": {"title": "SaveImage (on a worker)"}}}
    everything = balancer(tmp_path, [9001], queue_mode="all")
    _, forward = everything.route(with_collector())
    assert forward is not None
    assert {n["class_type"] for n in forward.units[FORWARD_POSITION].prompt.values()} == {"DistributedTestImage", "SaveImage"}
    assert forward.units[FORWARD_POSITION].prompt["1"]["inputs"]["seed"] == 9 and forward.units[FORWARD_POSITION].prompt["2"]["inputs"]["images"] == ["1", 0]


async def test_forwarded_prompt_brings_its_files_back(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector")
        _, forward = b.route(plain(seed=4))
        b.start(forward)
        done = await asyncio.to_thread(b.wait, forward.job_id, "2", lambda: False)
        assert done.state() == "done" and done.worker_of(FORWARD_POSITION).port == w1.port
        ((file, saved),) = done.outputs()["2"].files["images"]
        assert file.type == "output" and saved.path.read_bytes().startswith(b"\x89PNG")
        assert saved.reference["subfolder"] == f"worker-{done.worker_of(FORWARD_POSITION).id}" and saved.reference["type"] == "output"
        assert len(w1.received) == 1


async def test_no_worker_able_means_the_master_runs_it(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        w1.execution_error = "out of memory"
        w2.execution_error = "out of memory"
        b = balancer(tmp_path, [w1.port, w2.port], queue_mode="no_collector", max_retries=1)
        _, forward = b.route(plain())
        b.start(forward)
        done = await asyncio.to_thread(b.wait, forward.job_id, "2", lambda: False)
        assert done.state() == "master"
        assert len(done.record(FORWARD_POSITION).causes) == 2 and all("out of memory" in c for c in done.record(FORWARD_POSITION).causes)


def slow(prompt: dict, delay: float) -> dict:
    prompt["1"]["inputs"]["delay"] = delay
    return prompt


def with_checkpoint(prompt: dict, name: str) -> dict:
    """``prompt`` naming checkpoint ``name`` (an input ComfyUI ignores on a node that does not declare it)."""
    prompt["1"]["inputs"]["ckpt_name"] = name
    return prompt


async def run_forward(b, prompt: dict):
    _, forward = b.route(prompt)
    assert forward is not None
    b.start(forward)
    return await asyncio.to_thread(b.wait, forward.job_id, "2", lambda: False)


async def test_a_worker_that_lacks_a_node_is_never_given_the_prompt_and_the_user_is_told(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        del w1.node_classes["DistributedTestImage"]
        events: list = []
        b = balancer(tmp_path, [w1.port, w2.port], events=events, queue_mode="no_collector", max_retries=0)
        first = await run_forward(b, plain(seed=7))  # GPU 1 not asked yet: found lacking when it is sent there
        assert first.state() == "done" and first.worker_of(FORWARD_POSITION).port == w2.port and w1.received == []
        (failed,) = [data for name, data in events if name == "multigpu.worker_failed"]
        assert failed["reason"] == "preflight" and "node class DistributedTestImage" in failed["message"]
        assert failed["rerun"] is True  # a worker found lacking does not use up max_retries (0 here)
        for seed in (8, 9):  # now known: GPU 1 is no candidate at all, and that is said once
            _, forward = b.route(plain(seed=seed))
            assert [w.port for w in list(forward.workers.values())] == [w2.port]
            b.discard(forward)
        notices = [data["message"] for name, data in events if name == "multigpu.notice"]
        assert len(notices) == 1 and "worker GPU 1" in notices[0] and "DistributedTestImage" in notices[0]
        assert w1.received == []
        await b.close()
        await b.cluster.close()


async def test_when_no_worker_can_run_it_the_master_keeps_it(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        del w1.node_classes["DistributedTestImage"]
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector")
        await run_forward(b, plain())  # learns what GPU 1 has; the master runs this one
        routed, forward = b.route(plain(seed=4))
        assert forward is None and routed["2"]["class_type"] == "SaveImage"
        await b.close()
        await b.cluster.close()


async def test_a_master_that_lacks_a_model_sends_the_prompt_on_even_when_idle(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        events: list = []
        b = balancer(tmp_path, [w1.port], master_load=0, events=events, queue_mode="no_collector",
                     master_lacks=lambda prompt, synced: ["ckpt_name 'big.safetensors' (node 1, CheckpointLoader)"])
        done = await run_forward(b, plain(seed=5))
        assert done.state() == "done" and done.worker_of(FORWARD_POSITION).port == w1.port
        (notice,) = [data["message"] for name, data in events if name == "multigpu.notice"]
        assert "the master" in notice and "big.safetensors" in notice
        await b.close()
        await b.cluster.close()


async def test_the_input_files_a_prompt_loads_are_sent_with_it(tmp_path):
    input_dir = tmp_path / "master-input"
    input_dir.mkdir()
    Image.fromarray(np.full((6, 5, 3), 77, dtype=np.uint8)).save(input_dir / "pic.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        b = balancer(tmp_path, [w1.port], input_dir=input_dir, queue_mode="no_collector")
        done = await run_forward(b, prompt)
        assert done.state() == "done", done.record(FORWARD_POSITION).causes
        assert (w1.base_dir / "input" / "pic.png").read_bytes() == (input_dir / "pic.png").read_bytes()
        ((file, saved),) = done.outputs()["2"].files["images"]
        assert np.array(Image.open(saved.path)).max() == 77
        await b.close()
        await b.cluster.close()


async def test_a_latent_output_comes_back_with_its_file(tmp_path):
    prompt = {"1": {"class_type": "DistributedTestLatent", "inputs": {"seed": 3, "batch_size": 1, "width": 16,
                                                                      "height": 16}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/q"}}}
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector")
        done = await run_forward(b, prompt)
        assert done.state() == "done", done.record(FORWARD_POSITION).causes
        output = done.outputs()["2"]
        ((file, saved),) = output.files["latents"]
        data = saved.path.read_bytes()
        assert file.filename.endswith(".latent") and file.subfolder == "latents"
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        assert header["latent_tensor"]["shape"] == [1, 4, 2, 2]
        assert data == (w1.base_dir / "output" / "latents" / file.filename).read_bytes()
        await b.close()
        await b.cluster.close()


async def test_of_two_idle_workers_the_one_that_ran_the_checkpoint_gets_it(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        b = balancer(tmp_path, [w1.port, w2.port], master_load=5, queue_mode="no_collector")
        b.cluster.models.ran("2", with_checkpoint(plain(), "sdxl.safetensors"))
        done = await run_forward(b, with_checkpoint(plain(seed=11), "sd15.safetensors"))
        assert done.worker_of(FORWARD_POSITION).port == w1.port  # nobody ran sd15: the first in config order
        assert b.cluster.models.last("1") == {"sd15.safetensors"}  # recorded when it was sent there
        _, forward = b.route(with_checkpoint(plain(seed=12), "sdxl.safetensors"))
        assert [w.port for w in list(forward.workers.values())] == [w2.port, w1.port]
        b.discard(forward)
        _, forward = b.route(with_checkpoint(plain(seed=13), "sd15.safetensors"))
        assert [w.port for w in list(forward.workers.values())] == [w1.port, w2.port]
        b.discard(forward)
        await b.close()
        await b.cluster.close()


async def test_load_comes_before_the_loaded_checkpoint_and_speed_breaks_ties(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        b = balancer(tmp_path, [w1.port, w2.port], master_load=5, queue_mode="no_collector")
        _, busy = b.route(slow(with_checkpoint(plain(seed=20), "sd15.safetensors"), 1.0))
        b.start(busy)
        await until(lambda: w1.received, 5, "GPU 1 runs the first prompt")
        _, forward = b.route(with_checkpoint(plain(seed=21), "sd15.safetensors"))  # GPU 1 has it, but is busy
        assert [w.port for w in list(forward.workers.values())] == [w2.port, w1.port]
        b.discard(forward)
        await asyncio.to_thread(b.wait, busy.job_id, "2", lambda: False)
        b.cluster.speeds.learn("2", 4.0, 1.0)  # GPU 2 is the faster one: with both idle and neither holding sd21, it wins
        _, forward = b.route(with_checkpoint(plain(seed=22), "sd21.safetensors"))
        assert [w.port for w in list(forward.workers.values())] == [w2.port, w1.port]
        b.discard(forward)
        await b.close()
        await b.cluster.close()


async def test_the_least_busy_setting_keeps_the_old_rule(tmp_path):
    b = balancer(tmp_path, [9001, 9002], master_load=5, queue_mode="no_collector", queue_routing="least_busy")
    b.cluster.models.ran("2", with_checkpoint(plain(), "sd15.safetensors"))
    b.cluster.speeds.learn("2", 10.0, 1.0)
    _, forward = b.route(with_checkpoint(plain(seed=30), "sd15.safetensors"))
    assert [w.port for w in list(forward.workers.values())] == [9001, 9002]  # config order, whatever GPU 2 ran or how fast
    idle_master = balancer(tmp_path, [9001], master_load=0, queue_mode="no_collector", queue_routing="least_busy")
    idle_master.cluster.models.ran("1", with_checkpoint(plain(), "sd15.safetensors"))
    assert idle_master.route(with_checkpoint(plain(), "sd15.safetensors"))[1] is None  # a tie: the master keeps it


async def test_a_worker_that_dies_with_the_prompt_hands_it_to_the_next(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        w2.execution_delay_scale = 0.01
        events: list = []
        b = balancer(tmp_path, [w1.port, w2.port], events=events, queue_mode="no_collector", worker_timeout=20)
        _, forward = b.route(slow(plain(seed=40), 5.0))
        b.start(forward)
        await until(lambda: w1.received, 5, "GPU 1 runs the prompt")
        await w1.stop()  # the worker process goes away mid-prompt
        done = await asyncio.to_thread(b.wait, forward.job_id, "2", lambda: False)
        assert done.state() == "done" and done.worker_of(FORWARD_POSITION).port == w2.port
        ((_, saved),) = done.outputs()["2"].files["images"]
        assert saved.path.read_bytes().startswith(b"\x89PNG")
        (failed,) = [data for name, data in events if name == "multigpu.worker_failed"]
        assert failed["worker"] == "GPU 1" and failed["rerun"] is True
        await b.close()
        await b.cluster.close()


class QueueHost:
    """The master's queue as the balancer sees it: the next number, the prompts waiting, and the moves asked."""

    def __init__(self) -> None:
        self.number, self.waiting, self.promoted = 7, set(), []

    def next_number(self):
        return self.number

    def pending_prompts(self):
        return set(self.waiting)

    def promote(self, prompt_id, number):
        self.promoted.append((prompt_id, number))
        return prompt_id in self.waiting


async def test_a_stand_in_waits_at_the_back_of_the_master_s_queue_until_its_worker_is_done(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        b = balancer(tmp_path, [w1.port], master_load=3, queue_mode="no_collector")
        b.host = host = QueueHost()
        _, forward = b.route(slow(plain(seed=50), 0.5))
        deferred = b.deferred_number(forward)
        assert deferred >= 1e12 and forward.number == 6.5  # behind everything; then between prompts 6 and 7
        host.waiting.add("p-50")
        b.start(forward, "p-50")
        assert b._load_of_master() == 2  # the waiting stand-in holds up nothing
        assert host.promoted == []  # not while the worker runs it
        await asyncio.to_thread(b.wait, forward.job_id, "2", lambda: False)
        assert host.promoted == [("p-50", 6.5)]
        await b.close()
        await b.cluster.close()


async def test_the_prompt_hook_queues_a_forwarded_prompt_s_stand_in_at_the_back(tmp_path):
    from comfy_distributed.collector.orchestrator import Orchestrator
    from comfy_distributed.comfy.prompt_hook import make_prompt_handler

    b = balancer(tmp_path, [9001], master_load=3, queue_mode="no_collector")
    b.host = QueueHost()
    handler = make_prompt_handler(Orchestrator(b.cluster), b)
    routed = handler({"prompt": plain(seed=51), "client_id": "c"})
    assert routed["prompt"]["2"]["class_type"] == REMOTE_OUTPUT_CLASS and routed["number"] >= 1e12
    kept = handler({"prompt": plain(seed=52), "client_id": "c", "front": True})
    assert kept["prompt"]["2"]["class_type"] == REMOTE_OUTPUT_CLASS and "number" not in kept  # the client's place
    own = handler({"prompt": plain(seed=53), "number": 3})
    assert own["number"] == 3
    for forward in list(b._jobs.values()):
        b.discard(forward)
