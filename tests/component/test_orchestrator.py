"""The orchestrator against stand-in ComfyUI workers (real aiohttp servers on port 0)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_distributed.config import ConfigStore
from comfy_distributed.errors import JobError
from comfy_distributed.orchestrator import CollectorResult, Orchestrator
from comfy_distributed.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS, JOB_INPUT
from tests.comfy_test_nodes import seeded_images
from tests.standin import StandinComfy


def workflow(seed: int = 42, batch: int = 2, delay: float = 0.0) -> dict:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": batch, "width": 32, "height": 24, "delay": delay}},
        "2": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": seed}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "out"}},
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class Cluster:
    """An orchestrator whose config lists the given worker ports, recording its UI events."""

    def __init__(self, tmp_path: Path, ports: list[int], **settings: float) -> None:
        self.path = tmp_path / "gpu_config.json"
        workers = [{"id": i + 1, "name": f"GPU {i + 1}", "port": p, "enabled": True} for i, p in enumerate(ports)]
        self.path.write_text(json.dumps({"workers": workers, "settings": settings}))
        self.events: list[tuple[str, dict]] = []
        self.orchestrator = Orchestrator(ConfigStore(self.path), lambda e, d: self.events.append((e, d)))

    async def run(self, prompt: dict, collector: str = "3", interrupted=lambda: False) -> CollectorResult:
        marked, job = self.orchestrator.prepare(prompt)
        assert job is not None
        assert marked[collector]["inputs"][JOB_INPUT] == job.job_id
        self.orchestrator.start(job)
        return await asyncio.to_thread(self.orchestrator.collect, job.job_id, collector, interrupted)

    def failure_messages(self) -> list[str]:
        return [d["message"] for e, d in self.events if e == "multigpu.worker_failed"]


def pixels(blob: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(blob)).convert("RGB"))


def expected_pixels(seed: int, batch: int) -> list[np.ndarray]:
    images = seeded_images(seed, batch, 32, 24).numpy()
    return [np.clip(255.0 * image, 0, 255).astype(np.uint8) for image in images]


@pytest.fixture
async def two_workers(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        yield w1, w2


async def test_workers_run_plain_copies_with_offset_seeds_in_order(tmp_path, two_workers):
    w1, w2 = two_workers
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow(seed=42))
    assert result.failures == []
    assert [share.name for share, _ in result.images] == ["GPU 1", "GPU 2"]
    for (share, blobs), seed in zip(result.images, (43, 44)):
        assert [pixels(b).tolist() for b in blobs] == [p.tolist() for p in expected_pixels(seed, 2)]
    for worker, seed in ((w1, 43), (w2, 44)):
        (body,) = worker.received
        prompt = body["prompt"]
        assert body["client_id"]
        assert {n["class_type"] for n in prompt.values()} == {"DistributedTestImage", "PreviewImage"}
        assert prompt["1"]["inputs"]["seed"] == seed


async def test_unreachable_worker_is_left_out_with_a_message(tmp_path, two_workers):
    w1, _ = two_workers
    cluster = Cluster(tmp_path, [w1.port, closed_port()], connect_timeout=2)
    started = time.monotonic()
    result = await cluster.run(workflow())
    assert time.monotonic() - started < 10
    assert [share.name for share, _ in result.images] == ["GPU 1"]
    (failed,) = result.failures
    assert failed.reason == "unreachable"
    (message,) = cluster.failure_messages()
    assert message.startswith("Worker GPU 2:") and "cannot connect" in message


async def test_worker_missing_a_node_class_is_named(tmp_path, two_workers):
    w1, w2 = two_workers
    del w2.node_classes["DistributedTestImage"]
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow())
    assert [share.name for share, _ in result.images] == ["GPU 1"]
    (failed,) = result.failures
    assert failed.reason == "rejected"
    assert "DistributedTestImage" in failed.error
    assert any("GPU 2" in m and "DistributedTestImage" in m for m in cluster.failure_messages())


async def test_execution_error_on_a_worker(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.execution_error = "CUDA out of memory (simulated)"
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow())
    assert [share.name for share, _ in result.images] == ["GPU 2"]
    (failed,) = result.failures
    assert failed.reason == "execution_error"
    assert "CUDA out of memory (simulated)" in failed.error


async def test_http_500_on_prompt(tmp_path, two_workers):
    w1, w2 = two_workers
    w2.fail_routes = {"/prompt": 500}
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow())
    (failed,) = result.failures
    assert failed.name == "GPU 2" and failed.reason == "protocol_error" and "HTTP 500" in failed.error


async def test_frozen_worker_times_out_and_is_cancelled_on_the_worker(tmp_path, two_workers):
    w1, w2 = two_workers
    w2.gate = asyncio.Event()  # never set: the worker hangs mid-job
    cluster = Cluster(tmp_path, [w1.port, w2.port], worker_timeout=1.5, connect_timeout=1)
    started = time.monotonic()
    result = await cluster.run(workflow())
    assert time.monotonic() - started < 1.5 + 5
    (failed,) = result.failures
    assert failed.name == "GPU 2" and failed.reason == "timeout"
    assert [share.name for share, _ in result.images] == ["GPU 1"]
    deadline = time.monotonic() + 5
    while not w2.interrupt_calls and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert w2.interrupt_calls, "the timed-out prompt was not interrupted on the worker"
    w2.gate.set()


async def test_websocket_drop_falls_back_to_history(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.drop_ws_after_start = True
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    result = await cluster.run(workflow(delay=0.3))
    assert result.failures == []
    assert [len(blobs) for _, blobs in result.images] == [2, 2]


async def test_slow_view_is_bounded_by_the_timeout(tmp_path, two_workers):
    w1, w2 = two_workers
    w2.view_delay = 30.0
    cluster = Cluster(tmp_path, [w1.port, w2.port], worker_timeout=2, connect_timeout=1)
    started = time.monotonic()
    result = await cluster.run(workflow())
    assert time.monotonic() - started < 2 + 5
    (failed,) = result.failures
    assert failed.name == "GPU 2" and failed.reason == "timeout"


async def test_interrupt_on_master_cancels_workers(tmp_path, two_workers):
    w1, w2 = two_workers
    w1.gate = asyncio.Event()
    w2.gate = asyncio.Event()
    cluster = Cluster(tmp_path, [w1.port, w2.port])
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def press_cancel_when_running():
        deadline = time.monotonic() + 10
        while not (w1.received and w2.received) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cancel.set()

    presser = loop.create_task(press_cancel_when_running())
    with pytest.raises(JobError, match="interrupted"):
        await cluster.run(workflow(), interrupted=cancel.is_set)
    await presser
    deadline = time.monotonic() + 5
    while not (w1.interrupt_calls and w2.interrupt_calls) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert w1.interrupt_calls and w2.interrupt_calls
    w1.gate.set()
    w2.gate.set()


async def test_no_enabled_workers_leaves_the_prompt_alone(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [{"id": 1, "port": 8189, "enabled": False}]}))
    orchestrator = Orchestrator(ConfigStore(path))
    prompt = workflow()
    marked, job = orchestrator.prepare(prompt)
    assert job is None and marked is prompt


async def test_bad_config_fails_the_collector_with_the_reason(tmp_path):
    path = tmp_path / "gpu_config.json"
    path.write_text('{"workers": [{"id": 1, "port": "eighty"}]}')
    orchestrator = Orchestrator(ConfigStore(path))
    marked, job = orchestrator.prepare(workflow())
    assert job is not None
    with pytest.raises(JobError, match=r"gpu_config.json: workers\[0\].port"):
        orchestrator.collect(job.job_id, "3", lambda: False)
    assert path.read_text() == '{"workers": [{"id": 1, "port": "eighty"}]}'
