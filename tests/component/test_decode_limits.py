"""A worker that sends a decode bomb (a small PNG claiming 7000x7000) is refused before anything is decoded, on
every path its bytes take: a coordinator-only master's first unit, results it posts itself (job_complete), and a
tile job's tiles. The unit counts as failed by that worker; a tile is run on the master instead."""

from __future__ import annotations

import asyncio
import base64
import functools
import struct
import zlib
from typing import Any, Callable

import pytest
import torch

from comfy_distributed.host import runtime
from comfy_distributed.host.interface import DetachedHost
from comfy_distributed.collector.codecs import PNG_SIGNATURE
from comfy_distributed.collector.nodes import MultiGPUCollector, MultiGPUUnitPart
from comfy_distributed.queue_mode.balancer import QueueBalancer
from comfy_distributed.tiles.nodes import MultiGPUTileMerge, MultiGPUTileSource, MultiGPUTileStart, MultiGPUTileStep
from tests.comfy_test_nodes import DistributedTestTileWork, seeded_images
from tests.component import api_support
from tests.component.cluster import workflow
from tests.standin import StandinComfy
from tests.waiting import until
from tests.dynamic_prompt import FakeDynamicPrompt


@functools.lru_cache(maxsize=1)
def png_bomb() -> bytes:
    """About 140 KiB that inflate to a 7000x7000 RGB image (3.7 GB once decoded as float)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, rows = zlib.compressobj(9), bytes(1 + 3 * 7000) * 250
    data = b"".join(packer.compress(rows) for _ in range(28)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", 7000, 7000, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def sends_bombs(worker: StandinComfy, when: Callable[[dict], bool] = lambda extra_data: True) -> None:
    """``worker`` lists a bomb in place of the images of its prompts ``when`` their ``extra_data`` says so (in its
    history, which is then read)."""
    (worker.base_dir / "output").mkdir(parents=True, exist_ok=True)
    (worker.base_dir / "output" / "bomb.png").write_bytes(png_bomb())
    bomb = [{"filename": "bomb.png", "subfolder": "", "type": "output"}]

    def tamper(body: dict) -> dict:
        return {prompt_id: {**item, "outputs": {node: {**out, "images": bomb} for node, out in item["outputs"].items()}}
                if when(item["prompt"][3]) else item for prompt_id, item in body.items()}

    worker.tamper_json = {"/history/{prompt_id}": tamper}
    worker.drop_ws_after_start = True


class RecordingHost(DetachedHost):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def notify(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))

    def failures(self) -> list[dict]:
        return [data for event, data in self.events if event == "multigpu.worker_failed"]


@pytest.fixture
def running(monkeypatch):
    """Make the extension run in this process (``runtime.current``), as the master's nodes find it."""
    made: list[QueueBalancer] = []

    def install(orchestrator) -> RecordingHost:
        host = RecordingHost()
        made.append(QueueBalancer(orchestrator.cluster))
        monkeypatch.setattr(runtime, "current", runtime.Extension(host, orchestrator, made[-1]))
        return host

    yield install


def coordinator_only(prompt: dict) -> dict:
    prompt["3"]["inputs"]["master_role"] = "coordinator only"
    return prompt


async def test_a_coordinator_only_master_refuses_a_bomb_as_its_first_unit(standin_cluster, running):
    cluster = await standin_cluster(workers=2)
    marked, job = cluster.orchestrator.prepare(coordinator_only(workflow(seed=42, batch=2)))
    assert job is not None
    first = job.units[min(job.units)]  # the unit decoded alone, as the reference of the others
    for worker in cluster.workers:  # whichever runs it sends a bomb for it
        sends_bombs(worker, lambda extra_data: extra_data["multigpu"]["share_token"] == first.token)
    host = running(cluster.orchestrator)
    cluster.orchestrator.start(job)
    (images, _, _) = await asyncio.to_thread(MultiGPUCollector().collect, prompt=marked, unique_id="3")
    (bomb,) = host.failures()
    name = job.name_of(first.position)
    assert bomb["unit"] == first.position and bomb["worker"] == name and bomb["job_id"] == job.job_id
    assert bomb["message"].startswith(f"Worker {name}: sent a 7000x7000 image") and not bomb["rerun"]
    assert tuple(images.shape) == (2 * (len(job.units) - 1), 24, 32, 3)  # every other unit, the bomb left out


async def test_a_bomb_posted_with_job_complete_is_refused_too(tmp_path, running):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.gate = asyncio.Event()  # the worker never finishes by itself: its callbacks complete its shares
        path = api_support.write_config(tmp_path / "gpu_config.json", [{"id": 1, "name": "GPU 1", "port": w1.port}])
        master = api_support.Master(path)
        await master.client.start_server()
        try:
            host = running(master.orchestrator)
            marked, job = master.orchestrator.prepare(coordinator_only(api_support.workflow()))
            master.orchestrator.start(job)
            first = min(job.units)  # the unit a coordinator-only master decodes alone, as the reference
            for posted in range(len(job.units)):  # each share in turn, as the worker reaches it
                await until(lambda: len(w1.received) > posted, 10, f"prompt {posted + 1} on the worker")
                token = w1.received[posted]["extra_data"]["multigpu"]["share_token"]
                (position,) = [p for p, unit in job.units.items() if unit.token == token]
                image = png_bomb() if position == first else api_support.png_bytes()
                who = {"X-MultiGPU-Job": job.job_id, "X-MultiGPU-Worker": "1", "X-MultiGPU-Share-Token": token}
                body = {"outputs": {"3": [base64.b64encode(image).decode()]}}
                status, answer = await master.call("POST", "/multigpu/job_complete", body, headers=who)
                assert status == 200, answer
            collect = asyncio.to_thread(MultiGPUCollector().collect, prompt=marked, unique_id="3")
            if len(job.units) == 1:
                with pytest.raises(RuntimeError, match="no unit brought anything back"):
                    await collect
            else:
                (images, _, _) = await collect
                assert tuple(images.shape) == (len(job.units) - 1, 16, 16, 3)  # the others, the bomb left out
            (failed,) = host.failures()
            assert failed["worker"] == "GPU 1" and failed["unit"] == first and failed["reason"] == "size_mismatch"
            assert failed["message"].startswith("Worker GPU 1: sent a 7000x7000 image")
            w1.gate.set()
        finally:
            await master.client.close()
            await master.orchestrator.close()
            await master.orchestrator.cluster.close()


TILE_PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["1", 0], "tile_width": 64, "tile_height": 64,
                                                       "padding": 16, "feather": 16}},
    "3": {"class_type": "DistributedTestTileWork", "inputs": {"image": ["2", 0], "gain": 1.1, "scale": 1,
                                                             "delay": 0.0}},
    "4": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["3", 0]}},
}


def run_tile_nodes(image: torch.Tensor) -> torch.Tensor:
    """The Merge's expansion played as ComfyUI plays it (execution thread): Start, then Steps, the master's tiles
    run through the test node and gathered by unit parts, until a Step gives the image."""
    dyn = FakeDynamicPrompt(TILE_PROMPT)
    dyn.nodes.update(MultiGPUTileMerge().merge(None, "4", dyn)["expand"])
    (run,) = MultiGPUTileStart().start(image, 64, 64, 16, 16, "4", dynprompt=dyn)
    step_id, parts = "4.multigpu.tiles.step", None
    while True:
        step = MultiGPUTileStep().step(run, parts, step_id, dyn)
        if not isinstance(step, dict):
            return step[0]
        dyn.nodes.update(step["expand"])
        for node in step["expand"].values():
            if node["class_type"] == "MultiGPUTileSource":
                position = node["inputs"]["position"]
                (tile,) = MultiGPUTileSource().source(run, position)
                (out,) = DistributedTestTileWork().work(tile, 1.1, 1, 0.0)
                (parts,) = MultiGPUUnitPart().add(position, parts, images=out)
        step_id = step["result"][0][0]


async def test_a_bomb_sent_as_a_tile_is_refused_and_the_master_runs_that_tile(standin_cluster, running):
    image = seeded_images(5, 1, 200, 136)
    alone = await asyncio.to_thread(run_tile_nodes, image)  # no extension running: every tile on the master
    cluster = await standin_cluster(workers=1)
    sends_bombs(cluster.workers[0])
    cluster.orchestrator.loop = asyncio.get_running_loop()
    host = running(cluster.orchestrator)
    merged = await asyncio.to_thread(run_tile_nodes, image)
    bombs = host.failures()
    assert bombs and all("sent a 7000x7000 image" in f["message"] and "the master runs its tile" in f["message"]
                         and f["rerun"] for f in bombs), bombs
    assert torch.equal(merged, alone)  # the refused tiles made here: the same image as the master alone
